package e2e

// HTTP API tests (docs/protocol.md section 8) and the token command (section 2).

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/saga-family/sagapush/auth"
)

func TestAPIHealth(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	check := func(conns, projects, users float64) {
		t.Helper()
		status, body := s.getJSON(t, "/api/websocket/health", "")
		if status != http.StatusOK {
			t.Fatalf("health: %d %v", status, body)
		}
		if body["status"] != "healthy" || body["database"] != "disabled" {
			t.Errorf("health %v: want healthy, database disabled", body)
		}
		if body["connections"] != conns || body["projects"] != projects || body["users"] != users {
			t.Errorf("health %v: want %v connections, %v projects, %v users", body, conns, projects, users)
		}
		ts, _ := body["timestamp"].(string)
		if when, err := time.Parse(time.RFC3339Nano, ts); err != nil || time.Since(when).Abs() > time.Minute {
			t.Errorf("timestamp %q", ts)
		}
	}
	check(0, 0, 0)
	c := dialWS(t, s, s.userToken(t, "u1", "p1"))
	c.join(t, "p1")
	dialWS(t, s, s.userToken(t, "u1", "p1")).expectNothingQueued(t)
	check(2, 1, 1)
}

func TestAPIStats(t *testing.T) {
	t.Parallel()
	s := startServer(t, "RATE_LIMIT_WINDOW_MS=30000", "RATE_LIMIT_MAX_EVENTS=50")
	const path = "/api/websocket/stats"

	status, body := s.getJSON(t, path, "")
	if status != http.StatusUnauthorized || httpErrorCode(body) != "UNAUTHORIZED" {
		t.Errorf("no token: %d %v, want 401 UNAUTHORIZED", status, body)
	}
	status, body = s.getJSON(t, path, s.expiredToken(t, "admin"))
	if status != http.StatusUnauthorized || httpErrorCode(body) != "TOKEN_EXPIRED" {
		t.Errorf("expired token: %d %v, want 401 TOKEN_EXPIRED", status, body)
	}
	status, body = s.getJSON(t, path, s.userToken(t, "u1"))
	if status != http.StatusForbidden || httpErrorCode(body) == "" {
		t.Errorf("user token: %d %v, want 403 with an error", status, body)
	}

	a := dialWS(t, s, s.userToken(t, "u1", "p1", "p2"))
	b := dialWS(t, s, s.userToken(t, "u2", "p1"))
	a.join(t, "p1")
	a.join(t, "p2")
	b.join(t, "p1")

	for _, tok := range []string{s.token(t, auth.Claims{UserID: "ops", Role: auth.RoleAdmin}, time.Hour), s.serviceToken(t)} {
		status, body = s.getJSON(t, path, tok)
		if status != http.StatusOK || body["success"] != true {
			t.Fatalf("stats: %d %v", status, body)
		}
		if _, err := time.Parse(time.RFC3339Nano, body["timestamp"].(string)); err != nil {
			t.Errorf("timestamp: %v", err)
		}
		var got struct {
			Data struct {
				TotalConnections   *int `json:"totalConnections"`
				ProjectCount       *int `json:"projectCount"`
				UserCount          *int `json:"userCount"`
				ProjectConnections []struct {
					ProjectID       string `json:"projectId"`
					ConnectionCount int    `json:"connectionCount"`
				} `json:"projectConnections"`
				RateLimitStats struct {
					ActiveUsers        *int `json:"activeUsers"`
					RateLimitWindow    *int `json:"rateLimitWindow"`
					MaxEventsPerWindow *int `json:"maxEventsPerWindow"`
				} `json:"rateLimitStats"`
				Transports struct {
					WebSocket *int `json:"websocket"`
					SSE       *int `json:"sse"`
				} `json:"transports"`
			} `json:"data"`
		}
		raw, _ := json.Marshal(body)
		if err := json.Unmarshal(raw, &got); err != nil {
			t.Fatalf("stats shape %s: %v", raw, err)
		}
		d := got.Data
		eq := func(name string, p *int, want int) {
			t.Helper()
			if p == nil || *p != want {
				t.Errorf("stats %s: %s, want %d", raw, name, want)
			}
		}
		eq("totalConnections", d.TotalConnections, 2)
		eq("projectCount", d.ProjectCount, 2)
		eq("userCount", d.UserCount, 2)
		eq("rateLimitStats.activeUsers", d.RateLimitStats.ActiveUsers, 2)
		eq("rateLimitStats.rateLimitWindow", d.RateLimitStats.RateLimitWindow, 30000)
		eq("rateLimitStats.maxEventsPerWindow", d.RateLimitStats.MaxEventsPerWindow, 50)
		eq("transports.websocket", d.Transports.WebSocket, 2)
		eq("transports.sse", d.Transports.SSE, 0)
		counts := map[string]int{}
		for _, p := range d.ProjectConnections {
			counts[p.ProjectID] = p.ConnectionCount
		}
		if len(counts) != 2 || counts["p1"] != 2 || counts["p2"] != 1 {
			t.Errorf("projectConnections %+v: want p1: 2, p2: 1", d.ProjectConnections)
		}
	}
}

