// Package transports turn WebSockets (melody) and Server-Sent Events streams
// into hub connections: they authenticate, decode client frames, and write
// what the hub queues. They know nothing of SQL.
package transports

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"sagapush/auth"
	"sagapush/hub"
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
func (a *Authenticator) Authenticate(ctx context.Context, token string) (*hub.User, time.Time, *hub.ErrorData) {
	if token == "" {
		return nil, time.Time{}, &hub.ErrorData{Code: "UNAUTHORIZED", Message: "missing token"}
	}
	cl, err := a.Verifier.Verify(token)
	if errors.Is(err, auth.ErrExpired) {
		return nil, time.Time{}, &hub.ErrorData{Code: "TOKEN_EXPIRED", Message: "token expired"}
	}
	if err != nil {
		return nil, time.Time{}, &hub.ErrorData{Code: "UNAUTHORIZED", Message: err.Error()}
	}
	if cl.Role != "service" { // the backend is not a user and has no row
		ok, err := a.Users.UserExists(ctx, cl.UserID)
		if err != nil {
			return nil, time.Time{}, &hub.ErrorData{Code: "INTERNAL_ERROR", Message: "cannot check the user now"}
		}
		if !ok {
			return nil, time.Time{}, &hub.ErrorData{Code: "UNAUTHORIZED", Message: "unknown user"}
		}
	}
	return &hub.User{ID: cl.UserID, Name: cl.Name, Role: cl.Role, Projects: cl.Projects}, cl.ExpiresAt, nil
}

// HTTPStatus maps a refusal to its HTTP status.
func HTTPStatus(e *hub.ErrorData) int {
	if e.Code == "INTERNAL_ERROR" {
		return http.StatusServiceUnavailable
	}
	return http.StatusUnauthorized
}

// WriteHTTPError answers {"error":{"code","message"}} (PROTOCOL section 6).
func WriteHTTPError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": message}})
}

// Origins is the WEBSOCKET_CORS_ORIGIN policy: a request without Origin is
// allowed; with one, it must be listed, or, when the list is empty, be the
// request's own host (same origin).
type Origins []string

// Allowed reports whether the request's Origin passes.
func (o Origins) Allowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if len(o) == 0 {
		u, err := url.Parse(origin)
		return err == nil && strings.EqualFold(u.Host, r.Host)
	}
	for _, a := range o {
		if a == "*" || strings.EqualFold(strings.TrimRight(a, "/"), origin) {
			return true
		}
	}
	return false
}

// AddrLimiter caps new connections per client address per second, before
// any upgrade or stream starts.
type AddrLimiter struct {
	rate  rate.Limit
	burst int

	mu    sync.Mutex
	addrs map[string]*rate.Limiter
	swept time.Time
}

// NewAddrLimiter allows perSecond new connections per address, with bursts
// of burst. perSecond <= 0 disables the limit.
func NewAddrLimiter(perSecond float64, burst int) *AddrLimiter {
	return &AddrLimiter{rate: rate.Limit(perSecond), burst: burst, addrs: make(map[string]*rate.Limiter)}
}

// Allow takes one handshake of the request's address.
func (l *AddrLimiter) Allow(r *http.Request) bool {
	if l == nil || l.rate <= 0 {
		return true
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > time.Minute {
		// Forget addresses whose bucket refilled: they cost memory and
		// would allow nothing more than a fresh bucket does.
		for a, lim := range l.addrs {
			if lim.TokensAt(now) >= float64(l.burst) {
				delete(l.addrs, a)
			}
		}
		l.swept = now
	}
	lim := l.addrs[host]
	if lim == nil {
		lim = rate.NewLimiter(l.rate, l.burst)
		l.addrs[host] = lim
	}
	return lim.AllowN(now, 1)
}
