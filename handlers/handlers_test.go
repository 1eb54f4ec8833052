package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/saga-family/sagapush/docs"
	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/protocol"
)

// Tokens the fake authenticator knows.
const (
	adminToken   = "admin-token"
	serviceToken = "service-token"
	userToken    = "user-token"
	expiredToken = "expired-token"
	// uncheckedToken stands for a token whose user cannot be looked up now
	// (database down).
	uncheckedToken = "unchecked-token"
)

type fakeAuth struct{}

func (fakeAuth) Authenticate(_ context.Context, token string) (*hub.User, time.Time, *protocol.Error) {
	switch token {
	case "":
		return nil, time.Time{}, &protocol.Error{Code: protocol.CodeUnauthorized, Message: "missing token"}
	case adminToken:
		return &hub.User{ID: "ops", Role: "admin"}, time.Time{}, nil
	case serviceToken:
		return &hub.User{ID: "backend", Role: "service"}, time.Time{}, nil
	case userToken:
		return &hub.User{ID: "u1", Projects: []string{"p1"}}, time.Time{}, nil
	case expiredToken:
		return nil, time.Time{}, &protocol.Error{Code: protocol.CodeTokenExpired, Message: "token expired"}
	case uncheckedToken:
		return nil, time.Time{}, &protocol.Error{Code: protocol.CodeInternalError, Message: "cannot check the user now"}
	}
	return nil, time.Time{}, &protocol.Error{Code: protocol.CodeUnauthorized, Message: "invalid token"}
}

// tokenCase is a request's token and the answer it gets.
type tokenCase struct {
	name, token   string
	status        int
	code, message string
}

// tokenRefusals are fakeAuth's refusals, which every route behind a token
// answers alike.
var tokenRefusals = []tokenCase{
	{"no token", "", http.StatusUnauthorized, "UNAUTHORIZED", "missing token"},
	{"bad token", "forged", http.StatusUnauthorized, "UNAUTHORIZED", "invalid token"},
	{"expired token", expiredToken, http.StatusUnauthorized, "TOKEN_EXPIRED", "token expired"},
	{"user cannot be checked", uncheckedToken, http.StatusServiceUnavailable, "INTERNAL_ERROR", "cannot check the user now"},
}

type fakeStats hub.Stats

func (f fakeStats) Stats() hub.Stats { return hub.Stats(f) }

type fakeHealth struct{ err error }

func (f fakeHealth) Healthy(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		return errors.New("health check without a deadline")
	}
	return f.err
}

// sent is one call to a fake Publisher or UserEvents.
type sent struct {
	target, name, data string
}

// fakeEvents is the store's Publisher and the hub's UserEvents: it records
// what it was given and fails with err.
type fakeEvents struct {
	mu   sync.Mutex
	seq  int64
	sent []sent
	err  error
}

func (f *fakeEvents) Publish(_ context.Context, projectID, name string, data json.RawMessage) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return 0, f.err
	}
	f.seq++
	f.sent = append(f.sent, sent{projectID, name, string(data)})
	return f.seq, nil
}

func (f *fakeEvents) UserEvent(_ context.Context, userID, name string, data json.RawMessage) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.sent = append(f.sent, sent{userID, name, string(data)})
	return nil
}

func (f *fakeEvents) calls() []sent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sent(nil), f.sent...)
}

// testServer is New with fakes for every dependency; edit changes the
// Config before New.
func testServer(t *testing.T, edit func(*Config)) http.Handler {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "sagapush_test_total", Help: "a counter of the test"}))
	cfg := Config{
		Auth:       fakeAuth{},
		Stats:      fakeStats{},
		Publisher:  &fakeEvents{},
		UserEvents: &fakeEvents{},
		WS:         http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ws") }),
		Gatherer:   reg,
		Web: fstest.MapFS{
			"index.html": {Data: []byte("<!doctype html><title>demo</title>")},
			"client.js":  {Data: []byte("export class SagaClient {}")},
		},
	}
	if edit != nil {
		edit(&cfg)
	}
	return New(cfg)
}

