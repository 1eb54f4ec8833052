package e2e

// Server-Sent Events tests of docs/protocol.md section 5 (with 3, 4, 6, 7 and 9 as
// they apply to SSE) against the real binary. The streams are read raw, with
// bufio, the way a browser's EventSource parses them (sseclient_test.go).
// The package doc lists the other helpers.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/saga-family/sagapush/auth"
)

// sseStats returns the stats' transports.sse count.
func sseStats(t testing.TB, s *testServer, svc string) int {
	t.Helper()
	status, body := s.getJSON(t, "/api/websocket/stats", svc)
	if status != http.StatusOK {
		t.Fatalf("stats: %d %v", status, body)
	}
	tr, _ := dataOf(t, body)["transports"].(map[string]any)
	n, ok := tr["sse"].(float64)
	if !ok {
		t.Fatalf("stats %v lack transports.sse", body)
	}
	return int(n)
}

// userEvent posts a user-targeted event (section 7).
func userEvent(t testing.TB, s *testServer, svc, userID, event string, data any) {
	t.Helper()
	status, body := s.doJSON(t, "POST", "/api/events", svc, map[string]any{"userId": userID, "event": event, "data": data})
	if status != http.StatusAccepted {
		t.Fatalf("user event %s: %d %v", event, status, body)
	}
}

