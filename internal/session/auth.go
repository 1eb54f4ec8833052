package session

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/saga-family/sagapush/auth"
	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/protocol"
)

// Verifier checks a token (auth.Verifier is one).
type Verifier interface {
	Verify(token string) (*auth.Claims, error)
}

// Users tells whether a user may connect, and its name when known (the
// store is one).
type Users interface {
	LookupUser(ctx context.Context, userID string) (name string, ok bool, err error)
}

// Authenticator turns a token, or a one-time ticket, into a hub user.
type Authenticator struct {
	Verifier Verifier
	Users    Users
	// Tickets redeems the tickets of handshakes; nil refuses them all.
	Tickets *Tickets
	// NoTokenInURL refuses a handshake's ?token= (ALLOW_TOKEN_IN_URL=false).
	// The zero value takes it, as the contract's default does.
	NoTokenInURL bool
}

// Credential is what a handshake presents. The transports only find it
// (transports.handshakeCredential); what it may do is decided here.
type Credential struct {
	Kind  CredentialKind
	Value string
}

// CredentialKind says where a handshake's credential came from.
type CredentialKind uint8

const (
	BearerHeader CredentialKind = iota // Authorization: Bearer <token>
	TicketQuery                        // ?ticket=<one-time ticket>
	TokenQuery                         // ?token=<token>
)

// AuthenticateCredential is Authenticate for a handshake's credential: a
// ticket is spent, a token in the URL is refused when NoTokenInURL.
func (a *Authenticator) AuthenticateCredential(ctx context.Context, c Credential) (*hub.User, time.Time, *protocol.Error) {
	switch c.Kind {
	case TicketQuery:
		return a.redeem(ctx, c.Value)
	case TokenQuery:
		if a.NoTokenInURL {
			return nil, time.Time{}, &protocol.Error{Code: protocol.CodeUnauthorized,
				Message: "tokens are not taken in the URL here: use a ticket (POST /api/tickets) or the Authorization header"}
		}
	}
	return a.Authenticate(ctx, c.Value)
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
	u := &hub.User{ID: cl.UserID, Name: cl.Name, Role: cl.Role, Projects: cl.Projects}
	if e := a.checkUser(ctx, u); e != nil {
		return nil, time.Time{}, e
	}
	return u, cl.ExpiresAt, nil
}

// redeem spends a ticket: the connection gets the user and expiry of the
// token the ticket was minted for.
func (a *Authenticator) redeem(ctx context.Context, ticket string) (*hub.User, time.Time, *protocol.Error) {
	if a.Tickets == nil {
		return nil, time.Time{}, &protocol.Error{Code: protocol.CodeUnauthorized, Message: ErrBadTicket.Error()}
	}
	u, exp, err := a.Tickets.Redeem(ctx, ticket)
	if errors.Is(err, ErrBadTicket) {
		return nil, time.Time{}, &protocol.Error{Code: protocol.CodeUnauthorized, Message: err.Error()}
	}
	if err != nil {
		return nil, time.Time{}, &protocol.Error{Code: protocol.CodeInternalError, Message: "cannot check the ticket now"}
	}
	// The user may have been deleted since the ticket was minted.
	if e := a.checkUser(ctx, u); e != nil {
		return nil, time.Time{}, e
	}
	return u, exp, nil
}

// checkUser refuses a user token whose user has no row (the users of the
// database; embedded mode knows every user), and names a user whose token
// has no name after its row (typing and presence show it). A service token
// needs no row: the backend is not a user.
func (a *Authenticator) checkUser(ctx context.Context, u *hub.User) *protocol.Error {
	if u.Role == auth.RoleService {
		return nil
	}
	name, ok, err := a.Users.LookupUser(ctx, u.ID)
	if err != nil {
		return &protocol.Error{Code: protocol.CodeInternalError, Message: "cannot check the user now"}
	}
	if !ok {
		return &protocol.Error{Code: protocol.CodeUnauthorized, Message: "unknown user"}
	}
	if u.Name == "" {
		u.Name = name
	}
	return nil
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
