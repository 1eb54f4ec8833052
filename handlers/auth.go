package handlers

import (
	"context"
	"net/http"
	"slices"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/saga-family/sagapush/auth"
	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/protocol"
)

// Authenticator turns a request's token into a user (session.Authenticator
// is one).
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (*hub.User, time.Time, *protocol.Error)
}

// Where the auth middleware leaves the request's *hub.User and its token's
// expiry (time.Time, zero: none) in the echo.Context.
const (
	userKey   = "sagapush.user"
	expiryKey = "sagapush.expiry"
)

// requireRole lets a request through only with a valid token, from the
// Authorization header, whose role is one of roles: 401 (503 when the token
// cannot be checked now) or 403 otherwise.
func requireRole(a Authenticator, roles ...string) echo.MiddlewareFunc {
	return authenticated(a, roles)
}

// requireToken lets a request through with any valid token, of any role.
func requireToken(a Authenticator) echo.MiddlewareFunc {
	return authenticated(a, nil)
}

// authenticated checks the token of the Authorization header (the API
// takes no other: a token in a URL is what tickets exist to avoid) and,
// unless roles is nil, its role.
func authenticated(a Authenticator, roles []string) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			u, exp, e := a.Authenticate(c.Request().Context(), auth.TokenFromHeader(c.Request()))
			if e != nil {
				status := http.StatusUnauthorized
				if e.Code == protocol.CodeInternalError {
					status = http.StatusServiceUnavailable
				}
				return &apiError{status: status, err: *e}
			}
			if roles != nil && !slices.Contains(roles, u.Role) {
				return newError(http.StatusForbidden, protocol.CodeForbidden, "this token's role may not do this")
			}
			c.Set(userKey, u)
			c.Set(expiryKey, exp)
			return next(c)
		}
	}
}
