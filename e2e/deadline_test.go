package e2e

// What keeps a request from holding the server (docs/protocol.md section
// 8): the 10 s for a request to arrive, and the per-address cap on plain
// connections (HTTP_CONNS_PER_ADDRESS).

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// slowResult is how the server treated one slow request.
type slowResult struct {
	name   string
	status string        // the response's status line, "" when none came
	cut    time.Duration // from the first byte until the server closed the socket
	err    error
}

// sendSlowly writes head to a new connection to addr, then one more byte a
// second (a space: a JSON body stays valid) until the server hangs up, and
// reads whatever the server answers until it closes, for at most 15 s.
func sendSlowly(addr, name, head string) slowResult {
	r := slowResult{name: name}
	conn, err := net.DialTimeout("tcp", addr, waitTimeout)
	if err != nil {
		r.err = err
		return r
	}
	defer conn.Close()
	start := time.Now()
	if _, err := conn.Write([]byte(head)); err != nil {
		r.err = err
		return r
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := conn.Write([]byte(" ")); err != nil {
					return
				}
			}
		}
	}()
	// Bounded: anything held past 15 s counts as not cut.
	conn.SetReadDeadline(start.Add(15 * time.Second))
	br := bufio.NewReader(conn)
	if line, err := br.ReadString('\n'); err == nil {
		r.status = strings.TrimSpace(line)
	}
	buf := make([]byte, 512)
	for err == nil { // the rest, until the close
		_, err = br.Read(buf)
	}
	r.cut = time.Since(start)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		r.err = fmt.Errorf("socket still open after %v (status %q)", r.cut, r.status)
	}
	return r
}

// A request must arrive, headers and body, within 10 s of its first byte:
// slower ones are cut (408 or a close) and their sockets closed, whatever
// route they asked for. WebSockets and SSE streams, hijacked, live on.
func TestSlowRequestsCut(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	svc := s.serviceToken(t)
	ws := dialWS(t, s, s.userToken(t, "u1", "p1"), named("ws"))
	ws.join(t, "p1")
	sse := openSSE(t, s, "/sse?projects=p1", s.userToken(t, "u2", "p1"), nil)
	sse.read(t) // retry
	sse.expectJoined(t, "p1")

	slow := []struct{ name, head string }{
		{"publish, body a byte a second", "POST /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + svc +
			"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"},
		{"publish without a token", "POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"},
		{"no such route", "POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nx"},
		{"headers a byte a second", "GET /api/websocket/health HTTP/1.1\r\nHost: x\r\nX-Slow: x"},
	}
	results := make(chan slowResult, len(slow))
	var wg sync.WaitGroup
	for _, sl := range slow {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results <- sendSlowly(fmt.Sprintf("127.0.0.1:%d", s.Port), sl.name, sl.head)
		}()
	}
	wg.Wait()
	close(results)
	for r := range results {
		switch {
		case r.err != nil:
			t.Errorf("%s: %v", r.name, r.err)
		case r.cut < 9*time.Second || r.cut > 13*time.Second:
			t.Errorf("%s: cut after %v (status %q), want about 10 s", r.name, r.cut, r.status)
		case r.status != "" && !strings.Contains(r.status, " 408 ") && !strings.Contains(r.status, " 401 ") && !strings.Contains(r.status, " 404 "):
			t.Errorf("%s: answered %q", r.name, r.status)
		default:
			t.Logf("%s: cut after %v, status %q", r.name, r.cut.Round(100*time.Millisecond), r.status)
		}
	}

	// Older than 10 s, the WebSocket and the SSE stream still work.
	seq := publish(t, s, svc, "p1", "story_uploaded", map[string]any{})
	ws.expectEvent(t, "p1", seq)
	sse.expectEvents(t, nil, map[string]int64{"p1": seq})
	ws.call(t, "ping", nil)
}

// With HTTP_CONNS_PER_ADDRESS, one address may hold that many plain
// connections at once; the next is closed at once. Upgraded WebSockets do
// not count.
func TestConnsPerAddress(t *testing.T) {
	t.Parallel()
	s := startServer(t, "HTTP_CONNS_PER_ADDRESS=3")
	addr := fmt.Sprintf("127.0.0.1:%d", s.Port)
	// WebSockets first: each is a plain connection only until it upgrades.
	for i := range 5 {
		dialWS(t, s, s.userToken(t, fmt.Sprintf("u%d", i)), named(fmt.Sprintf("ws %d", i))).expectNothingQueued(t)
	}
	dial := func() net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", addr, waitTimeout)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// closedSoon reports whether the server closes c within d.
	closedSoon := func(c net.Conn, d time.Duration) bool {
		c.SetReadDeadline(time.Now().Add(d))
		_, err := c.Read(make([]byte, 1))
		ne, ok := err.(net.Error)
		return !(ok && ne.Timeout())
	}
	// get sends a health request on c and returns the status line.
	get := func(c net.Conn) string {
		t.Helper()
		c.SetDeadline(time.Now().Add(waitTimeout))
		if _, err := c.Write([]byte("GET /api/websocket/health HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			t.Fatalf("write: %v", err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		resp.Body.Close()
		c.SetDeadline(time.Time{})
		return resp.Status
	}
	idle := []net.Conn{dial(), dial(), dial()}
	if got := get(idle[0]); !strings.HasPrefix(got, "200") {
		t.Fatalf("health on the first connection: %s", got)
	}
	if !closedSoon(dial(), 3*time.Second) {
		t.Fatal("a 4th plain connection from the address stayed open, want it closed at once")
	}
	for i, c := range idle {
		if closedSoon(c, 50*time.Millisecond) {
			t.Fatalf("connection %d was closed", i)
		}
	}
	if got := get(idle[1]); !strings.HasPrefix(got, "200") {
		t.Fatalf("health on an idle connection: %s", got)
	}
	// One closes: its place is free again.
	idle[2].Close()
	eventually(t, waitTimeout, "a connection accepted once one closed", func() bool {
		c := dial()
		defer c.Close()
		return !closedSoon(c, 200*time.Millisecond)
	})
	for _, c := range idle {
		c.Close()
	}
	// The server learns of the closes on its own time: until then a
	// request may still be refused.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	eventually(t, waitTimeout, "sagapush_http_connections_refused_total counted", func() bool {
		resp, err := client.Get(s.URL + "/metrics")
		if err != nil {
			return false
		}
		validateResponse(t, "GET", "/metrics", resp, func() {})
		defer resp.Body.Close()
		for sc := bufio.NewScanner(resp.Body); sc.Scan(); {
			if v, ok := strings.CutPrefix(sc.Text(), "sagapush_http_connections_refused_total "); ok {
				return v != "0"
			}
		}
		return false
	})
}
