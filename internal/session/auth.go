package session

import (
	"context"
	"errors"
	"net/http"
	"time"

	"sagapush/auth"
	"sagapush/hub"
	"sagapush/internal/protocol"
)

// Verifier checks a token (auth.Verifier is one).
type Verifier interface {
	Verify(token string) (*auth.Claims, error)
}

// Users tells whether a user may connect (the store is one).
type Users interface {
	UserExists(ctx context.Context, userID string) (bool, error)
}

// Authenticator turns a token into a hub user.
type Authenticator struct {
	Verifier Verifier
	Users    Users
}

// Authenticate verifies the token and, for a user token, that the user
// exists. It returns the user, the token's expiry (zero: none) and, on
// refusal, the protocol error to answer with.
func (a *Authenticator) Authenticate(ctx context.Context, token string) (*hub.User, time.Time, *protocol.Error) {
	if token == "" {
		return nil, time.Time{}, &protocol.Error{Code: protocol.CodeUnauthorized, Message: "missing token"}
	}
	cl, err := a.Verifier.Verify(token)
	if errors.Is(err, auth.ErrExpired) {
		return nil, time.Time{}, &protocol.Error{Code: protocol.CodeTokenExpired, Message: "token expired"}
	}
	if err != nil {
		return nil, time.Time{}, &protocol.Error{Code: protocol.CodeUnauthorized, Message: err.Error()}
	}
	if cl.Role != "service" { // the backend is not a user and has no row
		ok, err := a.Users.UserExists(ctx, cl.UserID)
		if err != nil {
			return nil, time.Time{}, &protocol.Error{Code: protocol.CodeInternalError, Message: "cannot check the user now"}
		}
		if !ok {
			return nil, time.Time{}, &protocol.Error{Code: protocol.CodeUnauthorized, Message: "unknown user"}
		}
	}
	return &hub.User{ID: cl.UserID, Name: cl.Name, Role: cl.Role, Projects: cl.Projects}, cl.ExpiresAt, nil
}

// Refusal is why a connection was not opened, as HTTP answers it.
type Refusal struct {
	Status  int
	Err     protocol.Error
	Outcome string // the handshake metric's label
}

// authRefusal maps a refused token to its HTTP answer.
func authRefusal(e *protocol.Error) *Refusal {
	status := http.StatusUnauthorized
	if e.Code == protocol.CodeInternalError {
		status = http.StatusServiceUnavailable
	}
	return &Refusal{Status: status, Err: *e, Outcome: "unauthorized"}
}

// connectRefusal maps a refused hub.Connect to its HTTP answer.
func connectRefusal(err error) *Refusal {
	status := http.StatusTooManyRequests
	if errors.Is(err, hub.ErrClosed) {
		status = http.StatusServiceUnavailable
	}
	return &Refusal{Status: status, Err: protocol.Error{Code: protocol.CodeRateLimitExceeded, Message: err.Error()}, Outcome: "refused"}
}
