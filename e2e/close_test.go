package e2e

// Section 3 (docs/protocol.md 4.6): every close the server starts completes
// the close handshake. A server that closes its socket while client data it
// has not read waits in the socket (or arrives after the close) makes the
// kernel send a reset, and the client may lose the close frame it had not
// read yet: it sees ECONNRESET or 1006 instead of the code (issue 12).

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/saga-family/sagapush/internal/wsraw"
)

// closeRuns is how many connections each case closes: the reset is a race,
// one run proves little.
const closeRuns = 20

// frames returns n masked text frames of payload, back to back.
func frames(n int, payload string) []byte {
	var b []byte
	for i := 0; i < n; i++ {
		b = wsraw.AppendMasked(b, wsraw.OpText, []byte(payload))
	}
	return b
}

const pingFrame = `{"event":"ping"}`

// lateRead is how long after its burst a client starts reading, as one busy
// elsewhere does: by then the server has closed, and a reset would have
// destroyed what the client had not read yet.
const lateRead = 100 * time.Millisecond

// readClose reads server frames until the close frame and returns its code;
// err is what ended the reading instead (a reset shows here), or what came
// after the close frame when it was not the end of the stream: the server
// writes nothing after its close frame, and shuts its side.
func (w *rawWS) readClose() (int, error) {
	for {
		h, payload, err := wsraw.ReadFrame(w.br)
		if err != nil {
			return 0, err
		}
		if h.Op() != wsraw.OpClose {
			continue
		}
		code := wsraw.CloseCode(payload)
		switch h, _, err := wsraw.ReadFrame(w.br); {
		case err == nil:
			return code, fmt.Errorf("a frame (opcode %d) after the close frame", h.Op())
		case err != io.EOF:
			return code, fmt.Errorf("after the close frame: %w", err)
		}
		return code, nil
	}
}

// answerClose ends the handshake as a client does: its own close frame, then
// its socket's end.
func (w *rawWS) answerClose(code int) {
	w.conn.Write(wsraw.AppendMasked(nil, wsraw.OpClose, binary.BigEndian.AppendUint16(nil, uint16(code))))
	w.conn.Close()
}

// expectCloses runs closeRuns connections through run, each of which must
// read the close frame with code want, and reports how many did not.
func expectCloses(t *testing.T, want int, run func(i int) (int, error)) {
	t.Helper()
	var failed []string
	for i := 0; i < closeRuns; i++ {
		code, err := run(i)
		if err != nil || code != want {
			failed = append(failed, fmt.Sprintf("run %d: code %d, %v", i, code, err))
		}
	}
	if len(failed) > 0 {
		t.Errorf("%d of %d connections did not read close %d:\n%s", len(failed), closeRuns, want, strings.Join(failed, "\n"))
	}
}

// wsConnections returns the stats' count of authenticated WebSocket connections.
func wsConnections(t testing.TB, s *testServer, svc string) int {
	t.Helper()
	_, body := s.getJSON(t, "/api/websocket/stats", svc)
	tr, _ := dataOf(t, body)["transports"].(map[string]any)
	n, ok := tr["websocket"].(float64)
	if !ok {
		t.Fatalf("stats %v lack transports.websocket", body)
	}
	return int(n)
}

// goroutineBaseline warms s up with one WebSocket connection closed by the
// client (the first one starts goroutines that stay) and returns
// go_goroutines after it.
func goroutineBaseline(t *testing.T, s *testServer, svc string) float64 {
	t.Helper()
	w, _ := dialRawWS(t, s, s.userToken(t, "warm-up"), "")
	w.send(t, pingFrame)
	w.next(t)
	w.answerClose(1000)
	eventually(t, waitTimeout, "the warm-up connection to close", func() bool { return wsConnections(t, s, svc) == 0 })
	return settledGoroutines(t, s)
}

// settledGoroutines is go_goroutines once it stops falling: goroutines of
// connections just closed may still be ending.
func settledGoroutines(t *testing.T, s *testServer) float64 {
	t.Helper()
	base := goroutines(t, s)
	for deadline := time.Now().Add(waitTimeout); time.Now().Before(deadline); {
		next := goroutines(t, s)
		if next >= base {
			break
		}
		base = next
	}
	if base <= 0 {
		t.Fatal("no go_goroutines in /metrics")
	}
	return base
}

// goroutines is the server's go_goroutines with no HTTP connection of ours
// open but the one asking: the client's idle keep-alive connections each
// hold a server goroutine, and how many there are depends on how the client
// happened to dial.
func goroutines(t *testing.T, s *testServer) float64 {
	t.Helper()
	http.DefaultClient.CloseIdleConnections()
	return s.metricWith(t, noKeepAlive, "go_goroutines")
}

// expectGoroutines waits until go_goroutines is back to base: every closed
// connection's goroutines ended, its socket with them.
func expectGoroutines(t *testing.T, s *testServer, base float64) {
	t.Helper()
	eventually(t, waitTimeout, fmt.Sprintf("go_goroutines back to its baseline %v", base), func() bool {
		return goroutines(t, s) <= base
	})
}

