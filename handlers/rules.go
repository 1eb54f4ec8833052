package handlers

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"mime"
	"net/http"
	"os"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/saga-family/sagapush/auth"
	"github.com/saga-family/sagapush/internal/httpguard"
	"github.com/saga-family/sagapush/internal/protocol"
)

// apiOrigin refuses (403) a request whose Origin WEBSOCKET_CORS_ORIGIN does
// not allow, before anything reads it: a browser sends a cross-origin
// "simple" request (a text/plain POST, say) without asking first, so CORS
// headers alone would not stop it from acting.
func apiOrigin(origins httpguard.Origins) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if !origins.Allowed(c.Request()) {
				return newError(http.StatusForbidden, protocol.CodeForbidden, "origin not allowed")
			}
			return next(c)
		}
	}
}

// apiRequest refuses what the API never takes: a token in the URL (URLs end
// up in logs and histories), and a body that is not application/json (a
// browser may send any other type cross-origin without a preflight).
func apiRequest(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		if r.URL.Query().Has("token") {
			return newError(http.StatusUnauthorized, protocol.CodeUnauthorized,
				"the API takes the token only from the Authorization header (Authorization: Bearer <token>), not from the URL")
		}
		// ContentLength is -1 for a chunked body.
		if r.ContentLength != 0 {
			if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
				return newError(http.StatusUnsupportedMediaType, protocol.CodeUnsupportedMediaType,
					"the body must be application/json")
			}
		}
		return next(c)
	}
}

// metricsGuard lets /metrics through only with "Authorization: Bearer
// <token>" when a METRICS_TOKEN is set (token != "").
func metricsGuard(token string) echo.MiddlewareFunc {
	// Compared as digests, so the time taken says nothing about the
	// token, its length included.
	want := sha256.Sum256([]byte(token))
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		if token == "" {
			return next
		}
		return func(c echo.Context) error {
			got := sha256.Sum256([]byte(auth.TokenFromHeader(c.Request())))
			if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
				c.Response().Header().Set("WWW-Authenticate", `Bearer realm="metrics"`)
				return newError(http.StatusUnauthorized, protocol.CodeUnauthorized,
					"/metrics needs Authorization: Bearer <METRICS_TOKEN>")
			}
			return next(c)
		}
	}
}

// releaseReadDeadline clears the read deadline of a request without a body
// once its handler starts. http.Server.ReadTimeout bounds how long a
// request may take to arrive; once it is all there the deadline has done
// its job, and left in place it would cancel the request's context under a
// handler that takes longer (the SSE joins, a pprof profile). A request
// with a body keeps it until its handler has read the body.
func releaseReadDeadline(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if c.Request().ContentLength == 0 {
			bodyRead(c)
		}
		return next(c)
	}
}

// bodyRead clears the read deadline: the request has arrived whole.
func bodyRead(c echo.Context) {
	// Fails only for writers without deadlines (tests' recorders).
	_ = http.NewResponseController(c.Response()).SetReadDeadline(time.Time{})
}

// bodyError maps an error met while reading a request body: over the size
// limit (a chunked body has no length to refuse up front) is 413, too slow
// to arrive is 408; anything else is a bad body (400).
func bodyError(err error, message string) error {
	var he *echo.HTTPError
	switch {
	case errors.As(err, &he) && he.Code == http.StatusRequestEntityTooLarge:
		return he
	case errors.Is(err, os.ErrDeadlineExceeded):
		return newError(http.StatusRequestTimeout, protocol.CodeInvalidMessage, "the request body did not arrive in time")
	}
	return badRequest(message)
}