// do serves one request: a bearer token unless token is "", a body unless
// body is "".
func do(t *testing.T, h http.Handler, method, target, token, body string) *httptest.ResponseRecorder {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, r)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// wantError checks an error answer: the status and the contract's body,
// {"error":{"code","message"}} and nothing else. An empty message matches
// any non-empty one.
func wantError(t *testing.T, rec *httptest.ResponseRecorder, status int, code, message string) {
	t.Helper()
	if rec.Code != status {
		t.Errorf("status %d, want %d (body %s)", rec.Code, status, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q, want JSON", ct)
	}
	var body map[string]map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || len(body) != 1 || len(body["error"]) != 2 {
		t.Fatalf("body %s: want exactly {\"error\":{\"code\",\"message\"}}", rec.Body)
	}
	e := body["error"]
	if e["code"] != code {
		t.Errorf("code %v, want %s (body %s)", e["code"], code, rec.Body)
	}
	if m, _ := e["message"].(string); m == "" || (message != "" && m != message) {
		t.Errorf("message %q, want %q", m, message)
	}
}

func decode(t *testing.T, rec *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
		t.Fatalf("body %s: %v", rec.Body, err)
	}
	return m
}

func TestNotFound(t *testing.T) {
	h := testServer(t, nil)
	for _, path := range []string{"/no-such-file", "/api/no-such-route", "/api/websocket"} {
		rec := do(t, h, "GET", path, "", "")
		wantError(t, rec, http.StatusNotFound, "NOT_FOUND", "Not Found")
	}
	// Without a Web file system the demo page is not routed at all.
	h = testServer(t, func(c *Config) { c.Web = nil })
	wantError(t, do(t, h, "GET", "/", "", ""), http.StatusNotFound, "NOT_FOUND", "Not Found")
}

func TestNotFoundBodyExact(t *testing.T) {
	rec := do(t, testServer(t, nil), "GET", "/nope", "", "")
	if got, want := rec.Body.String(), `{"error":{"code":"NOT_FOUND","message":"Not Found"}}`+"\n"; got != want {
		t.Errorf("body %q, want %q", got, want)
	}
}

func TestMethodNotAllowed(t *testing.T) {
	rec := do(t, testServer(t, nil), "DELETE", "/metrics", "", "")
	wantError(t, rec, http.StatusNotFound, "NOT_FOUND", "no such route for this method")
}

func TestErrorHandler(t *testing.T) {
	for _, tc := range []struct {
		err           error
		status        int
		code, message string
	}{
		{errors.New("secret detail"), 500, "INTERNAL_ERROR", "internal error"},
		{badRequest("bad"), 400, "INVALID_MESSAGE", "bad"},
		{newError(503, "INTERNAL_ERROR", "later"), 503, "INTERNAL_ERROR", "later"},
		{fmt.Errorf("publishing: %w", badRequest("wrapped")), 400, "INVALID_MESSAGE", "wrapped"},
		{echo.ErrUnauthorized, 401, "UNAUTHORIZED", "Unauthorized"},
		{echo.ErrForbidden, 403, "FORBIDDEN", "Forbidden"},
		{echo.ErrNotFound, 404, "NOT_FOUND", "Not Found"},
		{echo.ErrStatusRequestEntityTooLarge, 413, "INVALID_MESSAGE", "Request Entity Too Large"},
		{echo.NewHTTPError(400, map[string]string{"not": "a string"}), 400, "INVALID_MESSAGE", "Bad Request"},
		{echo.ErrBadGateway, 502, "INTERNAL_ERROR", "Bad Gateway"},
	} {
		e := asAPIError(tc.err)
		if e.status != tc.status || e.err.Code != tc.code || e.err.Message != tc.message {
			t.Errorf("%v: got %d %+v, want %d %s %q", tc.err, e.status, e.err, tc.status, tc.code, tc.message)
		}
		if want := tc.code + ": " + tc.message; e.Error() != want {
			t.Errorf("%v: Error() %q, want %q", tc.err, e.Error(), want)
		}
	}
}

// An error after the answer has begun writes nothing more.
func TestErrorAfterCommit(t *testing.T) {
	e := New(Config{WS: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})})
	e.GET("/half", func(c echo.Context) error {
		c.Response().WriteHeader(http.StatusOK)
		io.WriteString(c.Response(), "partial")
		return errors.New("broke midway")
	})
	rec := do(t, e, "GET", "/half", "", "")
	if rec.Code != http.StatusOK || rec.Body.String() != "partial" {
		t.Errorf("got %d %q, want 200 %q alone", rec.Code, rec.Body, "partial")
	}
}

