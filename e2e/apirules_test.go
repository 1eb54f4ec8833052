package e2e

// The rules every request to the API passes (docs/protocol.md section 8):
// origin, token from the header only, JSON bodies, names a user-targeted
// event may not take; /metrics behind METRICS_TOKEN; unauthenticated
// WebSockets in the counts.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/saga-family/sagapush/auth"
)

// wantHTTPError checks an error answer's status and code.
func wantHTTPError(t testing.TB, what string, resp *http.Response, status int, code string) map[string]any {
	t.Helper()
	b := readBody(t, resp)
	var body map[string]any
	if err := json.Unmarshal(b, &body); err != nil || resp.StatusCode != status || httpErrorCode(body) != code {
		t.Errorf("%s: %d %s, want %d %s", what, resp.StatusCode, b, status, code)
	}
	return body
}

// apiServer starts a server (env as startServer) with a WebSocket of user
// u1 joined to p1, and returns them with a service token.
func apiServer(t *testing.T, env ...string) (*testServer, *wsClient, string) {
	t.Helper()
	s := startServer(t, env...)
	c := dialWS(t, s, s.userToken(t, "u1", "p1"), named("u1"))
	c.join(t, "p1")
	return s, c, s.serviceToken(t)
}

// A cross-origin "simple" request (text/plain, no preflight) is refused
// and stores nothing; the same request from no origin or the server's own
// passes only as JSON.
func TestAPIRefusesForeignOrigin(t *testing.T) {
	t.Parallel()
	s, c, svc := apiServer(t)
	body := `{"projectId":"p1","event":"story_uploaded","data":{"story":{"id":"s1"}}}`

	for _, origin := range []string{"http://evil.example", "null"} {
		for _, ctype := range []string{"text/plain", "application/json"} {
			h := http.Header{"Origin": {origin}, "Content-Type": {ctype}}
			resp := s.requestHeaders(t, "POST", "/api/events", svc, body, h)
			if resp.Header.Get("Access-Control-Allow-Origin") != "" {
				t.Errorf("Origin %s: CORS headers on a refusal", origin)
			}
			wantHTTPError(t, fmt.Sprintf("Origin %s, %s", origin, ctype), resp, http.StatusForbidden, "FORBIDDEN")
		}
	}
	c.expectNothingQueued(t)
	// Nothing was stored: the next event is the project's first.
	h := http.Header{"Origin": {s.URL}}
	status, got := s.doJSONHeaders(t, "POST", "/api/events", svc, body, h)
	if status != http.StatusAccepted || got["seq"] != float64(1) {
		t.Fatalf("same-origin publish: %d %v, want 202 seq 1", status, got)
	}
	c.expectEvent(t, "p1", 1)
}

// The API takes the token from the Authorization header only, and a body
// only as JSON.
func TestAPITokenHeaderAndJSONOnly(t *testing.T) {
	t.Parallel()
	s, c, svc := apiServer(t)
	admin := s.token(t, auth.Claims{UserID: "ops", Role: auth.RoleAdmin}, time.Hour)
	body := `{"projectId":"p1","event":"story_uploaded","data":{}}`

	resp := s.request(t, "POST", "/api/events?token="+svc, "", body)
	b := wantHTTPError(t, "publish with ?token=", resp, http.StatusUnauthorized, "UNAUTHORIZED")
	if e, _ := b["error"].(map[string]any); !strings.Contains(fmt.Sprint(e["message"]), "Authorization header") {
		t.Errorf("?token= refusal %v does not say to use the Authorization header", e["message"])
	}
	wantHTTPError(t, "stats with ?token=", s.request(t, "GET", "/api/websocket/stats?token="+admin, "", nil), http.StatusUnauthorized, "UNAUTHORIZED")
	wantHTTPError(t, "stats with ?token= and a header", s.request(t, "GET", "/api/websocket/stats?token="+admin, admin, nil), http.StatusUnauthorized, "UNAUTHORIZED")

	for _, ctype := range []string{"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b", ""} {
		resp := s.requestHeaders(t, "POST", "/api/events", svc, body, http.Header{"Content-Type": {ctype}})
		wantHTTPError(t, "Content-Type "+ctype, resp, http.StatusUnsupportedMediaType, "UNSUPPORTED_MEDIA_TYPE")
	}
	c.expectNothingQueued(t)
	status, got := s.doJSONHeaders(t, "POST", "/api/events", svc, body, http.Header{"Content-Type": {"application/json; charset=utf-8"}})
	if status != http.StatusAccepted || got["seq"] != float64(1) {
		t.Fatalf("JSON with a charset: %d %v, want 202 seq 1", status, got)
	}
	c.expectEvent(t, "p1", 1)
	if status, _ := s.getJSON(t, "/api/websocket/stats", admin); status != http.StatusOK {
		t.Errorf("stats with the header: %d", status)
	}
}