// Section 4: the handshake, its refusals and the first messages.
func TestSSEHandshake(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	tok := s.userToken(t, "u1", "p1", "p2")

	c := openSSE(t, s, "/sse?projects=p2,px,p1", tok, nil)
	h := c.Resp.Header
	if ct := h.Get("Content-Type"); ct != "text/event-stream" && !strings.HasPrefix(ct, "text/event-stream;") {
		t.Errorf("Content-Type %q, want text/event-stream", ct)
	}
	if cc := h.Get("Cache-Control"); cc != "no-cache, no-transform" {
		t.Errorf("Cache-Control %q, want \"no-cache, no-transform\"", cc)
	}
	if xa := h.Get("X-Accel-Buffering"); xa != "no" {
		t.Errorf("X-Accel-Buffering %q, want no", xa)
	}
	if ce := h.Get("Content-Encoding"); ce != "" {
		t.Errorf("Content-Encoding %q: the stream must not be compressed", ce)
	}
	m, _ := c.read(t)
	if !strings.HasPrefix(c.firstLine, "retry:") || m.Retry == "" || m.Event != "" {
		t.Fatalf("first line %q, first message %v: want a retry: line first", c.firstLine, m)
	}
	if n, err := strconv.Atoi(m.Retry); err != nil || n <= 0 {
		t.Errorf("retry: %q, want a positive number of ms", m.Retry)
	}
	joined := c.expectJoined(t, "p1", "p2")
	for p, d := range joined {
		if d["seq"] != float64(0) {
			t.Errorf("joined %s: %v, want seq 0", p, d)
		}
		if _, ok := d["recovered"]; ok {
			t.Errorf("joined %s: %v has recovered without since", p, d)
		}
	}
	m, v := c.expectNext(t, "error")
	d := dataOf(t, v)
	if d["code"] != "PROJECT_ACCESS_DENIED" || d["projectId"] != "px" || d["message"] == "" {
		t.Errorf("denied project: %v, want PROJECT_ACCESS_DENIED with projectId px", m)
	}
	if m.HasID {
		t.Errorf("error %v carries an id", m)
	}
	// The stream is live.
	svc := s.serviceToken(t)
	publish(t, s, svc, "p1", "story_uploaded", map[string]any{"story": map[string]any{"id": "s1"}})
	c.expectEvents(t, nil, map[string]int64{"p1": 1})

	// Token by query parameter.
	q := openSSE(t, s, "/sse?projects=p1&token="+url.QueryEscape(tok), "", nil)
	if m, _ := q.read(t); m.Retry == "" {
		t.Fatalf("query token: first message %v, want retry", m)
	}
	if d := q.expectJoined(t, "p1")["p1"]; d["seq"] != float64(1) || d["role"] == nil {
		t.Errorf("joined %v, want seq 1 and a role", d)
	}

	sseRefused(t, s, "/sse", tok, http.StatusBadRequest, "INVALID_MESSAGE")
	sseRefused(t, s, "/sse?projects=", tok, http.StatusBadRequest, "INVALID_MESSAGE")
	sseRefused(t, s, "/sse?projects=,,", tok, http.StatusBadRequest, "INVALID_MESSAGE")
	sseRefused(t, s, "/sse?projects=p1", "", http.StatusUnauthorized, "UNAUTHORIZED")
	sseRefused(t, s, "/sse?projects=p1", "not.a.token", http.StatusUnauthorized, "UNAUTHORIZED")
	sseRefused(t, s, "/sse?projects=p1&token=garbage", "", http.StatusUnauthorized, "UNAUTHORIZED")
	other, err := auth.Mint([]byte("another-secret-0123456789abcdef"), auth.Claims{UserID: "u1", Projects: []string{"p1"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sseRefused(t, s, "/sse?projects=p1", other, http.StatusUnauthorized, "UNAUTHORIZED")
	sseRefused(t, s, "/sse?projects=p1", algNoneToken("u1"), http.StatusUnauthorized, "UNAUTHORIZED")
	expired := s.expiredToken(t, "u1", "p1")
	sseRefused(t, s, "/sse?projects=p1", expired, http.StatusUnauthorized, "TOKEN_EXPIRED")
	sseRefused(t, s, "/sse?projects=p1&token="+url.QueryEscape(expired), "", http.StatusUnauthorized, "TOKEN_EXPIRED")
	sseRefused(t, s, "/sse?projects=px,py", tok, http.StatusForbidden, "PROJECT_ACCESS_DENIED")
	sseRefused(t, s, "/sse?projects=px&token="+url.QueryEscape(tok), "", http.StatusForbidden, "PROJECT_ACCESS_DENIED")
	// A bad cursor or since is refused, not ignored (the client would
	// silently lose its place).
	sseRefused(t, s, "/sse?projects=p1&since=p1", tok, http.StatusBadRequest, "INVALID_MESSAGE")
	sseRefused(t, s, "/sse?projects=p1&lastEventId=p1:x", tok, http.StatusBadRequest, "INVALID_MESSAGE")

	// Still healthy, and the refusals left no stream behind.
	if n := sseStats(t, s, svc); n != 2 {
		t.Errorf("stats: %d SSE streams, want 2", n)
	}
}

// Section 4: a comment line at least every SSE_HEARTBEAT_MS.
func TestSSEHeartbeat(t *testing.T) {
	t.Parallel()
	s := startServer(t, "SSE_HEARTBEAT_MS=300")
	c := openSSE(t, s, "/sse?projects=p1", s.userToken(t, "u1", "p1"), nil)
	c.read(t)
	c.expectJoined(t, "p1")
	// 300 ms apart: two must come well within 5 s, even on a loaded machine.
	c.expectComments(t, 2, 5*time.Second)
	// And the stream still carries events after them.
	publish(t, s, s.serviceToken(t), "p1", "export_started", map[string]any{"exportId": "e1", "status": "pending"})
	e := c.readEvent(t)
	if e.msg.Event != "export_started" || e.Seq != 1 {
		t.Fatalf("got %v, want export_started seq 1", e.msg)
	}
}

// Section 4: every domain event carries id:, event: and data:, the data
// being byte for byte what a WebSocket member of the project receives.
func TestSSESameBytesAsWebSocket(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	svc := s.serviceToken(t)
	sse := openSSE(t, s, "/sse?projects=p1", s.userToken(t, "u1", "p1"), nil)
	sse.read(t) // retry
	sse.expectJoined(t, "p1")
	ws := dialWS(t, s, s.userToken(t, "u2", "p1"), named("ws member"))
	ws.join(t, "p1")

	big := strings.Repeat("long transcript ", 400) // > the server's write buffer
	events := []struct {
		name string
		data any
	}{
		{"story_uploaded", map[string]any{"story": map[string]any{"id": "s1", "projectId": "p1", "title": "Première journée — 学校 \"quoted\" \\ <b>", "status": "processing", "audioUrl": "https://x/a.mp3", "createdAt": "2024-01-01T00:00:00Z"}}},
		{"story_processing", map[string]any{"storyId": "s1", "status": "processing"}},
		{"transcript_updated", map[string]any{"storyId": "s1", "transcript": "line one\nline two\r\nend\u2028"}},
		{"transcript_updated", map[string]any{"storyId": "s1", "transcript": big}},
		{"story_processed", map[string]any{"storyId": "s1", "status": "completed"}},
		{"interaction_added", map[string]any{"interaction": map[string]any{"id": "i1", "storyId": "s1", "facilitatorId": "u2", "type": "comment", "content": "😀"}, "storyId": "s1"}},
		{"interaction_updated", map[string]any{"interaction": map[string]any{"id": "i1", "storyId": "s1", "facilitatorId": "u2", "type": "comment", "content": "edited"}, "storyId": "s1"}},
		{"export_started", map[string]any{"exportId": "e1", "status": "pending"}},
		{"export_progress", map[string]any{"exportId": "e1", "progress": 50}},
		{"export_ready", map[string]any{"exportId": "e1", "downloadUrl": "https://x/e1.zip", "expiresAt": "2030-01-01T00:00:00Z"}},
		{"export_failed", map[string]any{"exportId": "e2", "error": "disk full"}},
		{"story_uploaded", map[string]any{}},
	}
	for i, ev := range events {
		if seq := publish(t, s, svc, "p1", ev.name, ev.data); seq != int64(i+1) {
			t.Fatalf("publish %s: seq %d, want %d", ev.name, seq, i+1)
		}
	}
	ids := map[string]bool{}
	for i, ev := range events {
		wm := ws.readMsg(t)
		e := sse.readEvent(t)
		if e.msg.Event != ev.name || e.Seq != int64(i+1) {
			t.Fatalf("SSE got %v, want %s seq %d", e.msg, ev.name, i+1)
		}
		if e.msg.Data != string(wm.data) {
			t.Errorf("%s: SSE data differs from the WebSocket message:\nSSE: %s\nWS:  %s", ev.name, e.msg.Data, wm.data)
		}
		if strings.Contains(e.msg.Data, "\n") {
			t.Errorf("%s: data spans several lines", ev.name)
		}
		if ids[e.msg.ID] {
			t.Errorf("%s: id %q repeats an earlier one", ev.name, e.msg.ID)
		}
		ids[e.msg.ID] = true
	}
}

// Section 4: resume by Last-Event-ID (header and query) and by since: every
// missed event once, in order, then live events; recovered:false when the
// history cannot serve it.
func TestSSEResume(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	svc := s.serviceToken(t)
	tok := s.userToken(t, "u1", "p1", "p2")
	pub := func(p string, n int) int64 {
		t.Helper()
		var seq int64
		for i := 0; i < n; i++ {
			seq = publish(t, s, svc, p, "story_processed", map[string]any{"storyId": fmt.Sprintf("s%d", i), "status": "completed"})
		}
		return seq
	}
	pub("p1", 20)
	pub("p2", 3)

	first := openSSE(t, s, "/sse?projects=p1,p2", tok, nil)
	first.read(t)
	j := first.expectJoined(t, "p1", "p2")
	if j["p1"]["seq"] != float64(20) || j["p2"]["seq"] != float64(3) {
		t.Fatalf("joined %v, want seq 20 and 3", j)
	}
	pub("p1", 1)
	pub("p2", 1)
	got := first.expectEvents(t, map[string]int64{"p1": 20, "p2": 3}, map[string]int64{"p1": 21, "p2": 4})
	cursor := got[len(got)-1].msg.ID
	first.close()

	pub("p1", 2) // 22, 23
	pub("p2", 1) // 5

	resume := func(name string, c *sseConn, from map[string]int64, recovered map[string]any) {
		t.Helper()
		c.name = name
		c.read(t)
		j := c.expectJoined(t, "p1", "p2")
		for p, want := range recovered {
			if got, ok := j[p]["recovered"]; want == nil && ok || want != nil && got != want {
				t.Fatalf("%s: joined %s %v, want recovered %v", name, p, j[p], want)
			}
		}
		c.expectEvents(t, from, map[string]int64{"p1": 23, "p2": 5})
	}
	byHeader := openSSE(t, s, "/sse?projects=p1,p2", tok, http.Header{"Last-Event-Id": {cursor}})
	resume("Last-Event-ID", byHeader, map[string]int64{"p1": 21, "p2": 4}, map[string]any{"p1": true, "p2": true})
	byQuery := openSSE(t, s, "/sse?projects=p1,p2&lastEventId="+url.QueryEscape(cursor), tok, nil)
	resume("lastEventId", byQuery, map[string]int64{"p1": 21, "p2": 4}, map[string]any{"p1": true, "p2": true})
	// since names p1 only: p2 starts live, with no recovered and no replay.
	one := openSSE(t, s, "/sse?projects=p1,p2&since=p1:17", tok, nil)
	one.name = "since=p1:17"
	one.read(t)
	j = one.expectJoined(t, "p1", "p2")
	if j["p1"]["recovered"] != true || j["p1"]["seq"] != float64(23) {
		t.Fatalf("since=p1:17: joined p1 %v, want recovered true, seq 23", j["p1"])
	}
	if _, ok := j["p2"]["recovered"]; ok {
		t.Fatalf("since=p1:17: joined p2 %v, want no recovered", j["p2"])
	}
	one.expectEvents(t, map[string]int64{"p1": 17}, map[string]int64{"p1": 23})
	two := openSSE(t, s, "/sse?projects=p1,p2&since=p1:2,p2:1", tok, nil)
	resume("since=p1:2,p2:1", two, map[string]int64{"p1": 2, "p2": 1}, map[string]any{"p1": true, "p2": true})
	// A since above the project's seq (a history that no longer exists):
	// recovered false, nothing replayed.
	ahead := openSSE(t, s, "/sse?projects=p1,p2&since=p1:999,p2:5", tok, nil)
	ahead.name = "since ahead"
	ahead.read(t)
	j = ahead.expectJoined(t, "p1", "p2")
	if j["p1"]["recovered"] != false || j["p2"]["recovered"] != true {
		t.Fatalf("since=p1:999,p2:5: joined %v, want p1 recovered false, p2 true", j)
	}

	// Then live, exactly once, on every stream.
	pub("p1", 1)
	pub("p2", 1)
	var cursor2 string
	for _, c := range []*sseConn{byHeader, byQuery, two, ahead, one} {
		live := c.expectEvents(t, map[string]int64{"p1": 23, "p2": 5}, map[string]int64{"p1": 24, "p2": 6})
		cursor2 = live[len(live)-1].msg.ID
		c.close()
	}
	// The cursor of a live event resumes from there, nothing missed.
	pub("p1", 1)
	again := openSSE(t, s, "/sse?projects=p1,p2", tok, http.Header{"Last-Event-Id": {cursor2}})
	again.read(t)
	again.expectJoined(t, "p1", "p2")
	again.expectEvents(t, map[string]int64{"p1": 24, "p2": 6}, map[string]int64{"p1": 25})
}

// A replay of several projects bigger than QUEUE_LIMIT, plus a denied
// project's error, must not trip the slow-client limit: the stream has
// not even started writing.
func TestSSEBigReplayWithDeniedProject(t *testing.T) {
	t.Parallel()
	s := startServer(t, "QUEUE_LIMIT=12", "MAX_REPLAY=10")
	svc := s.serviceToken(t)
	for _, p := range []string{"p1", "p2"} {
		for i := 0; i < 10; i++ {
			publish(t, s, svc, p, "story_processed", map[string]any{"storyId": "s", "status": "completed"})
		}
	}
	c := openSSE(t, s, "/sse?projects=p1,p2,px&since=p1:0,p2:0", s.userToken(t, "u1", "p1", "p2"), nil)
	c.read(t)
	j := c.expectJoined(t, "p1", "p2")
	if j["p1"]["recovered"] != true || j["p2"]["recovered"] != true {
		t.Fatalf("joined %v, want recovered true", j)
	}
	// The replays, then the denied project's error (after every
	// joined_project; its place among replays is free).
	last := map[string]int64{}
	sawError := false
	for last["p1"] < 10 || last["p2"] < 10 || !sawError {
		m, v := c.read(t)
		if m.Event == "error" {
			if d := dataOf(t, v); d["code"] != "PROJECT_ACCESS_DENIED" || d["projectId"] != "px" {
				t.Fatalf("got %v, want PROJECT_ACCESS_DENIED for px", m)
			}
			sawError = true
			continue
		}
		p, _ := v["projectId"].(string)
		if seq, _ := v["seq"].(float64); int64(seq) != last[p]+1 {
			t.Fatalf("got %v after %v", m, last)
		}
		last[p]++
	}
	publish(t, s, svc, "p1", "story_processed", map[string]any{"storyId": "s", "status": "completed"})
	c.expectEvents(t, map[string]int64{"p1": 10}, map[string]int64{"p1": 11})
}

// A WebSocket client that saw seq N switches to SSE with since=P:N and gets
// N+1.. exactly once.
func TestSSETransportSwitch(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	svc := s.serviceToken(t)
	tok := s.userToken(t, "u1", "p1")
	ws := dialWS(t, s, tok, named("ws before the switch"))
	ws.join(t, "p1")
	var n int64
	for i := 0; i < 5; i++ {
		n = publish(t, s, svc, "p1", "export_progress", map[string]any{"exportId": "e1", "progress": i * 10})
	}
	for i := int64(1); i <= n; i++ {
		if m := ws.read(t); m["seq"] != float64(i) {
			t.Fatalf("ws got %v, want seq %d", m, i)
		}
	}
	ws.Conn.CloseNow()
	for i := 0; i < 3; i++ { // missed while switching
		publish(t, s, svc, "p1", "export_progress", map[string]any{"exportId": "e1", "progress": 60 + i})
	}
	c := openSSE(t, s, fmt.Sprintf("/sse?projects=p1&since=p1:%d", n), "", http.Header{"Authorization": {"Bearer " + tok}})
	c.read(t)
	if d := c.expectJoined(t, "p1")["p1"]; d["recovered"] != true || d["seq"] != float64(n+3) {
		t.Fatalf("joined %v, want recovered true, seq %d", d, n+3)
	}
	c.expectEvents(t, map[string]int64{"p1": n}, map[string]int64{"p1": n + 3})
	publish(t, s, svc, "p1", "export_ready", map[string]any{"exportId": "e1", "downloadUrl": "u", "expiresAt": "t"})
	e := c.expectEvents(t, map[string]int64{"p1": n + 3}, map[string]int64{"p1": n + 4})
	if e[0].msg.Event != "export_ready" {
		t.Fatalf("got %v, want export_ready", e[0].msg)
	}
}

// Typing of a WebSocket member and user-targeted events reach SSE streams.
func TestSSETypingAndUserEvents(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	svc := s.serviceToken(t)
	c := openSSE(t, s, "/sse?projects=p1", s.token(t, auth.Claims{UserID: "sam", Name: "Sam", Projects: []string{"p1"}}, time.Hour), nil)
	c.read(t)
	c.expectJoined(t, "p1")
	alice := dialWS(t, s, s.token(t, auth.Claims{UserID: "alice", Name: "Alice", Projects: []string{"p1"}}, time.Hour), named("alice"))
	alice.join(t, "p1")
	bob := dialWS(t, s, s.userToken(t, "bob", "p1"), named("bob"))
	bob.join(t, "p1")

	for _, ev := range []string{"typing_start", "typing_stop"} {
		alice.sendEvent(t, ev, map[string]any{"projectId": "p1", "storyId": "s1"}, -1)
		wm := bob.readMsg(t)
		m, v := c.expectNext(t, ev)
		if m.Data != string(wm.data) {
			t.Errorf("%s: SSE data %s, WebSocket %s", ev, m.Data, wm.data)
		}
		if v["projectId"] != "p1" {
			t.Errorf("%s: %v lacks projectId", ev, m)
		}
		if d := dataOf(t, v); d["storyId"] != "s1" || d["userId"] != "alice" || d["userName"] != "Alice" {
			t.Errorf("%s: data %v", ev, d)
		}
	}

	userEvent(t, s, svc, "sam", "notification", map[string]any{"message": "your export is ready"})
	m, v := c.expectNext(t, "notification")
	if d := dataOf(t, v); d["message"] != "your export is ready" {
		t.Errorf("user event %v", m)
	}
	if _, ok := v["seq"]; ok {
		t.Errorf("user event %v has a seq", m)
	}
	// Another user's event does not reach this stream: a later event of
	// this user comes next.
	userEvent(t, s, svc, "bob", "notification", map[string]any{"message": "for bob"})
	bob.expectNext(t, "notification")
	userEvent(t, s, svc, "sam", "second", map[string]any{"n": 2})
	c.expectNext(t, "second")
}

// Section 3 as it applies to SSE: server_shutdown on SIGTERM, then the
// stream ends.
func TestSSEShutdown(t *testing.T) {
	t.Parallel()
	s := startServer(t, "RECONNECT_AFTER_MS=1234", "SHUTDOWN_GRACE_MS=5000")
	c := openSSE(t, s, "/sse?projects=p1", s.userToken(t, "u1", "p1"), nil)
	c.read(t)
	c.expectJoined(t, "p1")
	s.signal(t, syscall.SIGTERM)
	_, v := c.expectNext(t, "server_shutdown")
	if d := dataOf(t, v); d["reconnectAfterMs"] != float64(1234) || d["message"] == "" {
		t.Errorf("server_shutdown %v, want reconnectAfterMs 1234 and a message", v)
	}
	if rest := c.expectEnd(t); len(rest) > 0 {
		t.Errorf("after server_shutdown: %v, want the end of the stream", rest)
	}
	if !errors.Is(c.err, io.EOF) {
		t.Errorf("the stream ended with %v, want a clean end (EOF)", c.err)
	}
	select {
	case <-s.exited:
	case <-time.After(waitTimeout):
		t.Fatal("the server did not exit after SIGTERM")
	}
	if code := s.state.ExitCode(); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

// Section 2: the stream ends when its token expires, with TOKEN_EXPIRED.
func TestSSETokenExpiry(t *testing.T) {
	t.Parallel()
	s := startServer(t, "JWT_LEEWAY_MS=0") // the end comes at exp + leeway
	tok := s.token(t, auth.Claims{UserID: "u1", Projects: []string{"p1"}}, 2*time.Second)
	c := openSSE(t, s, "/sse?projects=p1", tok, nil)
	c.read(t)
	c.expectJoined(t, "p1")
	start := time.Now()
	rest := c.expectEnd(t)
	var last sseMsg
	for _, m := range rest {
		if !m.IsComment {
			last = m
		}
	}
	var v map[string]any
	if last.Event != "error" || json.Unmarshal([]byte(last.Data), &v) != nil || dataOf(t, v)["code"] != "TOKEN_EXPIRED" {
		t.Fatalf("before the end: %v, want an error TOKEN_EXPIRED last", rest)
	}
	if !errors.Is(c.err, io.EOF) {
		t.Errorf("the stream ended with %v, want a clean end (EOF)", c.err)
	}
	t.Logf("ended %v after the join", time.Since(start))
	if n := sseStats(t, s, s.serviceToken(t)); n != 0 {
		t.Errorf("%d SSE streams left, want 0", n)
	}
}

// Closed streams leave no goroutine behind (go_goroutines of /metrics back
// to its baseline) and no connection in the hub.
func TestSSENoGoroutineLeak(t *testing.T) {
	t.Parallel()
	// A client that closes its stream is noticed at once (its socket is
	// watched for the hang-up), whatever the heartbeat.
	s := startServer(t, "SSE_HEARTBEAT_MS=60000")
	svc := s.serviceToken(t)
	tok := s.userToken(t, "u1", "p1", "p2")
	// A client of its own, without keep-alive, so that its idle connections
	// do not count.
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	open := func() (*http.Response, *bufio.Reader) {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		t.Cleanup(cancel)
		req, _ := http.NewRequestWithContext(ctx, "GET", s.URL+"/sse?projects=p1,p2", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := client.Do(req)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("open: %v %v", err, resp)
		}
		validateResponse(t, "GET", "/sse", resp, cancel)
		return resp, bufio.NewReader(resp.Body)
	}
	// Warm up: the first stream starts goroutines that stay (timers, the
	// metrics' collectors, ...).
	r, _ := open()
	r.Body.Close()
	eventually(t, waitTimeout, "the warm-up stream to close", func() bool { return sseStats(t, s, svc) == 0 })
	base := settledGoroutines(t, s)

	const n = 50
	var resps []*http.Response
	for i := 0; i < n; i++ {
		resp, br := open()
		// Read up to the second joined_project: the stream is fully set up.
		for joins := 0; joins < 2; {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("stream %d: %v", i, err)
			}
			if line == "event: joined_project\n" {
				joins++
			}
		}
		resps = append(resps, resp)
	}
	if got := sseStats(t, s, svc); got != n {
		t.Fatalf("stats: %d SSE streams, want %d", got, n)
	}
	during := goroutines(t, s)
	// One goroutine per stream; the baseline may hold a transient one or
	// two (an HTTP connection ending), so only ask that the metric clearly
	// sees the streams.
	if during < base+n*9/10 {
		t.Fatalf("go_goroutines %v with %d streams open, baseline %v: the metric does not see them", during, n, base)
	}
	for _, r := range resps {
		r.Body.Close()
	}
	eventually(t, waitTimeout, "no SSE stream left in the stats", func() bool { return sseStats(t, s, svc) == 0 })
	var now float64
	deadline := time.Now().Add(waitTimeout)
	for {
		if now = goroutines(t, s); now <= base {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("go_goroutines %v, baseline %v (%v with %d streams open): goroutines leaked", now, base, during, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("go_goroutines: baseline %v, %v with %d streams, %v after", base, during, n, now)
}

// A stream that does not read is ended by the server once QUEUE_LIMIT
// events wait, even when its socket is full (the write blocks), and nothing
// else is affected.
func TestSSESlowStream(t *testing.T) {
	t.Parallel()
	s := startServer(t, "QUEUE_LIMIT=8", "MAX_REPLAY=4", "ROOM_HISTORY=4", "EMBEDDED_HISTORY=16")
	svc := s.serviceToken(t)
	tok := s.userToken(t, "slow", "p1")

	// A raw client with a tiny receive buffer that reads nothing after the
	// response headers.
	conn := dialSmallBuffer(t, s)
	fmt.Fprintf(conn, "GET /sse?projects=p1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nAccept: text/event-stream\r\n\r\n", tok)
	conn.SetReadDeadline(time.Now().Add(waitTimeout))
	br := bufio.NewReaderSize(conn, 512)
	status, err := br.ReadString('\n')
	if err != nil || !strings.Contains(status, " 200 ") {
		t.Fatalf("slow stream: %q %v", status, err)
	}
	eventually(t, waitTimeout, "the slow stream to be counted", func() bool { return sseStats(t, s, svc) == 1 })

	other := openSSE(t, s, "/sse?projects=p1", s.userToken(t, "other", "p1"), nil)
	other.read(t)
	other.expectJoined(t, "p1")
	// Read the other stream as events come, so that only the slow one lags.
	otherLast := make(chan int64, 1)
	otherErr := make(chan error, 1)
	go func() {
		var last int64
		for {
			m, ok, ended := other.next(waitTimeout)
			if !ok {
				if ended {
					otherErr <- fmt.Errorf("the reading stream ended: %v", other.err)
				} else {
					otherErr <- fmt.Errorf("the reading stream got nothing for %v", waitTimeout)
				}
				return
			}
			if m.IsComment || !m.HasID {
				continue
			}
			var v struct{ Seq int64 }
			json.Unmarshal([]byte(m.Data), &v)
			if v.Seq != last+1 {
				otherErr <- fmt.Errorf("the reading stream got seq %d after %d", v.Seq, last)
				return
			}
			last = v.Seq
			select {
			case <-otherLast:
			default:
			}
			otherLast <- last
		}
	}()

	// ~60 KB events: the sockets fill, the write blocks, then the hub's
	// queue fills up to QUEUE_LIMIT and the stream must be ended.
	blob := make([]byte, 45000)
	rand.Read(blob)
	data := map[string]any{"storyId": "s1", "transcript": base64.StdEncoding.EncodeToString(blob)}
	var published int64
	deadline := time.Now().Add(40 * time.Second)
	for sseStats(t, s, svc) > 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the slow stream is still open after %d events of 60 KB (QUEUE_LIMIT=8)", published)
		}
		for i := 0; i < 8; i++ {
			published = publish(t, s, svc, "p1", "transcript_updated", data)
		}
	}
	t.Logf("the slow stream was ended after %d events", published)
	if v := s.metric(t, "sagapush_slow_closed_total"); v < 1 {
		t.Errorf("sagapush_slow_closed_total %v, want >= 1", v)
	}

	// The server stays healthy; the reading stream got everything.
	status2, body := s.getJSON(t, "/api/websocket/health", "")
	if status2 != http.StatusOK || body["status"] != "healthy" {
		t.Errorf("health: %d %v", status2, body)
	}
	last := publish(t, s, svc, "p1", "story_processed", map[string]any{"storyId": "s1", "status": "completed"})
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for got := int64(0); got < last; {
		select {
		case got = <-otherLast:
		case err := <-otherErr:
			t.Fatal(err)
		case <-timer.C:
			t.Fatalf("the reading stream is stuck (published %d)", last)
		}
	}

	// The slow client reads again: what was written, then the end.
	conn.SetReadDeadline(time.Now().Add(waitTimeout))
	n, err := io.Copy(io.Discard, br)
	if err != nil {
		t.Fatalf("slow stream: after %d bytes: %v, want the end of the stream", n, err)
	}
}

// nowMs in a check stands for an epoch-ms time of about now.
type nowMs struct{}

// Sections 5 and 8 over SSE, from database triggers.
func TestSSEDatabase(t *testing.T) {
	t.Parallel()
	d := newPGEnv(t)
	s := d.start(t)
	svc := s.serviceToken(t)
	d.exec(t, `INSERT INTO users (id, email, name) VALUES ('fac', 'fac@x', 'Facilitator'), ('st', 'st@x', 'Storyteller'), ('mem', 'mem@x', 'Member'), ('out', 'out@x', 'Outsider')`)
	d.exec(t, `INSERT INTO projects (id, name, facilitator_id, storyteller_id) VALUES ('p1', 'One', 'fac', 'st'), ('p2', 'Two', 'fac', NULL)`)
	d.exec(t, `INSERT INTO project_roles (project_id, user_id, role) VALUES ('p1', 'mem', 'storyteller'), ('p2', 'mem', 'storyteller')`)

	t.Run("refusals", func(t *testing.T) {
		sseRefused(t, s, "/sse?projects=p1", s.userToken(t, "ghost"), http.StatusUnauthorized, "UNAUTHORIZED")
		sseRefused(t, s, "/sse?projects=p1,p2", s.userToken(t, "out"), http.StatusForbidden, "PROJECT_ACCESS_DENIED")
	})

	t.Run("triggers", func(t *testing.T) {
		c := openSSE(t, s, "/sse?projects=p1", s.userToken(t, "st"), nil)
		c.read(t)
		if j := c.expectJoined(t, "p1")["p1"]; j["role"] != "storyteller" {
			t.Errorf("joined %v, want role storyteller", j)
		}
		ws := dialWS(t, s, s.userToken(t, "fac"), named("facilitator (ws)"))
		ws.join(t, "p1")

		type step struct {
			sql   string
			event string
			check map[string]any // data fields and their values (nil: present)
		}
		steps := []step{
			{`INSERT INTO stories (id, project_id, title, status, audio_url) VALUES ('s1', 'p1', 'First day', 'uploaded', 'https://a/s1.mp3')`,
				"story_uploaded", map[string]any{"story.id": "s1", "story.projectId": "p1", "story.title": "First day", "story.status": "uploaded", "story.audioUrl": "https://a/s1.mp3", "story.createdAt": nowMs{}}},
			{`UPDATE stories SET status = 'processing' WHERE id = 's1'`, "story_processing", map[string]any{"storyId": "s1", "status": "processing"}},
			{`UPDATE stories SET transcript = 'Once upon a time' WHERE id = 's1'`, "transcript_updated", map[string]any{"storyId": "s1", "transcript": "Once upon a time"}},
			{`UPDATE stories SET status = 'completed' WHERE id = 's1'`, "story_processed", map[string]any{"storyId": "s1", "status": "completed"}},
			{`INSERT INTO interactions (id, story_id, facilitator_id, type, content) VALUES ('i1', 's1', 'fac', 'comment', 'Lovely')`,
				"interaction_added", map[string]any{"storyId": "s1", "interaction.id": "i1", "interaction.storyId": "s1", "interaction.facilitatorId": "fac", "interaction.type": "comment", "interaction.content": "Lovely", "interaction.createdAt": nowMs{}}},
			{`UPDATE interactions SET answered_at = '2030-01-01T00:00:00.123Z' WHERE id = 'i1'`,
				"interaction_updated", map[string]any{"interaction.id": "i1", "interaction.answeredAt": float64(1893456000123)}},
			{`UPDATE interactions SET content = 'Lovely!' WHERE id = 'i1'`,
				"interaction_updated", map[string]any{"storyId": "s1", "interaction.id": "i1", "interaction.storyId": "s1", "interaction.facilitatorId": "fac", "interaction.type": "comment", "interaction.content": "Lovely!"}},
			{`INSERT INTO export_requests (id, project_id, facilitator_id) VALUES ('x1', 'p1', 'fac')`, "export_started", map[string]any{"exportId": "x1", "status": "pending"}},
			{`UPDATE export_requests SET progress = 40 WHERE id = 'x1'`, "export_progress", map[string]any{"exportId": "x1", "progress": float64(40)}},
			{`UPDATE export_requests SET status = 'ready', download_url = 'https://dl/x1.zip', expires_at = '2030-01-01T00:00:00Z' WHERE id = 'x1'`,
				"export_ready", map[string]any{"exportId": "x1", "downloadUrl": "https://dl/x1.zip", "expiresAt": float64(1893456000000)}},
			{`INSERT INTO export_requests (id, project_id, facilitator_id) VALUES ('x2', 'p1', 'fac')`, "export_started", map[string]any{"exportId": "x2", "status": "pending"}},
			{`UPDATE export_requests SET status = 'failed', error = 'disk full' WHERE id = 'x2'`, "export_failed", map[string]any{"exportId": "x2", "error": "disk full"}},
		}
		for i, st := range steps {
			d.exec(t, st.sql)
			e := c.readEvent(t)
			wm := ws.readMsg(t)
			if e.msg.Event != st.event || e.ProjectID != "p1" || e.Seq != int64(i+1) {
				t.Fatalf("after %s: got %v, want %s seq %d", st.sql, e.msg, st.event, i+1)
			}
			if e.msg.Data != string(wm.data) {
				t.Errorf("%s: SSE data %s differs from the WebSocket's %s", st.event, e.msg.Data, wm.data)
			}
			data := dataOf(t, e.v)
			for path, want := range st.check {
				var got any = data
				for _, k := range strings.Split(path, ".") {
					m, _ := got.(map[string]any)
					got = m[k]
				}
				if _, ok := want.(nowMs); ok {
					// Times are epoch ms (docs/protocol.md section 6).
					if ms, isNum := got.(float64); !isNum || time.Since(time.UnixMilli(int64(ms))).Abs() > time.Minute {
						t.Errorf("%s: data.%s = %v, want the epoch ms of about now", st.event, path, got)
					}
					continue
				}
				if got == nil || (want != nil && got != want) {
					t.Errorf("%s: data.%s = %v, want %v (data %v)", st.event, path, got, want, data)
				}
			}
		}
		// A rolled-back change sends nothing: the next event has the next seq.
		tx, err := d.db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(`INSERT INTO stories (id, project_id, title) VALUES ('s-rolled-back', 'p1', 'no')`); err != nil {
			t.Fatal(err)
		}
		tx.Rollback()
		d.exec(t, `UPDATE stories SET transcript = 'The end' WHERE id = 's1'`)
		if e := c.readEvent(t); e.msg.Event != "transcript_updated" || e.Seq != int64(len(steps)+1) {
			t.Fatalf("after a rollback: got %v, want transcript_updated seq %d", e.msg, len(steps)+1)
		}
	})

	t.Run("access_revoked", func(t *testing.T) {
		c := openSSE(t, s, "/sse?projects=p1,p2", s.userToken(t, "mem"), nil)
		c.read(t)
		c.expectJoined(t, "p1", "p2")
		ws := dialWS(t, s, s.userToken(t, "fac"), named("facilitator (ws)"))
		ws.join(t, "p1")
		d.exec(t, `DELETE FROM project_roles WHERE project_id = 'p1' AND user_id = 'mem'`)
		_, v := c.expectNext(t, "left_project")
		if dd := dataOf(t, v); dd["projectId"] != "p1" || dd["reason"] != "access_revoked" {
			t.Fatalf("left_project %v, want p1 access_revoked", v)
		}
		// No later event of p1 reaches the stream: once the facilitator got
		// one, a user event to mem comes next, not the p1 event.
		d.exec(t, `INSERT INTO stories (id, project_id, title) VALUES ('s-after', 'p1', 'after')`)
		ws.expectNext(t, "story_uploaded")
		userEvent(t, s, svc, "mem", "barrier", map[string]any{})
		c.expectNext(t, "barrier")
		// p2 still flows.
		d.exec(t, `INSERT INTO stories (id, project_id, title) VALUES ('s-p2', 'p2', 'two')`)
		if e := c.readEvent(t); e.ProjectID != "p2" || e.msg.Event != "story_uploaded" {
			t.Fatalf("got %v, want p2's story_uploaded", e.msg)
		}
	})

	t.Run("resume_pruned", func(t *testing.T) {
		d.exec(t, `INSERT INTO projects (id, name, facilitator_id) VALUES ('p3', 'Three', 'fac')`)
		for i := 1; i <= 5; i++ {
			d.exec(t, `INSERT INTO stories (id, project_id, title) VALUES ($1, 'p3', 't')`, fmt.Sprintf("p3-s%d", i))
		}
		// What the store's pruning does (store/postgres.go Prune).
		d.exec(t, `UPDATE push_project_seq SET pruned_through = 3 WHERE project_id = 'p3'`)
		d.exec(t, `DELETE FROM push_events WHERE project_id = 'p3' AND seq <= 3`)
		tok := s.userToken(t, "fac")
		lost := openSSE(t, s, "/sse?projects=p3&since=p3:1", tok, nil)
		lost.read(t)
		if j := lost.expectJoined(t, "p3")["p3"]; j["recovered"] != false || j["seq"] != float64(5) {
			t.Fatalf("since=p3:1 after pruning: joined %v, want recovered false, seq 5", j)
		}
		ok := openSSE(t, s, "/sse?projects=p3&since=p3:3", tok, nil)
		ok.read(t)
		if j := ok.expectJoined(t, "p3")["p3"]; j["recovered"] != true {
			t.Fatalf("since=p3:3 after pruning through 3: joined %v, want recovered true", j)
		}
		ok.expectEvents(t, map[string]int64{"p3": 3}, map[string]int64{"p3": 5})
		ahead := openSSE(t, s, "/sse?projects=p3&since=p3:9", tok, nil)
		ahead.read(t)
		if j := ahead.expectJoined(t, "p3")["p3"]; j["recovered"] != false {
			t.Fatalf("since=p3:9: joined %v, want recovered false", j)
		}
		// A cursor is as good as since.
		d.exec(t, `INSERT INTO stories (id, project_id, title) VALUES ('p3-s6', 'p3', 't')`)
		last := ok.readEvent(t)
		again := openSSE(t, s, "/sse?projects=p3", tok, http.Header{"Last-Event-Id": {last.msg.ID}})
		again.read(t)
		if j := again.expectJoined(t, "p3")["p3"]; j["recovered"] != true {
			t.Fatalf("Last-Event-ID %q: joined %v, want recovered true", last.msg.ID, j)
		}
		// Live from here on every stream, nothing replayed on the lost one.
		d.exec(t, `INSERT INTO stories (id, project_id, title) VALUES ('p3-s7', 'p3', 't')`)
		lost.expectEvents(t, map[string]int64{"p3": 5}, map[string]int64{"p3": 7})
		again.expectEvents(t, map[string]int64{"p3": 6}, map[string]int64{"p3": 7})
		ok.expectEvents(t, map[string]int64{"p3": 6}, map[string]int64{"p3": 7})
	})
}