// A burst of frames the server has not read when it decides to close: the
// client reads the close code all the same.
func TestWSCloseAfterBurst(t *testing.T) {
	t.Parallel()

	// 4429: 400 pings in one write with 20 allowed; the 100th refusal in a
	// row closes while some 280 are still unread.
	t.Run("4429", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "RATE_LIMIT_WINDOW_MS=3600000", "RATE_LIMIT_MAX_EVENTS=20")
		svc := s.serviceToken(t)
		base := goroutineBaseline(t, s, svc)
		burst := frames(400, pingFrame)
		expectCloses(t, 4429, func(i int) (int, error) {
			w, _ := dialRawWS(t, s, s.userToken(t, fmt.Sprintf("u%d", i)), "")
			defer w.answerClose(4429)
			if _, err := w.conn.Write(burst); err != nil {
				return 0, err
			}
			time.Sleep(lateRead)
			return w.readClose()
		})
		eventually(t, waitTimeout, "no connection left", func() bool { return wsConnections(t, s, svc) == 0 })
		expectGoroutines(t, s, base)
	})

	// 4408: frames keep coming, never an auth frame, when the deadline
	// passes.
	t.Run("4408", func(t *testing.T) {
		t.Parallel()
		const authTimeout = 200 * time.Millisecond
		s := startServer(t, fmt.Sprintf("AUTH_TIMEOUT_MS=%d", authTimeout.Milliseconds()))
		base := goroutineBaseline(t, s, s.serviceToken(t))
		chunk := frames(100, pingFrame)
		expectCloses(t, 4408, func(int) (int, error) {
			w, _ := dialRawWS(t, s, "", "")
			defer w.answerClose(4408)
			// 100 pings every 2 ms, nothing read meanwhile, until past the
			// deadline: the server is behind when it closes. The write's
			// own error does not matter.
			for end := time.Now().Add(authTimeout + lateRead); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
				if _, err := w.conn.Write(chunk); err != nil {
					break
				}
			}
			return w.readClose()
		})
		expectGoroutines(t, s, base)
	})

	// 1009: frames over 16 KiB in one write; the server stops reading at the
	// first one's header.
	t.Run("1009", func(t *testing.T) {
		t.Parallel()
		s := startServer(t)
		base := goroutineBaseline(t, s, s.serviceToken(t))
		big := `{"event":"ping","data":"` + strings.Repeat("x", 20<<10) + `"}`
		burst := append(frames(300, pingFrame), frames(4, big)...)
		expectCloses(t, 1009, func(int) (int, error) {
			w, _ := dialRawWS(t, s, "", "")
			defer w.answerClose(1009)
			// The write's own error does not matter (with a reset it fails);
			// what the client reads does.
			w.conn.Write(burst)
			time.Sleep(lateRead)
			return w.readClose()
		})
		expectGoroutines(t, s, base)
	})
}

// A client that neither reads nor answers the close is let go within the
// bound all the same (docs/protocol.md 4.6): silent, or sending on (the
// frames do not postpone the end), and sooner when it floods (the server
// drops a bounded amount). None leaves a connection or goroutine behind.
func TestWSCloseUnanswered(t *testing.T) {
	t.Parallel()
	s := startServer(t, "RATE_LIMIT_WINDOW_MS=3600000", "RATE_LIMIT_MAX_EVENTS=20")
	svc := s.serviceToken(t)
	base := goroutineBaseline(t, s, svc)
	const (
		linger = 3 * time.Second // the server's wait for the answer
		bound  = linger + 3*time.Second
	)
	silent, _ := dialRawWS(t, s, s.userToken(t, "silent"), "")
	trickle, _ := dialRawWS(t, s, s.userToken(t, "trickle"), "")
	flood, _ := dialRawWS(t, s, s.userToken(t, "flood"), "")
	eventually(t, waitTimeout, "the connections in the stats", func() bool { return wsConnections(t, s, svc) == 3 })

	burst := frames(400, pingFrame) // 4429 after the 100th refusal in a row
	for _, w := range []*rawWS{silent, trickle, flood} {
		if _, err := w.conn.Write(burst); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	// writeOn writes chunk every pause until a write fails (the server
	// closed its socket) and says when.
	writeOn := func(w *rawWS, chunk []byte, pause time.Duration) <-chan time.Duration {
		gone := make(chan time.Duration, 1)
		go func() {
			for {
				if _, err := w.conn.Write(chunk); err != nil {
					gone <- time.Since(start)
					return
				}
				time.Sleep(pause)
			}
		}()
		return gone
	}
	trickleGone := writeOn(trickle, frames(1, pingFrame), 10*time.Millisecond)
	floodGone := writeOn(flood, frames(16, `{"event":"ping","data":"`+strings.Repeat("x", 8<<10)+`"}`), 0)

	eventually(t, bound, "the server to drop every client", func() bool { return wsConnections(t, s, svc) == 0 })
	t.Logf("all dropped %v after the bursts", time.Since(start))
	for _, c := range []struct {
		name  string
		gone  <-chan time.Duration
		limit time.Duration
	}{{"flooding", floodGone, linger}, {"trickling", trickleGone, bound}} {
		select {
		case d := <-c.gone:
			t.Logf("the %s client's socket was closed %v after the burst", c.name, d)
			if d > c.limit {
				t.Errorf("the %s client's socket was closed %v after the burst, want within %v", c.name, d, c.limit)
			}
		case <-time.After(waitTimeout):
			t.Errorf("the %s client can still write %v after the burst", c.name, time.Since(start))
		}
	}
	expectGoroutines(t, s, base)
	// What the server wrote waits in the silent client's socket, close
	// frame last, then the end of the stream: no reset.
	if code, err := silent.readClose(); err != nil || code != 4429 {
		t.Fatalf("the silent client read code %d, %v; want close 4429", code, err)
	}
}