// A body over the limit gets 413 whether its size was declared or not
// (chunked).
func TestAPIChunkedBodyTooLarge(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	big := `{"projectId":"p1","event":"story_uploaded","data":{"x":"` + strings.Repeat("x", 600<<10) + `"}}`
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", s.URL+"/api/events", strings.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength, req.TransferEncoding = -1, []string{"chunked"} // no Content-Length
	req.Header.Set("Authorization", "Bearer "+s.serviceToken(t))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	validateResponse(t, "POST", "/api/events", resp, cancel)
	wantHTTPError(t, "600 KiB chunked body", resp, http.StatusRequestEntityTooLarge, "INVALID_MESSAGE")
	if seq := publish(t, s, s.serviceToken(t), "p1", "story_uploaded", map[string]any{}); seq != 1 {
		t.Errorf("seq %d after the refused body, want 1", seq)
	}
}

// A user-targeted event may not take one of the server's own names; a
// name of its own reaches the user.
func TestAPIUserEventServerOwnedNames(t *testing.T) {
	t.Parallel()
	s, c, svc := apiServer(t)
	for _, name := range []string{"story_uploaded", "authenticated", "joined_project", "left_project", "pong", "error",
		"server_shutdown", "auth", "join_project", "leave_project", "ping", "typing_start", "typing_stop",
		"user_online", "user_offline"} {
		resp := s.request(t, "POST", "/api/events", svc, map[string]any{"userId": "u1", "event": name, "data": map[string]any{}})
		wantHTTPError(t, "user event "+name, resp, http.StatusBadRequest, "INVALID_MESSAGE")
	}
	c.expectNothingQueued(t)
	if status, body := s.doJSON(t, "POST", "/api/events", svc, map[string]any{"userId": "u1", "event": "export_done", "data": map[string]any{}}); status != http.StatusAccepted {
		t.Fatalf("export_done: %d %v", status, body)
	}
	c.expect(t, "export_done")
}

// With METRICS_TOKEN, /metrics needs it as a bearer token; it is never
// logged.
func TestAPIMetricsToken(t *testing.T) {
	t.Parallel()
	const secret = "metrics-5ecret-for-the-test"
	s := startServer(t, "METRICS_TOKEN="+secret, "LOG_LEVEL=debug")
	for _, tc := range []struct{ name, path, token string }{
		{"no token", "/metrics", ""},
		{"wrong token", "/metrics", "not-it"},
		{"a user token", "/metrics", s.userToken(t, "u1")},
		{"in the URL", "/metrics?token=" + secret, ""},
	} {
		resp := s.request(t, "GET", tc.path, tc.token, nil)
		wantHTTPError(t, tc.name, resp, http.StatusUnauthorized, "UNAUTHORIZED")
	}
	resp := s.request(t, "GET", "/metrics", secret, nil)
	body := string(readBody(t, resp))
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "\nsagapush_unauthenticated_connections 0") {
		t.Fatalf("/metrics with the token: %d", resp.StatusCode)
	}
	if strings.Contains(s.stderr.String(), secret) {
		t.Error("the server logged METRICS_TOKEN")
	}
}

// WebSockets without an accepted token yet are counted apart from the
// hub's connections: in stats and in a gauge.
func TestAPIUnauthenticatedCounted(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	admin := s.token(t, auth.Claims{UserID: "ops", Role: auth.RoleAdmin}, time.Hour)
	counts := func() (unauth, total float64, metric float64) {
		t.Helper()
		status, body := s.getJSON(t, "/api/websocket/stats", admin)
		d, _ := body["data"].(map[string]any)
		if status != http.StatusOK || d == nil {
			t.Fatalf("stats: %d %v", status, body)
		}
		u, ok := d["unauthenticated"].(float64)
		if !ok {
			t.Fatalf("stats data %v has no unauthenticated count", d)
		}
		return u, d["totalConnections"].(float64), s.metric(t, "sagapush_unauthenticated_connections")
	}
	want := func(unauth, total float64) {
		t.Helper()
		eventually(t, waitTimeout, fmt.Sprintf("%v unauthenticated, %v connections", unauth, total), func() bool {
			u, tot, m := counts()
			return u == unauth && tot == total && m == unauth
		})
	}
	want(0, 0)
	a := dialWS(t, s, "", withoutToken(), named("a"))
	b := dialWS(t, s, "", withoutToken(), named("b"))
	dialWS(t, s, s.userToken(t, "u1"), named("with a token")).expectNothingQueued(t)
	want(2, 1)
	a.authenticate(t, s.userToken(t, "u2"))
	want(1, 2)
	b.Conn.Close(websocket.StatusNormalClosure, "bye")
	want(0, 2)
}