func httpErrorCode(body map[string]any) string {
	e, _ := body["error"].(map[string]any)
	if m, _ := e["message"].(string); m == "" {
		return ""
	}
	c, _ := e["code"].(string)
	return c
}

func TestAPIPublish(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	svc := s.serviceToken(t)
	c := dialWS(t, s, s.userToken(t, "u1", "p1"))
	c.join(t, "p1")

	for want := int64(1); want <= 3; want++ {
		status, body := s.doJSON(t, "POST", "/api/events", svc, map[string]any{"projectId": "p1", "event": "story_uploaded", "data": map[string]any{"story": map[string]any{"id": "s"}}})
		if status != http.StatusAccepted || body["seq"] != float64(want) || body["projectId"] != "p1" {
			t.Fatalf("publish: %d %v, want 202 with seq %d", status, body, want)
		}
		c.expectEvent(t, "p1", want)
	}
	// Every event of section 5 is taken.
	for _, ev := range []string{"story_uploaded", "story_processing", "story_processed", "transcript_updated",
		"interaction_added", "interaction_updated", "export_started", "export_progress", "export_ready", "export_failed"} {
		seq := publish(t, s, svc, "p1", ev, map[string]any{"storyId": "s"})
		if m := c.expectEvent(t, "p1", seq); m["event"] != ev {
			t.Errorf("got %v, want %s", m, ev)
		}
	}

	bad := []struct {
		name string
		body any
	}{
		{"unknown event", map[string]any{"projectId": "p1", "event": "story_deleted", "data": map[string]any{}}},
		{"client event", map[string]any{"projectId": "p1", "event": "join_project", "data": map[string]any{}}},
		{"no event", map[string]any{"projectId": "p1", "data": map[string]any{}}},
		{"not JSON", "story_uploaded please"},
		{"JSON array", `[{"projectId":"p1","event":"story_uploaded","data":{}}]`},
		{"trailing garbage", `{"projectId":"p1","event":"story_uploaded","data":{}} and more`},
		{"two objects", `{"projectId":"p1","event":"story_uploaded","data":{}}{"projectId":"p1","event":"story_uploaded","data":{}}`},
		{"empty body", ""},
		{"array data", map[string]any{"projectId": "p1", "event": "story_uploaded", "data": []int{1}}},
		{"string data", map[string]any{"projectId": "p1", "event": "story_uploaded", "data": "x"}},
		{"null data", map[string]any{"projectId": "p1", "event": "story_uploaded", "data": nil}},
		{"no data", map[string]any{"projectId": "p1", "event": "story_uploaded"}},
		{"no target", map[string]any{"event": "story_uploaded", "data": map[string]any{}}},
		{"both targets", map[string]any{"projectId": "p1", "userId": "u1", "event": "story_uploaded", "data": map[string]any{}}},
		{"bad projectId", map[string]any{"projectId": "a:b", "event": "story_uploaded", "data": map[string]any{}}},
		{"projectId not a string", map[string]any{"projectId": 5, "event": "story_uploaded", "data": map[string]any{}}},
	}
	for _, tc := range bad {
		status, body := s.doJSON(t, "POST", "/api/events", svc, tc.body)
		if status != http.StatusBadRequest || httpErrorCode(body) == "" {
			t.Errorf("%s: %d %v, want 400 with an error", tc.name, status, body)
		}
	}
	big := map[string]any{"projectId": "p1", "event": "story_uploaded", "data": map[string]any{"x": strings.Repeat("x", 600<<10)}}
	if status, body := s.doJSON(t, "POST", "/api/events", svc, big); status != http.StatusRequestEntityTooLarge {
		t.Errorf("600 KiB body: %d %v, want 413", status, body)
	}
	ok := map[string]any{"projectId": "p1", "event": "story_uploaded", "data": map[string]any{}}
	if status, body := s.doJSON(t, "POST", "/api/events", s.userToken(t, "u1", "p1"), ok); status != http.StatusForbidden || httpErrorCode(body) == "" {
		t.Errorf("user token: %d %v, want 403", status, body)
	}
	if status, body := s.doJSON(t, "POST", "/api/events", s.token(t, auth.Claims{UserID: "ops", Role: auth.RoleAdmin}, time.Hour), ok); status != http.StatusForbidden {
		t.Errorf("admin token: %d %v, want 403 (service only)", status, body)
	}
	if status, body := s.doJSON(t, "POST", "/api/events", "", ok); status != http.StatusUnauthorized || httpErrorCode(body) != "UNAUTHORIZED" {
		t.Errorf("no token: %d %v, want 401", status, body)
	}
	// None of the refused requests stored or delivered anything.
	c.expectNothingQueued(t)
	if seq := publish(t, s, svc, "p1", "story_uploaded", map[string]any{}); seq != 14 {
		t.Errorf("seq %d after 13 accepted events, want 14", seq)
	}
}

