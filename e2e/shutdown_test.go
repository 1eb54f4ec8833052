package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Section 3: on SIGTERM every client gets server_shutdown with
// reconnectAfterMs, then a close with 1001, and the process exits 0 within
// the grace period.
func TestShutdown(t *testing.T) {
	t.Parallel()
	const grace = 5 * time.Second
	s := startServer(t, "SHUTDOWN_GRACE_MS=5000", "RECONNECT_AFTER_MS=1234")
	joined := dialWS(t, s, s.userToken(t, "u1", "p1"), named("joined"))
	joined.join(t, "p1")
	idle := dialWS(t, s, s.userToken(t, "u2"), named("authenticated, no project"))
	idle.expectNothingQueued(t)
	unauthed := dialWS(t, s, "", withoutToken(), named("no auth frame yet"))
	stalled := dialWS(t, s, s.userToken(t, "u3", "p1"), manualRead(), named("not reading"))
	stalled.join(t, "p1")

	start := time.Now()
	s.signal(t, syscall.SIGTERM)
	for _, c := range []*wsClient{joined, idle, unauthed} {
		m := c.expectNext(t, "server_shutdown")
		d := dataOf(t, m)
		if d["reconnectAfterMs"] != float64(1234) {
			t.Errorf("%s: %v, want reconnectAfterMs 1234", c.name, d)
		}
		if msg, _ := d["message"].(string); msg == "" {
			t.Errorf("%s: %v lacks a message", c.name, d)
		}
		c.expectClose(t, websocket.StatusGoingAway)
	}
	select {
	case <-s.exited:
	case <-time.After(grace + 3*time.Second):
		t.Fatalf("the server did not exit within the grace period (%v)", grace)
	}
	if code := s.state.ExitCode(); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	t.Logf("exited %v after SIGTERM", time.Since(start))
	stalled.expectNext(t, "server_shutdown") // it was written before the close
	stalled.expectClose(t, websocket.StatusGoingAway)
}
