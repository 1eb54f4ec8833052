package client_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/saga-family/sagapush/auth"
	"github.com/saga-family/sagapush/client"
)

// Against the server, the watcher on each transport: it sees a second user
// come online (Join's list, PresenceChanges, Presence), the user's second
// connection changes nothing, and the user goes offline once its last
// connection closed and the grace passed.
func TestPresenceLive(t *testing.T) {
	t.Parallel()
	const grace = 300 * time.Millisecond
	s := startServer(t, fmt.Sprintf("PRESENCE_GRACE_MS=%d", grace.Milliseconds()))
	for _, tr := range []string{client.WebSocket, client.SSE} {
		t.Run(tr, func(t *testing.T) {
			t.Parallel()
			p := "p-" + tr
			watcher, j := joinedClient(t, s, token(t, auth.Claims{UserID: "alice", Name: "Alice", Projects: []string{p}}, time.Hour), tr, p)
			if got := fmt.Sprint(j.Online); got != "[{alice Alice}]" {
				t.Fatalf("Join's list %s, want alice", got)
			}
			expectPresence(t, watcher, p, "[{alice Alice}]") // from the join

			// Bob's connections go by WebSocket: an SSE stream that closes is
			// noticed by the server only at its next heartbeat.
			bobToken := token(t, auth.Claims{UserID: "bob", Projects: []string{p}}, time.Hour) // no name: ""
			var bobs []*client.Client
			for range 2 {
				bob, j := joinedClient(t, s, bobToken, client.WebSocket, p)
				if got := fmt.Sprint(j.Online); got != "[{alice Alice} {bob }]" {
					t.Fatalf("bob's list %s", got)
				}
				if got, ok := bob.Presence(p); !ok || fmt.Sprint(got) != "[{alice Alice} {bob }]" {
					t.Fatalf("bob's Presence %v, %v", got, ok)
				}
				bobs = append(bobs, bob)
			}
			expectPresence(t, watcher, p, "[{alice Alice} {bob }]")

			bobs[0].Close()
			closed := time.Now()
			bobs[1].Close()
			expectPresence(t, watcher, p, "[{alice Alice}]")
			if d := time.Since(closed); d < grace {
				t.Errorf("bob offline %v after his connections closed, before the grace of %v", d, grace)
			}
			select {
			case ch := <-watcher.PresenceChanges():
				t.Errorf("one more change: %+v (bob's second connection must change nothing)", ch)
			case <-time.After(2 * grace):
			}
			if err := watcher.Leave(ctxWait(t), p); err != nil {
				t.Fatal(err)
			}
			if got, ok := watcher.Presence(p); ok {
				t.Errorf("Presence after Leave: %v, want none", got)
			}
		})
	}
}

// joinedClient connects a client over transport and joins p.
func joinedClient(t *testing.T, s *server, tok, transport, p string) (*client.Client, client.JoinResult) {
	t.Helper()
	c, _ := newClient(t, client.Options{URL: s.URL, Token: tok, Transports: []string{transport}}, true)
	ctx := ctxWait(t)
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	j, err := c.Join(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	return c, j
}

// expectPresence reads the next presence change, which must be of project
// p with the list want, and checks that Presence agrees.
func expectPresence(t *testing.T, c *client.Client, p, want string) {
	t.Helper()
	select {
	case ch := <-c.PresenceChanges():
		if ch.ProjectID != p || fmt.Sprint(ch.Online) != want {
			t.Fatalf("presence change %s %v, want %s %s", ch.ProjectID, ch.Online, p, want)
		}
	case <-time.After(wait):
		t.Fatalf("no presence change within %v (want %s %s)", wait, p, want)
	}
	if got, ok := c.Presence(p); !ok || fmt.Sprint(got) != want {
		t.Fatalf("Presence(%s) = %v, %v; want %s", p, got, ok, want)
	}
}
