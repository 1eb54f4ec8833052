package handlers

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// send serves one request to h with the given headers (a body
// unless body is "") and returns the answer.
func send(t *testing.T, h http.Handler, method, target, body string, headers map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

const okEvent = `{"projectId":"p1","event":"story_uploaded","data":{}}`

// The API checks Origin like /ws and /sse do: a cross-origin "simple"
// request (no preflight) is refused before it acts.
func TestAPIOrigin(t *testing.T) {
	for _, tc := range []struct {
		name    string
		origins []string
		origin  string
		status  int
	}{
		{"no Origin", nil, "", http.StatusAccepted},
		{"same origin", nil, "http://example.com", http.StatusAccepted},
		{"cross origin, none listed", nil, "http://evil.example", http.StatusForbidden},
		{"listed", []string{"https://app.example.com"}, "https://app.example.com", http.StatusAccepted},
		{"not listed", []string{"https://app.example.com"}, "http://evil.example", http.StatusForbidden},
		{"opaque origin", nil, "null", http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			events := &fakeEvents{}
			h := testServer(t, func(c *Config) { c.Publisher, c.Origins = events, tc.origins })
			headers := map[string]string{"Authorization": "Bearer " + serviceToken, "Content-Type": "application/json"}
			if tc.origin != "" {
				headers["Origin"] = tc.origin
			}
			rec := send(t, h, "POST", eventsPath, okEvent, headers)
			if tc.status == http.StatusForbidden {
				wantError(t, rec, http.StatusForbidden, "FORBIDDEN", "origin not allowed")
				if rec.Header().Get("Access-Control-Allow-Origin") != "" {
					t.Errorf("refused origin got CORS headers")
				}
				if c := events.calls(); len(c) != 0 {
					t.Errorf("refused origin published %v", c)
				}
				// Every API route, the health and a preflight included.
				wantError(t, send(t, h, "GET", "/api/websocket/health", "", map[string]string{"Origin": tc.origin}), http.StatusForbidden, "FORBIDDEN", "")
				wantError(t, send(t, h, "OPTIONS", eventsPath, "", map[string]string{"Origin": tc.origin, "Access-Control-Request-Method": "POST"}), http.StatusForbidden, "FORBIDDEN", "")
			} else if rec.Code != tc.status {
				t.Errorf("status %d, want %d (%s)", rec.Code, tc.status, rec.Body)
			}
		})
	}
	// The text/plain request that a page elsewhere can send without asking.
	events := &fakeEvents{}
	h := testServer(t, func(c *Config) { c.Publisher = events })
	rec := send(t, h, "POST", eventsPath, okEvent, map[string]string{
		"Origin": "http://evil.example", "Content-Type": "text/plain", "Authorization": "Bearer " + serviceToken,
	})
	wantError(t, rec, http.StatusForbidden, "FORBIDDEN", "origin not allowed")
	if c := events.calls(); len(c) != 0 {
		t.Errorf("cross-origin text/plain request published %v", c)
	}
}

// A listed origin reads the API's error answers too.
func TestAPIErrorsCarryCORS(t *testing.T) {
	h := testServer(t, func(c *Config) { c.Origins = []string{"https://app.example.com"} })
	rec := send(t, h, "POST", eventsPath, okEvent, map[string]string{"Origin": "https://app.example.com", "Content-Type": "text/plain"})
	wantError(t, rec, http.StatusUnsupportedMediaType, "UNSUPPORTED_MEDIA_TYPE", "")
	if got := rec.Header().Get("Access-Control-Allow-Origin"); got != "https://app.example.com" {
		t.Errorf("Allow-Origin %q on the 415", got)
	}
}

func TestAPIMediaType(t *testing.T) {
	events := &fakeEvents{}
	h := testServer(t, func(c *Config) { c.Publisher = events })
	const want = "the body must be application/json"
	for _, tc := range []struct {
		ctype  string
		status int
	}{
		{"application/json", http.StatusAccepted},
		{"application/json; charset=utf-8", http.StatusAccepted},
		{"Application/JSON;charset=UTF-8", http.StatusAccepted},
		{"text/plain", http.StatusUnsupportedMediaType},
		{"text/plain; charset=utf-8", http.StatusUnsupportedMediaType},
		{"application/x-www-form-urlencoded", http.StatusUnsupportedMediaType},
		{"multipart/form-data; boundary=x", http.StatusUnsupportedMediaType},
		{"application/jsonx", http.StatusUnsupportedMediaType},
		{"", http.StatusUnsupportedMediaType},
	} {
		headers := map[string]string{"Authorization": "Bearer " + serviceToken}
		if tc.ctype != "" {
			headers["Content-Type"] = tc.ctype
		}
		rec := send(t, h, "POST", eventsPath, okEvent, headers)
		if tc.status == http.StatusUnsupportedMediaType {
			wantError(t, rec, tc.status, "UNSUPPORTED_MEDIA_TYPE", want)
		} else if rec.Code != tc.status {
			t.Errorf("Content-Type %q: %d, want %d (%s)", tc.ctype, rec.Code, tc.status, rec.Body)
		}
	}
	if c := events.calls(); len(c) != 3 {
		t.Errorf("published %d events, want 3 (the JSON ones)", len(c))
	}
	// A request without a body needs no type.
	if rec := send(t, h, "GET", statsPath, "", map[string]string{"Authorization": "Bearer " + adminToken}); rec.Code != http.StatusOK {
		t.Errorf("GET stats without Content-Type: %d", rec.Code)
	}
}

