package session

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/protocol"
	"github.com/saga-family/sagapush/store"
)

// A minted ticket opens one connection with the token's user, role,
// projects and expiry; a second use, a malformed ticket and an expired one
// are refused alike.
func TestTicketsMintRedeem(t *testing.T) {
	ctx := context.Background()
	tk := &Tickets{Store: store.NewMemory(10), TTL: time.Minute}
	tokenExp := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	u := &hub.User{ID: "alice", Name: "Alice", Role: "admin", Projects: []string{"p1", "p2"}}
	ticket, expiresAt, err := tk.Mint(ctx, u, tokenExp)
	if err != nil {
		t.Fatal(err)
	}
	if len(ticket) != 43 || strings.ContainsAny(ticket, "+/=") {
		t.Errorf("ticket %q: want 43 characters of unpadded base64url", ticket)
	}
	if d := time.Until(expiresAt); d <= 50*time.Second || d > time.Minute {
		t.Errorf("expires in %v, want the TTL (1m)", d)
	}
	got, exp, err := tk.Redeem(ctx, ticket)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != u.ID || got.Name != u.Name || got.Role != u.Role || strings.Join(got.Projects, ",") != "p1,p2" || !exp.Equal(tokenExp) {
		t.Errorf("redeemed %+v expiring %v, want %+v expiring %v", got, exp, u, tokenExp)
	}
	if _, _, err := tk.Redeem(ctx, ticket); !errors.Is(err, ErrBadTicket) {
		t.Errorf("second use: %v, want ErrBadTicket", err)
	}
	for _, bad := range []string{"", "short", strings.Repeat("A", 43), ticket[:42] + "!", ticket + "A"} {
		if _, _, err := tk.Redeem(ctx, bad); !errors.Is(err, ErrBadTicket) {
			t.Errorf("ticket %q: %v, want ErrBadTicket", bad, err)
		}
	}

	// A token without exp gives a connection without expiry.
	ticket, _, err = tk.Mint(ctx, &hub.User{ID: "bob"}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if got, exp, err := tk.Redeem(ctx, ticket); err != nil || got.ID != "bob" || !exp.IsZero() {
		t.Errorf("redeemed %+v expiring %v (%v), want bob without expiry", got, exp, err)
	}
}

// A ticket never outlives its token.
func TestTicketBoundByToken(t *testing.T) {
	ctx := context.Background()
	tk := &Tickets{Store: store.NewMemory(10), TTL: time.Hour}
	// A token inside the leeway: exp has passed, the token still verifies.
	past := time.Now().Add(-time.Millisecond)
	ticket, expiresAt, err := tk.Mint(ctx, &hub.User{ID: "alice"}, past)
	if err != nil {
		t.Fatal(err)
	}
	if !expiresAt.Equal(past) {
		t.Errorf("expires at %v, want the token's exp %v", expiresAt, past)
	}
	if _, _, err := tk.Redeem(ctx, ticket); !errors.Is(err, ErrBadTicket) {
		t.Errorf("after the token's exp: %v, want ErrBadTicket", err)
	}
}

// The Authenticator's credentials: a ticket is spent once, ?token= is
// refused under NoTokenInURL while the header token still works, a ticket
// of a deleted user is refused, and a store that cannot answer is a 503.
func TestAuthenticateCredential(t *testing.T) {
	ctx := context.Background()
	users := &someUsers{ok: map[string]bool{"alice": true}}
	tk := &Tickets{Store: store.NewMemory(10)}
	a := &Authenticator{Verifier: tokens{"alice": {UserID: "alice"}}, Users: users, Tickets: tk, NoTokenInURL: true}
	ticket, _, err := tk.Mint(ctx, &hub.User{ID: "alice"}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if u, _, e := a.AuthenticateCredential(ctx, Credential{Kind: TicketQuery, Value: ticket}); e != nil || u.ID != "alice" {
		t.Fatalf("ticket: %+v %+v", u, e)
	}
	if _, _, e := a.AuthenticateCredential(ctx, Credential{Kind: TicketQuery, Value: ticket}); e == nil || e.Code != protocol.CodeUnauthorized {
		t.Errorf("ticket again: %+v, want UNAUTHORIZED", e)
	}
	if _, _, e := a.AuthenticateCredential(ctx, Credential{Kind: TokenQuery, Value: "alice"}); e == nil || e.Code != protocol.CodeUnauthorized {
		t.Errorf("?token= under NoTokenInURL: %+v, want UNAUTHORIZED", e)
	}
	if u, _, e := a.AuthenticateCredential(ctx, Credential{Kind: BearerHeader, Value: "alice"}); e != nil || u.ID != "alice" {
		t.Errorf("header token under NoTokenInURL: %+v %+v", u, e)
	}
	a.NoTokenInURL = false
	if u, _, e := a.AuthenticateCredential(ctx, Credential{Kind: TokenQuery, Value: "alice"}); e != nil || u.ID != "alice" {
		t.Errorf("?token= allowed: %+v %+v", u, e)
	}

	ticket, _, _ = tk.Mint(ctx, &hub.User{ID: "alice"}, time.Time{})
	users.ok["alice"] = false // deleted since
	if _, _, e := a.AuthenticateCredential(ctx, Credential{Kind: TicketQuery, Value: ticket}); e == nil || e.Message != "unknown user" {
		t.Errorf("ticket of a deleted user: %+v, want unknown user", e)
	}

	a.Tickets = &Tickets{Store: brokenTickets{}}
	ticket, _, _ = tk.Mint(ctx, &hub.User{ID: "alice"}, time.Time{})
	no := authRefusal(mustRefuse(t, a, Credential{Kind: TicketQuery, Value: ticket}))
	if no.Status != 503 || no.Err.Code != protocol.CodeInternalError {
		t.Errorf("store down: %+v, want 503 INTERNAL_ERROR", no)
	}
	a.Tickets = nil
	if e := mustRefuse(t, a, Credential{Kind: TicketQuery, Value: ticket}); e.Code != protocol.CodeUnauthorized {
		t.Errorf("no tickets configured: %+v, want UNAUTHORIZED", e)
	}
}

func mustRefuse(t *testing.T, a *Authenticator, c Credential) *protocol.Error {
	t.Helper()
	u, _, e := a.AuthenticateCredential(context.Background(), c)
	if e == nil {
		t.Fatalf("credential accepted as %+v, want a refusal", u)
	}
	return e
}

type someUsers struct{ ok map[string]bool }

func (u *someUsers) LookupUser(_ context.Context, id string) (string, bool, error) {
	return "", u.ok[id], nil
}

type brokenTickets struct{}

func (brokenTickets) PutTicket(context.Context, []byte, []byte, time.Duration, time.Time) (time.Time, error) {
	return time.Time{}, errors.New("down")
}
func (brokenTickets) TakeTicket(context.Context, []byte) ([]byte, bool, error) {
	return nil, false, errors.New("down")
}

// FuzzTicketHash: whatever a client puts in ?ticket=, TicketHash never
// panics, and accepts exactly the canonical spelling of 32 bytes, hashed
// with SHA-256; Redeem refuses every string that was not minted without a
// store error.
func FuzzTicketHash(f *testing.F) {
	tk := &Tickets{Store: store.NewMemory(10)}
	minted, _, err := tk.Mint(context.Background(), &hub.User{ID: "u"}, time.Time{})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"", minted, minted[:42], minted + "=", strings.Repeat("_", 43), strings.Repeat("A", 42) + "B",
		strings.Repeat("A", 42) + "\n", strings.Repeat("/", 43), "..........................................."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		hash, ok := TicketHash(s)
		raw, err := base64.RawURLEncoding.DecodeString(s)
		canonical := err == nil && len(raw) == 32 && base64.RawURLEncoding.EncodeToString(raw) == s
		if ok != canonical {
			t.Fatalf("TicketHash(%q) ok=%v, want %v", s, ok, canonical)
		}
		if ok {
			want := sha256.Sum256([]byte(s))
			if !bytes.Equal(hash, want[:]) {
				t.Fatalf("TicketHash(%q) is not its SHA-256", s)
			}
		} else if hash != nil {
			t.Fatalf("TicketHash(%q) refused it but returned a hash", s)
		}
		if s == minted {
			return // spent once by the fuzzer, then refused: both are right
		}
		if _, _, err := tk.Redeem(context.Background(), s); !errors.Is(err, ErrBadTicket) {
			t.Fatalf("Redeem(%q) = %v, want ErrBadTicket", s, err)
		}
	})
}
