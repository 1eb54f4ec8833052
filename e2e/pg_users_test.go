package e2e

// Postgres tests of deleted users (docs/protocol.md section 3).

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// untilClosed reads c until the connection ends (at most waitTimeout) and
// returns what came meanwhile, and an error unless it ended with code.
func untilClosed(c *wsClient, code websocket.StatusCode) (got []string, err error) {
	for {
		m, ok, closed := c.next(waitTimeout)
		switch {
		case ok:
			got = append(got, string(m.data))
		case !closed:
			return got, fmt.Errorf("still open after %v", waitTimeout)
		case websocket.CloseStatus(c.err) != code:
			return got, fmt.Errorf("ended with %v (close status %d), want %d", c.err, websocket.CloseStatus(c.err), code)
		default:
			return got, nil
		}
	}
}

// A user whose users row is deleted is closed with 4401 (SSE: the stream
// ends) within 5 s and gets nothing sent after the deletion; other users
// and the backend's service connections stay. A deletion no instance heard
// (its listener was down) is caught when the listener is back.
func TestPGUserDeleted(t *testing.T) {
	t.Parallel()
	e := newPGEnv(t)
	e.exec(t, `INSERT INTO users (id, name) VALUES ('u1', 'One'), ('u2', 'Two'), ('u3', 'Three')`)
	e.exec(t, `INSERT INTO projects (id, name, facilitator_id, storyteller_id) VALUES ('p1', 'One', 'u1', 'u2')`)
	e.exec(t, `INSERT INTO project_roles (project_id, user_id, role) VALUES ('p1', 'u3', 'storyteller')`)
	s := e.start(t)
	svcToken := s.serviceToken(t)
	u1 := dialWS(t, s, s.userToken(t, "u1"), named("u1"))
	u1.join(t, "p1")
	u1sse := openSSE(t, s, "/sse?projects=p1", s.userToken(t, "u1"), nil)
	u1sse.read(t) // retry
	u1sse.expectJoined(t, "p1")
	u2 := dialWS(t, s, s.userToken(t, "u2"), named("u2"))
	u2.join(t, "p1")
	svc := dialWS(t, s, svcToken, named("service")) // "backend": no users row
	e.waitListening(t, 1)

	deleted := time.Now()
	e.exec(t, `DELETE FROM users WHERE id = 'u1'`)
	// Sent after the deletion: none of it may reach u1.
	if status, body := s.doJSON(t, "POST", "/api/events", svcToken, map[string]any{"userId": "u1", "event": "notification", "data": map[string]any{}}); status != http.StatusAccepted {
		t.Fatalf("user event: %d %v", status, body)
	}
	e.insertStory(t, "s1", "p1")

	var wg sync.WaitGroup
	var wsErr error
	var wsAfter time.Duration
	var wsGot []string
	wg.Add(1)
	go func() { // u1's WebSocket and SSE stream end together
		defer wg.Done()
		wsGot, wsErr = untilClosed(u1, 4401)
		wsAfter = time.Since(deleted)
	}()
	sseGot := u1sse.expectEnd(t)
	sseAfter := time.Since(deleted)
	wg.Wait()
	if wsErr != nil {
		t.Fatalf("u1's WebSocket: %v", wsErr)
	}
	if wsAfter > 5*time.Second || sseAfter > 5*time.Second {
		t.Errorf("closed %v (WebSocket) and %v (SSE) after the deletion, want within 5 s", wsAfter, sseAfter)
	}
	if len(wsGot) > 0 {
		t.Errorf("u1's WebSocket got %v after its deletion", wsGot)
	}
	for _, m := range sseGot {
		if m.Event != "" || m.Data != "" {
			t.Errorf("u1's SSE stream got %v after its deletion", m)
		}
	}
	pgExpectStory(t, u2, "p1", 1, "s1")
	svc.expectNothingQueued(t)
	// The deleted user cannot come back.
	if _, resp, err := tryDialWS(t, s, s.userToken(t, "u1")); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("u1 reconnecting: %v, want 401", err)
	}

	// Deleted while the listener is down, from a connection of the test's
	// own: nobody hears it; the check after the reconnect finds it.
	u3 := dialWS(t, s, s.userToken(t, "u3"), named("u3"))
	u3.join(t, "p1")
	pinned := e.pin(t)
	e.pin(t).Close() // back to the pool: terminate's own, once new connections are refused
	e.setConnectable(t, false)
	t.Cleanup(func() { e.setConnectable(t, true) })
	if _, listeners := e.terminate(t); listeners != 1 {
		t.Fatalf("killed %d listeners, want 1", listeners)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := pinned.ExecContext(ctx, `DELETE FROM users WHERE id = 'u3'`); err != nil {
		t.Fatal(err)
	}
	e.setConnectable(t, true)
	u3.expectClose(t, 4401)
	u2.expectNothingQueued(t)
	svc.expectNothingQueued(t)
}