// The token only ever comes from the Authorization header.
func TestAPITokenFromHeaderOnly(t *testing.T) {
	events := &fakeEvents{}
	h := testServer(t, func(c *Config) { c.Publisher = events })
	jsonType := map[string]string{"Content-Type": "application/json"}
	for _, target := range []string{eventsPath + "?token=" + serviceToken, eventsPath + "?x=1&token="} {
		rec := send(t, h, "POST", target, okEvent, jsonType)
		wantError(t, rec, http.StatusUnauthorized, "UNAUTHORIZED", "")
		if m := decode(t, rec)["error"].(map[string]any)["message"].(string); !strings.Contains(m, "Authorization header") {
			t.Errorf("message %q does not point to the Authorization header", m)
		}
	}
	wantError(t, send(t, h, "GET", "/api/websocket/health?token=x", "", nil), http.StatusUnauthorized, "UNAUTHORIZED", "")
	if c := events.calls(); len(c) != 0 {
		t.Errorf("tokens in the URL published %v", c)
	}
}

// A chunked body (no Content-Length) over the limit gets 413 like a
// declared one.
func TestPublishChunkedTooLarge(t *testing.T) {
	events := &fakeEvents{}
	h := publishServer(t, events)
	body := `{"projectId":"p1","event":"story_uploaded","data":{"x":"` + strings.Repeat("x", 600<<10) + `"}}`
	for _, b := range []string{body, okEvent + strings.Repeat(" ", 600<<10)} {
		req := httptest.NewRequest("POST", eventsPath, strings.NewReader(b))
		req.ContentLength = -1
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+serviceToken)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		wantError(t, rec, http.StatusRequestEntityTooLarge, "INVALID_MESSAGE", "Request Entity Too Large")
	}
	if c := events.calls(); len(c) != 0 {
		t.Errorf("oversized chunked bodies published %v", c)
	}
}

// A user-targeted event may not take a name of the server's own.
func TestPublishUserEventServerOwnedName(t *testing.T) {
	events := &fakeEvents{}
	h := publishServer(t, events)
	for _, name := range []string{"story_uploaded", "authenticated", "joined_project", "left_project", "pong", "error",
		"server_shutdown", "auth", "join_project", "leave_project", "ping", "typing_start", "typing_stop",
		"user_online", "user_offline"} {
		rec := do(t, h, "POST", eventsPath, serviceToken, `{"userId":"u1","event":"`+name+`","data":{}}`)
		wantError(t, rec, http.StatusBadRequest, "INVALID_MESSAGE", "event name "+name+" is the server's own: a user-targeted event needs another")
	}
	if c := events.calls(); len(c) != 0 {
		t.Errorf("server-owned names relayed %v", c)
	}
}

func TestMetricsToken(t *testing.T) {
	const secret = "metrics-secret"
	h := testServer(t, func(c *Config) { c.MetricsToken = secret })
	for _, tc := range []struct {
		name, target, auth string
	}{
		{"no token", "/metrics", ""},
		{"wrong token", "/metrics", "Bearer nope"},
		{"a prefix", "/metrics", "Bearer " + secret[:5]},
		{"another scheme", "/metrics", "Basic " + secret},
		{"in the URL", "/metrics?token=" + secret, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := send(t, h, "GET", tc.target, "", map[string]string{"Authorization": tc.auth})
			wantError(t, rec, http.StatusUnauthorized, "UNAUTHORIZED", "/metrics needs Authorization: Bearer <METRICS_TOKEN>")
			if strings.Contains(rec.Body.String(), "sagapush_") {
				t.Errorf("metrics shown without the token")
			}
		})
	}
	for _, auth := range []string{"Bearer " + secret, "bearer " + secret} {
		rec := send(t, h, "GET", "/metrics", "", map[string]string{"Authorization": auth})
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "sagapush_test_total") {
			t.Errorf("%q: %d, want the metrics", auth, rec.Code)
		}
	}
}
