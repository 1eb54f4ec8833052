package session

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/saga-family/sagapush/hub"
)

// One-time connect tickets (docs/protocol.md, Tokens): POST /api/tickets
// trades a token from the Authorization header for a ticket that opens one
// /ws or /sse connection, so that no token has to go into a URL (EventSource
// cannot send headers), where proxies, logs and browser history keep it.

// TicketStore keeps tickets under the SHA-256 of the ticket; the ticket
// itself is never stored, so the table (or a dump, or a log of its rows)
// opens nothing. store.Postgres, which every instance shares, and
// store.Memory are ones.
type TicketStore interface {
	// PutTicket keeps claims under hash until ttl from now, or until
	// notAfter when that comes first (zero: no such bound), by the
	// store's clock, and returns that expiry.
	PutTicket(ctx context.Context, hash, claims []byte, ttl time.Duration, notAfter time.Time) (time.Time, error)
	// TakeTicket deletes the unexpired ticket stored under hash and returns
	// its claims, in one step: of two concurrent takers only one gets them.
	// ok is false when there is no such ticket.
	TakeTicket(ctx context.Context, hash []byte) (claims []byte, ok bool, err error)
}

const (
	// ticketBytes is a ticket's randomness: 256 bits, beyond guessing.
	ticketBytes = 32
	// DefaultTicketTTL is TICKET_TTL_MS's default.
	DefaultTicketTTL = 30 * time.Second
)

// ticketLen is a ticket's length: unpadded base64url, so it needs no
// escaping in a query.
var ticketLen = base64.RawURLEncoding.EncodedLen(ticketBytes)

// ErrBadTicket refuses a malformed, unknown, used or expired ticket, all
// alike: a client learns nothing about tickets that are not its own.
var ErrBadTicket = errors.New("invalid, used or expired ticket")

// TicketHash checks that s has a ticket's form and returns the key it is
// stored under (its SHA-256); ok is false for anything else, which then
// costs no store round trip. Only the canonical encoding passes, so one
// ticket has exactly one spelling.
func TicketHash(s string) (hash []byte, ok bool) {
	if len(s) != ticketLen {
		return nil, false
	}
	var raw [ticketBytes]byte
	// Decode skips \r and \n, which the length check alone would let in:
	// the decoded length catches them.
	n, err := base64.RawURLEncoding.Strict().Decode(raw[:], []byte(s))
	if err != nil || n != ticketBytes {
		return nil, false
	}
	h := sha256.Sum256([]byte(s))
	return h[:], true
}

// ticketClaims is what a ticket carries from its token to the connection.
type ticketClaims struct {
	UserID   string   `json:"userId"`
	Name     string   `json:"name,omitempty"`
	Role     string   `json:"role,omitempty"`
	Projects []string `json:"projects,omitempty"`
	// ExpiresAt is the token's expiry in epoch ms (0: none): the
	// connection's, as if it had come with the token.
	ExpiresAt int64 `json:"expiresAt,omitempty"`
}

// Tickets mints and redeems one-time connect tickets. It keeps the token's
// claims with the ticket rather than the token, so a redeemed ticket needs
// no key lookup (JWKS) and there is no token to leak from the store.
type Tickets struct {
	Store TicketStore
	TTL   time.Duration // TICKET_TTL_MS; DefaultTicketTTL when zero
}

// Mint issues a ticket for u, whose token expires at tokenExp (zero:
// never). The ticket lives TTL, but never beyond the token: a connection it
// opens must not start already expired.
func (t *Tickets) Mint(ctx context.Context, u *hub.User, tokenExp time.Time) (ticket string, expiresAt time.Time, err error) {
	var raw [ticketBytes]byte
	rand.Read(raw[:]) // crypto/rand: never fails
	ticket = base64.RawURLEncoding.EncodeToString(raw[:])
	hash, _ := TicketHash(ticket)
	c := ticketClaims{UserID: u.ID, Name: u.Name, Role: u.Role, Projects: u.Projects}
	if !tokenExp.IsZero() {
		c.ExpiresAt = tokenExp.UnixMilli()
	}
	claims, err := json.Marshal(c)
	if err != nil {
		return "", time.Time{}, err
	}
	ttl := t.TTL
	if ttl <= 0 {
		ttl = DefaultTicketTTL
	}
	expiresAt, err = t.Store.PutTicket(ctx, hash, claims, ttl, tokenExp)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("storing a ticket: %w", err)
	}
	return ticket, expiresAt, nil
}

// Redeem spends a ticket and returns the user and expiry of the token it
// was minted for. Any ticket that cannot open a connection is ErrBadTicket;
// other errors mean the store could not tell.
func (t *Tickets) Redeem(ctx context.Context, ticket string) (*hub.User, time.Time, error) {
	hash, ok := TicketHash(ticket)
	if !ok {
		return nil, time.Time{}, ErrBadTicket
	}
	b, ok, err := t.Store.TakeTicket(ctx, hash)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("taking a ticket: %w", err)
	}
	if !ok {
		return nil, time.Time{}, ErrBadTicket
	}
	var c ticketClaims
	if err := json.Unmarshal(b, &c); err != nil || c.UserID == "" {
		return nil, time.Time{}, fmt.Errorf("a stored ticket's claims are unreadable: %v", err)
	}
	var exp time.Time
	if c.ExpiresAt != 0 {
		exp = time.UnixMilli(c.ExpiresAt)
	}
	return &hub.User{ID: c.UserID, Name: c.Name, Role: c.Role, Projects: c.Projects}, exp, nil
}
