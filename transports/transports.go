// Package transports move bytes between clients and their sessions: the
// WebSocket transport (melody) upgrades, reads frames into the session and
// writes what the hub queues; the Server-Sent Events transport parses its
// query, opens a session and writes. What a client says is handled in
// internal/session, once for both.
package transports

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/saga-family/sagapush/auth"
	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/httpguard"
	"github.com/saga-family/sagapush/internal/protocol"
	"github.com/saga-family/sagapush/internal/session"
)

// handshakeCredential is the one place where both transports find a
// client's credential in its handshake, first found wins: the Authorization
// header, a one-time ticket (?ticket=), a token in the query (?token=, which
// the Authenticator refuses under ALLOW_TOKEN_IN_URL=false). ok is false
// when there is none (a WebSocket then waits for an auth frame). A ticket
// parameter counts even when empty: the client meant a ticket.
func handshakeCredential(r *http.Request) (session.Credential, bool) {
	if t := auth.TokenFromHeader(r); t != "" {
		return session.Credential{Kind: session.BearerHeader, Value: t}, true
	}
	q := r.URL.Query()
	if q.Has("ticket") {
		return session.Credential{Kind: session.TicketQuery, Value: q.Get("ticket")}, true
	}
	if t := strings.TrimSpace(q.Get("token")); t != "" {
		return session.Credential{Kind: session.TokenQuery, Value: t}, true
	}
	return session.Credential{}, false
}

// orDefault sets an unset (zero or negative) option to its default.
func orDefault[T int | int64 | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// writeHTTPError answers {"error":{"code","message"}} (docs/protocol.md,
// errors).
func writeHTTPError(w http.ResponseWriter, status int, e protocol.Error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(protocol.HTTPError{Error: protocol.Error{Code: e.Code, Message: e.Message}})
}

// refuse answers a handshake that opens no connection and counts it.
func refuse(w http.ResponseWriter, transport string, m *hub.Metrics, no *session.Refusal) {
	m.Handshakes.WithLabelValues(transport, no.Outcome).Inc()
	writeHTTPError(w, no.Status, no.Err)
}

// initHandshakes creates the handshake series of a transport's outcomes, so
// that they are exported, and rate() counts from zero, before the first
// attempt.
func initHandshakes(m *hub.Metrics, transport string, outcomes ...string) {
	for _, o := range append(outcomes, "ok", "rate_limited", "unauthorized", "refused") {
		m.Handshakes.WithLabelValues(transport, o)
	}
}

// admit takes one handshake of the request's address, or answers 429.
func admit(w http.ResponseWriter, r *http.Request, transport string, l *httpguard.AddrLimiter, m *hub.Metrics) bool {
	if l.Allow(r) {
		return true
	}
	w.Header().Set("Retry-After", "1")
	refuse(w, transport, m, &session.Refusal{Status: http.StatusTooManyRequests, Outcome: "rate_limited",
		Err: protocol.Error{Code: protocol.CodeRateLimitExceeded, Message: "too many connection attempts from this address"}})
	return false
}