// A user-targeted event reaches that user's connections only, and is not
// stored.
func TestAPIPublishToUser(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	svc := s.serviceToken(t)
	u1a := dialWS(t, s, s.userToken(t, "u1", "p1"), named("u1 a"))
	u1b := dialWS(t, s, "", withoutToken(), named("u1 b"))
	u1b.authenticate(t, s.userToken(t, "u1"))
	u2 := dialWS(t, s, s.userToken(t, "u2", "p1"), named("u2"))
	u1a.join(t, "p1")
	u2.join(t, "p1")

	data := map[string]any{"message": "your export is ready", "n": 1}
	status, body := s.doJSON(t, "POST", "/api/events", svc, map[string]any{"userId": "u1", "event": "notification", "data": data})
	if status != http.StatusAccepted {
		t.Fatalf("user event: %d %v, want 202", status, body)
	}
	for _, c := range []*wsClient{u1a, u1b} {
		m := c.expectNext(t, "notification")
		if d := dataOf(t, m); d["message"] != data["message"] {
			t.Errorf("%s: %v", c.name, m)
		}
		if _, ok := m["seq"]; ok {
			t.Errorf("%s: user event %v has a seq", c.name, m)
		}
		c.expectNothingQueued(t)
	}
	u2.expectNothingQueued(t)

	// Not stored: a later connection of u1 gets nothing, a resume from 0
	// replays nothing, and the project's seq did not move.
	late := dialWS(t, s, s.userToken(t, "u1", "p1"), named("u1 later"))
	m := late.call(t, "join_project", map[string]any{"projectId": "p1", "since": 0})
	if d := dataOf(t, m); d["seq"] != float64(0) || d["recovered"] != true {
		t.Errorf("joined %v: want seq 0", d)
	}
	late.expectNothingQueued(t)

	for _, bad := range []map[string]any{
		{"userId": "u1", "event": "", "data": map[string]any{}},
		{"userId": "u1", "event": "notification", "data": "x"},
		{"userId": "", "event": "notification", "data": map[string]any{}},
	} {
		if status, body := s.doJSON(t, "POST", "/api/events", svc, bad); status != http.StatusBadRequest {
			t.Errorf("%v: %d %v, want 400", bad, status, body)
		}
	}
	// A user with no connection: accepted, delivered to nobody.
	if status, _ := s.doJSON(t, "POST", "/api/events", svc, map[string]any{"userId": "nobody", "event": "notification", "data": map[string]any{}}); status != http.StatusAccepted {
		t.Errorf("user without connections: %d", status)
	}
	u1a.expectNothingQueued(t)
	u2.expectNothingQueued(t)
}