func TestMetrics(t *testing.T) {
	rec := do(t, testServer(t, nil), "GET", "/metrics", "", "")
	if rec.Code != http.StatusOK || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	if !strings.Contains(rec.Body.String(), "\nsagapush_test_total 0") {
		t.Errorf("/metrics lacks the registry's counter:\n%s", rec.Body)
	}
}

func TestWebFiles(t *testing.T) {
	h := testServer(t, nil)
	for _, f := range []struct{ path, ctype, body string }{
		{"/", "text/html; charset=utf-8", "<!doctype html><title>demo</title>"},
		{"/client.js", "text/javascript; charset=utf-8", "export class SagaClient {}"},
	} {
		rec := do(t, h, "GET", f.path, "", "")
		if rec.Code != http.StatusOK || rec.Body.String() != f.body {
			t.Errorf("GET %s: %d %q", f.path, rec.Code, rec.Body)
		}
		if ct := rec.Header().Get("Content-Type"); ct != f.ctype {
			t.Errorf("GET %s: Content-Type %q, want %q", f.path, ct, f.ctype)
		}
		if cc := rec.Header().Get("Cache-Control"); cc != "no-cache" {
			t.Errorf("GET %s: Cache-Control %q, want no-cache", f.path, cc)
		}
	}
	// A routed file missing from the file system is a 404 in the contract's shape.
	wantError(t, do(t, h, "GET", "/client.d.ts", "", ""), http.StatusNotFound, "NOT_FOUND", "Not Found")
}

func TestAPIDocuments(t *testing.T) {
	h := testServer(t, nil)
	for path, want := range map[string][]byte{"/api/asyncapi.yaml": docs.AsyncAPI, "/api/openapi.yaml": docs.OpenAPI} {
		rec := do(t, h, "GET", path, "", "")
		if rec.Code != http.StatusOK || !bytes.Equal(rec.Body.Bytes(), want) || len(want) == 0 {
			t.Errorf("GET %s: %d, %d bytes, want 200 and docs/ (%d bytes)", path, rec.Code, rec.Body.Len(), len(want))
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/yaml" {
			t.Errorf("GET %s: Content-Type %q, want application/yaml", path, ct)
		}
	}
}

func TestTransportsMounted(t *testing.T) {
	sse := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "sse") })
	h := testServer(t, func(c *Config) { c.SSE = sse })
	for path, want := range map[string]string{"/ws": "ws", "/sse": "sse"} {
		if rec := do(t, h, "GET", path, "", ""); rec.Code != http.StatusOK || rec.Body.String() != want {
			t.Errorf("GET %s: %d %q, want the transport's %q", path, rec.Code, rec.Body, want)
		}
	}
	// No SSE transport, no /sse route.
	wantError(t, do(t, testServer(t, nil), "GET", "/sse", "", ""), http.StatusNotFound, "NOT_FOUND", "")
}

func TestCORS(t *testing.T) {
	h := testServer(t, func(c *Config) { c.Origins = []string{"https://app.example.com"} })
	for origin, want := range map[string]string{"https://app.example.com": "https://app.example.com", "https://evil.example.com": ""} {
		req := httptest.NewRequest("OPTIONS", "/api/events", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if got := rec.Header().Get("Access-Control-Allow-Origin"); got != want {
			t.Errorf("preflight from %s: Allow-Origin %q, want %q", origin, got, want)
		}
	}
}

func TestProbes(t *testing.T) {
	var notReady error
	e := testServer(t, func(c *Config) { c.Ready = func(context.Context) error { return notReady } })
	for _, tc := range []struct {
		path, err string
		status    int
		body      string
	}{
		{"/healthz", "", http.StatusOK, `{"status":"ok"}`},
		{"/readyz", "", http.StatusOK, `{"status":"ready"}`},
		{"/readyz", "shutting down", http.StatusServiceUnavailable, `{"status":"unavailable","reason":"shutting down"}`},
		{"/healthz", "shutting down", http.StatusOK, `{"status":"ok"}`},
	} {
		notReady = nil
		if tc.err != "" {
			notReady = errors.New(tc.err)
		}
		rec := do(t, e, "GET", tc.path, "", "")
		if rec.Code != tc.status || strings.TrimSpace(rec.Body.String()) != tc.body {
			t.Errorf("%s (%q): %d %s, want %d %s", tc.path, tc.err, rec.Code, rec.Body, tc.status, tc.body)
		}
	}
}
