package handlers

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/protocol"
)

const ticketsPath = "/api/tickets"

// fakeMinter issues "ticket-N" expiring at expiresAt, or fails with err, and
// records who asked.
type fakeMinter struct {
	mu        sync.Mutex
	users     []*hub.User
	tokenExps []time.Time
	expiresAt time.Time
	err       error
}

func (f *fakeMinter) Mint(_ context.Context, u *hub.User, tokenExp time.Time) (string, time.Time, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return "", time.Time{}, f.err
	}
	f.users = append(f.users, u)
	f.tokenExps = append(f.tokenExps, tokenExp)
	return "ticket-secret-" + u.ID, f.expiresAt, nil
}

// expiringAuth is fakeAuth whose tokens expire at exp.
type expiringAuth struct{ exp time.Time }

func (a expiringAuth) Authenticate(ctx context.Context, token string) (*hub.User, time.Time, *protocol.Error) {
	u, _, e := fakeAuth{}.Authenticate(ctx, token)
	if e != nil {
		return nil, time.Time{}, e
	}
	return u, a.exp, nil
}

func TestTicketsAuth(t *testing.T) {
	h := testServer(t, func(c *Config) { c.Tickets = &fakeMinter{} })
	for _, tc := range tokenRefusals {
		t.Run(tc.name, func(t *testing.T) {
			wantError(t, do(t, h, "POST", ticketsPath, tc.token, ""), tc.status, tc.code, tc.message)
		})
	}
	// Never from the URL: a ticket exists to keep tokens out of URLs.
	wantError(t, do(t, h, "POST", ticketsPath+"?token="+userToken, "", ""), http.StatusUnauthorized, "UNAUTHORIZED",
		"the API takes the token only from the Authorization header (Authorization: Bearer <token>), not from the URL")
	// No minter, no route.
	wantError(t, do(t, testServer(t, nil), "POST", ticketsPath, userToken, ""), http.StatusNotFound, "NOT_FOUND", "")
}

// Any valid token, whatever its role, gets a ticket for its own user and
// expiry: 201 {"ticket","expiresAt"}, not cacheable.
func TestTicketsMint(t *testing.T) {
	tokenExp := time.Now().Add(time.Hour).Truncate(time.Second)
	expiresAt := time.Now().Add(30 * time.Second).Truncate(time.Millisecond)
	m := &fakeMinter{expiresAt: expiresAt}
	h := testServer(t, func(c *Config) {
		c.Tickets = m
		c.Auth = expiringAuth{exp: tokenExp}
	})
	for _, tc := range []struct{ token, user string }{{userToken, "u1"}, {adminToken, "ops"}, {serviceToken, "backend"}} {
		rec := do(t, h, "POST", ticketsPath, tc.token, "")
		if rec.Code != http.StatusCreated {
			t.Fatalf("%s: %d %s", tc.token, rec.Code, rec.Body)
		}
		got := decode(t, rec)
		if len(got) != 2 || got["ticket"] != "ticket-secret-"+tc.user || got["expiresAt"] != float64(expiresAt.UnixMilli()) {
			t.Errorf("%s: body %s, want exactly the ticket and expiresAt %d", tc.token, rec.Body, expiresAt.UnixMilli())
		}
		if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
			t.Errorf("%s: Cache-Control %q, want no-store", tc.token, cc)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.users) != 3 || m.users[0].ID != "u1" || m.users[1].Role != "admin" || m.users[2].Role != "service" {
		t.Errorf("minted for %+v", m.users)
	}
	for _, e := range m.tokenExps {
		if !e.Equal(tokenExp) {
			t.Errorf("minted with token expiry %v, want the token's %v", e, tokenExp)
		}
	}
}

// A store that cannot keep the ticket is a 503; the log names the user,
// never the token.
func TestTicketsMintFails(t *testing.T) {
	var logs bytes.Buffer
	h := testServer(t, func(c *Config) {
		c.Tickets = &fakeMinter{err: errors.New("database down")}
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	wantError(t, do(t, h, "POST", ticketsPath, userToken, ""), http.StatusServiceUnavailable, "INTERNAL_ERROR", "the ticket could not be issued now")
	if out := logs.String(); !strings.Contains(out, "user=u1") || strings.Contains(out, userToken) {
		t.Errorf("log %q: want the user and not the token", out)
	}
}