func TestAPIMetrics(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	c := dialWS(t, s, s.userToken(t, "u1", "p1"))
	c.join(t, "p1")
	resp := s.request(t, "GET", "/metrics", "", nil)
	body := string(readBody(t, resp))
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	for _, name := range []string{"sagapush_connections", "sagapush_joins_total", "sagapush_messages_in_total", "sagapush_handshakes_total", "go_goroutines"} {
		if !strings.Contains(body, "\n"+name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if v := s.metric(t, `sagapush_connections{transport="websocket"}`); v != 1 {
		t.Errorf("sagapush_connections{websocket} = %v, want 1", v)
	}
	if v := s.metric(t, "sagapush_joins_total"); v != 1 {
		t.Errorf("sagapush_joins_total = %v, want 1", v)
	}
}

func TestAPIStaticFiles(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	for _, f := range []struct{ path, ctype, contains string }{
		{"/", "text/html", "<"},
		{"/client.js", "javascript", "SagaClient"},
	} {
		resp := s.request(t, "GET", f.path, "", nil)
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d", f.path, resp.StatusCode)
			continue
		}
		if ct := resp.Header.Get("Content-Type"); !strings.Contains(ct, f.ctype) {
			t.Errorf("GET %s: Content-Type %q, want %s", f.path, ct, f.ctype)
		}
		if !bytes.Contains(body, []byte(f.contains)) {
			t.Errorf("GET %s: body lacks %q", f.path, f.contains)
		}
	}
	if resp := s.request(t, "GET", "/no-such-file", "", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /no-such-file: %d", resp.StatusCode)
	} else {
		resp.Body.Close()
	}
}

// Section 1: BIN token prints a token that verifies with the given claims.
func TestTokenCommand(t *testing.T) {
	t.Parallel()
	run := func(env []string, args ...string) (string, string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, binPath, append([]string{"token"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return strings.TrimSpace(out.String()), errb.String(), err
	}
	v, err := auth.NewVerifier(context.Background(), auth.Config{Secret: []byte(testSecret)})
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"JWT_SECRET=" + testSecret}

	out, stderr, err := run(env, "--user", "u1", "--projects", "p1,p2", "--ttl", "1m")
	if err != nil {
		t.Fatalf("token: %v %s", err, stderr)
	}
	c, err := v.Verify(out)
	if err != nil {
		t.Fatalf("printed token %q does not verify: %v", out, err)
	}
	if c.UserID != "u1" || !slices.Equal(c.Projects, []string{"p1", "p2"}) || c.Role != "" {
		t.Errorf("claims %+v", c)
	}
	if d := time.Until(c.ExpiresAt); d < 55*time.Second || d > 61*time.Second {
		t.Errorf("expires in %v, want 1m", d)
	}

	out, stderr, err = run(env, "--user", "svc", "--name", "Saga backend", "--role", "service")
	if err != nil {
		t.Fatalf("token: %v %s", err, stderr)
	}
	if c, err = v.Verify(out); err != nil || c.Role != auth.RoleService || c.Name != "Saga backend" {
		t.Errorf("service token: %+v %v", c, err)
	} else if d := time.Until(c.ExpiresAt); d < 14*time.Minute || d > 16*time.Minute {
		t.Errorf("default ttl: expires in %v, want 15m", d)
	}

	// The printed token works against a server with the same secret.
	s := startServer(t)
	out, _, err = run(env, "--user", "u9", "--projects", "p9")
	if err != nil {
		t.Fatal(err)
	}
	dialWS(t, s, out).join(t, "p9")

	for _, bad := range [][]string{{"--projects", "p1"}, {"--user", "u1", "--role", "root"}, {"--user", "u1", "--ttl", "soon"}} {
		if out, _, err := run(env, bad...); err == nil {
			t.Errorf("token %v: printed %q, want an error", bad, out)
		}
	}
	if out, _, err := run([]string{"JWT_SECRET="}, "--user", "u1"); err == nil {
		t.Errorf("token without JWT_SECRET: printed %q, want an error", out)
	}
}

// WEBSOCKET_CORS_ORIGIN also governs the API: listed origins get CORS
// headers (preflight included), others none.
func TestAPICORS(t *testing.T) {
	t.Parallel()
	s := startServer(t, "WEBSOCKET_CORS_ORIGIN=https://app.example.com")
	preflight := func(origin string) *http.Response {
		t.Helper()
		h := http.Header{}
		h.Set("Origin", origin)
		h.Set("Access-Control-Request-Method", "POST")
		h.Set("Access-Control-Request-Headers", "authorization, content-type")
		resp := s.requestHeaders(t, "OPTIONS", "/api/events", "", nil, h)
		resp.Body.Close()
		return resp
	}
	resp := preflight("https://app.example.com")
	if resp.StatusCode >= 300 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Errorf("allowed preflight: %d, Allow-Origin %q", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"))
	}
	if h := strings.ToLower(resp.Header.Get("Access-Control-Allow-Headers")); !strings.Contains(h, "authorization") {
		t.Errorf("allowed preflight: Allow-Headers %q", h)
	}
	if resp := preflight("https://evil.example.com"); resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("foreign preflight: Allow-Origin %q", resp.Header.Get("Access-Control-Allow-Origin"))
	}
	h := http.Header{}
	h.Set("Origin", "https://app.example.com")
	resp = s.requestHeaders(t, "GET", "/api/websocket/health", "", nil, h)
	readBody(t, resp)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Errorf("health from an allowed origin: %d, Allow-Origin %q", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"))
	}
}
