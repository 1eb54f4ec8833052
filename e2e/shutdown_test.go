package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
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

// /readyz fails as soon as SIGTERM arrives, while /healthz and the
// connected clients go on for SHUTDOWN_DELAY_MS: a balancer drains the
// instance before its clients are told to go.
func TestReadyzFailsAtSIGTERM(t *testing.T) {
	t.Parallel()
	s := startServer(t, "SHUTDOWN_DELAY_MS=3000")
	probe := func(path string) (int, string) {
		status, body := s.getJSON(t, path, "")
		st, _ := body["status"].(string)
		return status, st
	}
	if code, st := probe("/readyz"); code != http.StatusOK || st != "ready" {
		t.Fatalf("/readyz before: %d %s", code, st)
	}
	// The container health check (deploy/Dockerfile) asks the same paths.
	port := fmt.Sprintf("PORT=%d", s.Port)
	healthcheck := func(ready bool) (string, int) {
		args := []string{"healthcheck"}
		if ready {
			args = append(args, "--ready")
		}
		out, errOut, code := runBin(t, []string{port}, args...)
		return out + errOut, code
	}
	for _, ready := range []bool{false, true} {
		if out, code := healthcheck(ready); code != 0 {
			t.Fatalf("healthcheck (ready %v) of a serving server: exit %d: %s", ready, code, out)
		}
	}
	c := dialWS(t, s, s.userToken(t, "u1", "p1"))
	c.join(t, "p1")
	s.signal(t, syscall.SIGTERM)
	eventually(t, waitTimeout, "/readyz to answer 503", func() bool {
		code, st := probe("/readyz")
		return code == http.StatusServiceUnavailable && st == "unavailable"
	})
	if code, st := probe("/healthz"); code != http.StatusOK || st != "ok" {
		t.Fatalf("/healthz while draining: %d %s", code, st)
	}
	if out, code := healthcheck(false); code != 0 {
		t.Fatalf("healthcheck while draining: exit %d: %s", code, out)
	}
	if out, code := healthcheck(true); code != 1 || !strings.Contains(out, "/readyz answered 503") {
		t.Fatalf("healthcheck --ready while draining: exit %d: %s; want 1 and the 503", code, out)
	}
	// The client is still served while the balancer drains.
	if m := c.call(t, "ping", nil); m["event"] != "pong" {
		t.Fatalf("ping while draining: %v", m)
	}
	c.expect(t, "server_shutdown")
}

// LOG_FORMAT=json: every line the server logs is one JSON object with time,
// level and msg, durations as text.
func TestJSONLogs(t *testing.T) {
	t.Parallel()
	s := startServer(t, "LOG_FORMAT=json", "LOG_LEVEL=debug")
	c := dialWS(t, s, s.userToken(t, "u1", "p1"))
	c.join(t, "p1")
	if code := s.stop(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	lines := strings.Split(strings.TrimSpace(s.stderr.String()), "\n")
	if len(lines) < 3 {
		t.Fatalf("only %d log lines:\n%s", len(lines), s.stderr.String())
	}
	sawGrace := false
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON object: %q", l)
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := m[k].(string); !ok {
				t.Errorf("%q lacks %s", l, k)
			}
		}
		if g, ok := m["grace"]; ok {
			sawGrace = g == "10s"
		}
	}
	if !sawGrace {
		t.Errorf("the shutdown line's grace is not \"10s\":\n%s", s.stderr.String())
	}
}

// No token, ticket or secret reaches the log at any level, in either
// format, whatever clients do: good and bad tokens in each place a token
// goes, tickets spent and respent, a wrong metrics token. The debug lines
// of connects, refusals, joins, leaves and ends are there.
func TestNoSecretInLogs(t *testing.T) {
	t.Parallel()
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			t.Parallel()
			const metricsToken = "metrics-secret-6f1d2c"
			s := startServer(t, "LOG_LEVEL=debug", "LOG_FORMAT="+format, "METRICS_TOKEN="+metricsToken)
			good := s.userToken(t, "u1", "p1")
			expired := s.expiredToken(t, "u1", "p1")
			forged := s.userToken(t, "u1", "p1") + "x"
			secrets := []string{testSecret, metricsToken, good, expired, forged}

			c := dialWS(t, s, good)
			c.join(t, "p1")
			c.call(t, "leave_project", map[string]any{"projectId": "p1"})
			if m := c.call(t, "join_project", map[string]any{"projectId": "p2"}); m["event"] != "error" {
				t.Fatalf("join of p2: %v", m)
			}
			c.sendEvent(t, "auth", map[string]any{"token": forged}, 7)
			c.expectError(t, "UNAUTHORIZED")
			for _, tok := range []string{expired, forged} {
				if _, _, err := tryDialWS(t, s, tok); err == nil {
					t.Fatal("a bad token connected")
				}
			}
			ticket, _ := mintTicket(t, s, good)
			secrets = append(secrets, ticket)
			dialWS(t, s, "", withTicket(ticket)).join(t, "p1")
			if _, _, err := tryDialWS(t, s, "", withTicket(ticket)); err == nil {
				t.Fatal("a spent ticket connected")
			}
			sc := openSSE(t, s, "/sse?projects=p1", good, nil)
			sc.read(t)
			sc.expectJoined(t, "p1")
			sc.close()
			if status, _ := s.getJSON(t, "/api/websocket/stats", forged); status != http.StatusUnauthorized {
				t.Fatalf("stats with a forged token: %d", status)
			}
			resp := s.requestHeaders(t, "GET", "/metrics", "", nil, http.Header{"Authorization": {"Bearer wrong-" + metricsToken}})
			resp.Body.Close()
			// Every HTTP answer carries a request id, which its debug line names.
			resp = s.request(t, "GET", "/api/websocket/health?token="+good, "", nil)
			resp.Body.Close()
			reqID := resp.Header.Get("X-Request-Id")
			if reqID == "" {
				t.Fatal("no X-Request-Id on an answer")
			}
			dropped := dialWS(t, s, good)
			dropped.join(t, "p1")
			dropped.Conn.CloseNow() // no close frame: logged as 1006
			c.Conn.Close(websocket.StatusNormalClosure, "")
			if code := s.stop(t); code != 0 {
				t.Fatalf("exit %d", code)
			}
			log := s.stderr.String()
			// A WebSocket's end names the client's close code.
			for _, code := range []string{"1000", "1006"} {
				found := false
				for _, l := range strings.Split(log, "\n") {
					if strings.Contains(l, "disconnected") && (strings.Contains(l, "code="+code) || strings.Contains(l, `"code":`+code)) {
						found = true
					}
				}
				if !found {
					t.Errorf("no disconnected line with close code %s", code)
				}
			}
			for _, secret := range secrets {
				if strings.Contains(log, secret) || strings.Contains(log, secret[:min(len(secret), 40)]) {
					t.Errorf("the log holds a secret (%d bytes starting %.8s...)", len(secret), secret)
				}
			}
			for _, want := range []string{"connected", "auth refused", "auth frame refused", "joined", "join refused", "left", "disconnected", "http request", reqID} {
				if !strings.Contains(log, want) {
					t.Errorf("no %q line at debug", want)
				}
			}
			if t.Failed() {
				t.Logf("log:\n%s", log)
			}
		})
	}
}
