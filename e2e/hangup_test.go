package e2e

// A connection whose client closes it is noticed within 1 s, on either
// transport (docs/protocol.md 4.5: a WebSocket close, or the TCP connection of
// an SSE stream closing; never only at the next heartbeat): it leaves the
// stats and the user's connection limit then. The heartbeat is set far
// beyond the bound, so that only the server's watch on the socket can pass.

import (
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"
)

// noticeWithin is the contract's bound for noticing a closed connection.
// It is the bound under test, not a timing benchmark: the server notices at
// once, and the rest is the stats request's round trip.
const noticeWithin = time.Second

// farHeartbeat keeps the SSE heartbeat (and its write) out of the bound.
const farHeartbeat = "SSE_HEARTBEAT_MS=60000"

// dialSSE opens path over a socket of its own, with token in the
// Authorization header, and returns the answer's status. On 200 it reads
// up to the stream's first joined_project (the stream is set up) and
// returns the socket, for the test to close; otherwise the socket is
// closed.
func dialSSE(t *testing.T, s *testServer, path, token string) (net.Conn, int) {
	t.Helper()
	conn, br, resp, err := s.rawRequest(t, "GET "+path+" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "+token+"\r\nAccept: text/event-stream\r\n\r\n")
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		conn.Close()
		return nil, resp.StatusCode
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("GET %s: %v before joined_project", path, err)
		}
		if line == "event: joined_project\n" {
			break
		}
	}
	conn.SetDeadline(time.Time{})
	return conn, http.StatusOK
}

// expectCountWithin waits up to d for count to reach want.
func expectCountWithin(t *testing.T, d time.Duration, what string, want int, count func() int) {
	t.Helper()
	start := time.Now()
	eventually(t, d, fmt.Sprintf("%s back to %d", what, want), func() bool { return count() == want })
	t.Logf("%s back to %d after %v", what, want, time.Since(start).Round(time.Millisecond))
}

// The stats of each transport are back to 0 within 1 s of the client's
// close: a WebSocket close handshake, a WebSocket's TCP connection closed
// without a close frame, and SSE streams' TCP connections closed (FIN) or
// reset. Each case has a server of its own, so that none counts another's
// leftovers.
func TestStatsZeroWithinOneSecond(t *testing.T) {
	t.Parallel()
	wsCase := func(drop bool) func(t *testing.T) {
		return func(t *testing.T) {
			s := startServer(t, farHeartbeat)
			svc := s.serviceToken(t)
			w, _ := dialRawWS(t, s, s.userToken(t, "u1", "p1"), "")
			eventually(t, waitTimeout, "the WebSocket in the stats", func() bool { return wsConnections(t, s, svc) == 1 })
			if drop {
				w.conn.Close() // no close frame
			} else {
				w.answerClose(1000) // a close frame, then the socket's end
			}
			expectCountWithin(t, noticeWithin, "transports.websocket", 0, func() int { return wsConnections(t, s, svc) })
		}
	}
	sseCase := func(reset bool) func(t *testing.T) {
		return func(t *testing.T) {
			const n = 5
			s := startServer(t, farHeartbeat)
			svc := s.serviceToken(t)
			tok := s.userToken(t, "u1", "p1", "p2")
			var conns []net.Conn
			for i := 0; i < n; i++ {
				c, status := dialSSE(t, s, "/sse?projects=p1,p2", tok)
				if status != http.StatusOK {
					t.Fatalf("stream %d: status %d", i, status)
				}
				conns = append(conns, c)
			}
			if got := sseStats(t, s, svc); got != n {
				t.Fatalf("stats: %d SSE streams, want %d", got, n)
			}
			for _, c := range conns {
				if reset {
					c.(*net.TCPConn).SetLinger(0) // the close sends a RST
				}
				c.Close()
			}
			expectCountWithin(t, noticeWithin, "transports.sse", 0, func() int { return sseStats(t, s, svc) })
		}
	}
	t.Run("ws-close", wsCase(false))
	t.Run("ws-drop", wsCase(true))
	t.Run("sse-close", sseCase(false))
	t.Run("sse-reset", sseCase(true))
}

// A user at MAX_CONNECTIONS_PER_USER who closes an SSE stream's connection
// may open a new stream within 1 s: the closed one no longer counts.
func TestSSEHangupFreesUserLimit(t *testing.T) {
	t.Parallel()
	const limit = 2
	s := startServer(t, farHeartbeat, fmt.Sprintf("MAX_CONNECTIONS_PER_USER=%d", limit))
	tok := s.userToken(t, "u1", "p1")
	var conns []net.Conn
	for i := 0; i < limit; i++ {
		c, status := dialSSE(t, s, "/sse?projects=p1", tok)
		if status != http.StatusOK {
			t.Fatalf("stream %d of %d: status %d", i+1, limit, status)
		}
		conns = append(conns, c)
	}
	if _, status := dialSSE(t, s, "/sse?projects=p1", tok); status != http.StatusTooManyRequests {
		t.Fatalf("a stream over the limit: status %d, want 429", status)
	}
	conns[0].Close()
	closed := time.Now()
	attempts := 0
	for {
		attempts++
		if _, status := dialSSE(t, s, "/sse?projects=p1", tok); status == http.StatusOK {
			break
		} else if status != http.StatusTooManyRequests {
			t.Fatalf("after the close: status %d", status)
		}
		if time.Since(closed) > noticeWithin {
			t.Fatalf("still refused %v after a stream's connection closed (%d attempts): the closed stream still counts against the limit", noticeWithin, attempts)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("a new stream accepted %v after the close (attempt %d)", time.Since(closed).Round(time.Millisecond), attempts)
}
