package e2e

// Tests of the API documents themselves: they load, the server serves them
// as they are, they accept the examples of docs/protocol.md, and they
// reject what lies outside them, both directly and through the test
// clients (a wsClient or an SSE stream meeting such a message fails its
// test; the HTTP helpers likewise).

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"
	"github.com/getkin/kin-openapi/openapi3"

	"github.com/saga-family/sagapush/docs"
)

func mustSpec(t *testing.T) *apiSpec {
	t.Helper()
	s, err := spec()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAPIDocumentsLoad(t *testing.T) {
	s := mustSpec(t)
	for _, name := range []string{
		"authenticated", "joined_project", "left_project", "pong", "error", "server_shutdown",
		"typing_start", "typing_stop", "user_online", "user_offline", "user_event",
		"story_uploaded", "story_processing", "story_processed", "transcript_updated",
		"interaction_added", "interaction_updated", "export_started", "export_progress",
		"export_ready", "export_failed",
	} {
		if s.ws[name] == nil {
			t.Errorf("asyncapi.yaml: the WebSocket send operation has no %s message", name)
		}
		if s.sse[name] == nil && name != "authenticated" && name != "pong" {
			t.Errorf("asyncapi.yaml: the SSE send operation has no %s message", name)
		}
	}
	for _, name := range []string{"authenticated", "pong"} {
		if s.sse[name] != nil {
			t.Errorf("asyncapi.yaml: SSE never carries %s", name)
		}
	}
}

// openapi.yaml is a valid OpenAPI 3.1 document (kin-openapi's structural
// checks: required fields, unique operationIds, resolvable $refs...).
func TestAPIDocumentsOpenAPIValid(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(docs.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("docs/openapi.yaml: %v", err)
	}
}

// asyncapi.yaml's operations are well formed: each has a known action and
// a channel, and its messages are that channel's (AsyncAPI 3.0 requires it),
// each with a payload.
func TestAPIDocumentsAsyncAPIOperations(t *testing.T) {
	doc, err := yamlToJSON(docs.AsyncAPI)
	if err != nil {
		t.Fatal(err)
	}
	ops, _ := lookup(doc, "/operations")
	for name, op := range ops.(map[string]any) {
		if a, _ := lookup(op, "/action"); a != "send" && a != "receive" {
			t.Errorf("operation %s: action %v", name, a)
		}
		ch, _ := lookup(op, "/channel/$ref")
		chRef, _ := ch.(string)
		if _, _, err := resolve(doc, map[string]any{"$ref": chRef}); err != nil || chRef == "" {
			t.Errorf("operation %s: channel %q: %v", name, chRef, err)
		}
		msgs, _ := lookup(op, "/messages")
		for _, m := range msgs.([]any) {
			ref, _ := lookup(m, "/$ref")
			r, _ := ref.(string)
			if !strings.HasPrefix(r, chRef+"/messages/") {
				t.Errorf("operation %s: message %q is not one of its channel %q", name, r, chRef)
			}
			ptr, msg, err := resolve(doc, m)
			if err != nil {
				t.Errorf("operation %s: %v", name, err)
				continue
			}
			if _, ok := lookup(msg, "/payload"); !ok {
				t.Errorf("message %s has no payload", ptr)
			}
		}
	}
}

// The examples of docs/protocol.md sections 4.3, 5, 6 and 7 are valid.
func TestAPIDocumentsAcceptExamples(t *testing.T) {
	s := mustSpec(t)
	for _, m := range []string{
		`{"event":"authenticated","data":{"userId":"u1","expiresAt":1796395474000},"ack":5}`,
		`{"event":"authenticated","data":{"userId":"u1","expiresAt":null}}`,
		`{"event":"joined_project","data":{"projectId":"p1","role":"member","seq":2,"recovered":true,"online":[{"userId":"u1","userName":"Ada"},{"userId":"u2","userName":null}]},"ack":1}`,
		`{"event":"joined_project","data":{"projectId":"p1","role":"facilitator","seq":0}}`,
		`{"event":"user_online","projectId":"p1","data":{"userId":"u3","userName":"Bea"}}`,
		`{"event":"user_offline","projectId":"p1","data":{"userId":"u2"}}`,
		`{"event":"left_project","data":{"projectId":"p2","reason":"requested"},"ack":3}`,
		`{"event":"left_project","data":{"projectId":"p1","reason":"access_revoked"}}`,
		`{"event":"pong","data":{"ts":1796391902567},"ack":4.5}`,
		`{"event":"typing_start","projectId":"p1","data":{"storyId":"s1","userId":"u2","userName":"Ada"}}`,
		`{"event":"typing_stop","projectId":"p1","data":{"storyId":"","userId":"u2","userName":null}}`,
		`{"event":"story_uploaded","projectId":"p1","seq":1,"ts":1796391882179,"data":{"story":{"id":"s1","projectId":"p1","title":"First day of school","status":"processing","audioUrl":null,"createdAt":1796391881980}}}`,
		`{"event":"transcript_updated","projectId":"p1","seq":2,"ts":1796391882198,"data":{"storyId":"s1","transcript":null}}`,
		`{"event":"interaction_added","projectId":"p1","seq":42,"ts":1796391882179,"data":{"interaction":{"id":"i1","storyId":"s1","facilitatorId":"f1","type":"followup","content":"What was your teacher's name?","answeredAt":null,"createdAt":1796391881980},"storyId":"s1"}}`,
		`{"event":"export_ready","projectId":"p1","seq":3,"ts":1,"data":{"exportId":"e1","status":"ready","downloadUrl":"https://x/y","expiresAt":"2026-12-04T13:44:34Z"}}`,
		`{"event":"export_progress","projectId":"p1","seq":4,"ts":1,"data":{"anything":"the backend sent","n":[1,2]}}`,
		`{"event":"notification","ts":1796391919212,"data":{"text":"Your export is ready"}}`,
		`{"event":"error","data":{"code":"PROJECT_ACCESS_DENIED","message":"you may not access this project","projectId":"p3"},"ack":6}`,
		`{"event":"error","data":{"code":"RATE_LIMIT_EXCEEDED","message":"too many events","retryAfterMs":600},"ack":101}`,
		`{"event":"server_shutdown","data":{"message":"server shutting down","reconnectAfterMs":2000}}`,
	} {
		if err := s.validateMessage("ws", []byte(m)); err != nil {
			t.Errorf("ws: %v", err)
		}
		if strings.Contains(m, `"authenticated"`) || strings.Contains(m, `"pong"`) {
			continue
		}
		if err := s.validateMessage("sse", []byte(m)); err != nil {
			t.Errorf("sse: %v", err)
		}
	}
}

// Messages outside docs/asyncapi.yaml fail validation.
func TestAPIDocumentsRejectMessages(t *testing.T) {
	s := mustSpec(t)
	for _, tc := range []struct{ transport, why, msg string }{
		{"ws", "joined_project without seq", `{"event":"joined_project","data":{"projectId":"p1","role":"member"}}`},
		{"ws", "joined_project with a negative seq", `{"event":"joined_project","data":{"projectId":"p1","role":"member","seq":-1}}`},
		{"ws", "joined_project with an unknown role", `{"event":"joined_project","data":{"projectId":"p1","role":"owner","seq":1}}`},
		{"ws", "an error with an unknown code", `{"event":"error","data":{"code":"OOPS","message":"m"}}`},
		{"ws", "an error without a message", `{"event":"error","data":{"code":"NOT_IN_PROJECT"}}`},
		{"sse", "user_online without userId", `{"event":"user_online","projectId":"p1","data":{"userName":"Ada"}}`},
		{"ws", "user_online without projectId", `{"event":"user_online","data":{"userId":"u1","userName":"Ada"}}`},
		{"ws", "user_online with userName missing", `{"event":"user_online","projectId":"p1","data":{"userId":"u1"}}`},
		{"ws", "a domain event without seq", `{"event":"story_uploaded","projectId":"p1","ts":1,"data":{}}`},
		{"sse", "a domain event with seq 0", `{"event":"story_uploaded","projectId":"p1","seq":0,"ts":1,"data":{}}`},
		{"ws", "a domain event whose data is not an object", `{"event":"export_progress","projectId":"p1","seq":1,"ts":1,"data":[1]}`},
		{"ws", "a trigger field of the wrong type", `{"event":"export_progress","projectId":"p1","seq":1,"ts":1,"data":{"exportId":"e1","progress":"40"}}`},
		{"ws", "a domain event with an invalid projectId", `{"event":"story_uploaded","projectId":"a,b","seq":1,"ts":1,"data":{}}`},
		{"ws", "a user-targeted event with a projectId", `{"event":"notification","projectId":"p1","ts":1,"data":{}}`},
		{"ws", "a user-targeted event without ts", `{"event":"notification","data":{}}`},
		{"ws", "a message without an event", `{"data":{}}`},
		{"sse", "pong on SSE", `{"event":"pong","data":{"ts":1}}`},
		{"ws", "pong with a string ts", `{"event":"pong","data":{"ts":"1"}}`},
		{"ws", "left_project with an unknown reason", `{"event":"left_project","data":{"projectId":"p1","reason":"bored"}}`},
		{"ws", "typing relay without userName", `{"event":"typing_start","projectId":"p1","data":{"storyId":"s1","userId":"u2"}}`},
		{"ws", "an answer with a string ack", `{"event":"pong","data":{"ts":1},"ack":"1"}`},
		{"ws", "authenticated with an extra field", `{"event":"authenticated","data":{"userId":"u1","expiresAt":null,"role":"admin"}}`},
		{"ws", "not an object", `["event"]`},
	} {
		if err := s.validateMessage(tc.transport, []byte(tc.msg)); err == nil {
			t.Errorf("%s: %s passed validation: %s", tc.transport, tc.why, tc.msg)
		}
	}
}

// fakeResponse is a response as the helpers see it.
func fakeResponse(status int, ctype string, h ...string) *http.Response {
	r := &http.Response{StatusCode: status, Header: http.Header{}}
	if ctype != "" {
		r.Header.Set("Content-Type", ctype)
	}
	for i := 0; i+1 < len(h); i += 2 {
		r.Header.Set(h[i], h[i+1])
	}
	return r
}

// HTTP answers outside docs/openapi.yaml fail validation; valid ones pass.
func TestAPIDocumentsRejectResponses(t *testing.T) {
	s := mustSpec(t)
	const js = "application/json"
	health := `{"status":"healthy","connections":12,"projects":3,"users":9,"database":"ok","timestamp":"2026-12-04T13:44:34.198313889Z"}`
	type tc struct {
		method, path string
		resp         *http.Response
		body         string
	}
	valid := []tc{
		{"GET", "/api/websocket/health", fakeResponse(200, js), health},
		{"POST", "/api/tickets", fakeResponse(201, "application/json; charset=utf-8", "Cache-Control", "no-store"), `{"ticket":"q0PN1mK2q0PN1mK2q0PN1mK2q0PN1mK2q0PN1mK2abc","expiresAt":1796395220123}`},
		{"POST", "/api/events", fakeResponse(202, js), `{"projectId":"p1","seq":3}`},
		{"POST", "/api/events", fakeResponse(202, js), `{"userId":"u1"}`},
		{"POST", "/api/events", fakeResponse(415, js), `{"error":{"code":"UNSUPPORTED_MEDIA_TYPE","message":"m"}}`},
		{"GET", "/api/projects/p1/presence?x=1", fakeResponse(200, js), `{"projectId":"p1","online":[{"userId":"u1","userName":null,"connections":0}]}`},
		{"GET", "/ws?token=x", fakeResponse(101, ""), ""},
		{"GET", "/ws", fakeResponse(400, "text/plain; charset=utf-8"), "Bad Request\n"},
		{"GET", "/sse?projects=p1", fakeResponse(200, "text/event-stream", "Cache-Control", "no-cache, no-transform", "X-Accel-Buffering", "no"), ""},
		{"GET", "/nowhere", fakeResponse(404, js), `{"error":{"code":"NOT_FOUND","message":"Not Found"}}`},
		{"GET", "/metrics", fakeResponse(200, "text/plain; version=0.0.4; charset=utf-8"), "x 1\n"},
	}
	for _, c := range valid {
		if err := s.validateHTTP(c.method, c.path, c.resp, []byte(c.body)); err != nil {
			t.Errorf("valid answer refused: %v", err)
		}
	}
	invalid := []struct {
		tc
		why string
	}{
		{tc{"GET", "/api/websocket/health", fakeResponse(200, js), strings.Replace(health, `"database":"ok",`, "", 1)}, "health without database"},
		{tc{"GET", "/api/websocket/health", fakeResponse(200, js), strings.Replace(health, `"ok"`, `"fine"`, 1)}, "health with an unknown database state"},
		{tc{"GET", "/api/websocket/health", fakeResponse(200, "text/plain"), "ok"}, "health as text"},
		{tc{"POST", "/api/tickets", fakeResponse(201, js, "Cache-Control", "no-store"), `{"ticket":"short","expiresAt":1}`}, "a ticket that is not 43 base64url characters"},
		{tc{"POST", "/api/tickets", fakeResponse(201, js), `{"ticket":"q0PN1mK2q0PN1mK2q0PN1mK2q0PN1mK2q0PN1mK2abc","expiresAt":1}`}, "a ticket without Cache-Control: no-store"},
		{tc{"POST", "/api/events", fakeResponse(202, js), `{"projectId":"p1"}`}, "a publish answer without seq"},
		{tc{"POST", "/api/events", fakeResponse(200, js), `{"projectId":"p1","seq":1}`}, "an undocumented status (default: the error shape)"},
		{tc{"POST", "/api/events", fakeResponse(400, js), `{"error":{"code":"BAD","message":"m"}}`}, "an error with an unknown code"},
		{tc{"POST", "/api/events", fakeResponse(400, js), `{"code":"INVALID_MESSAGE","message":"m"}`}, "an error not wrapped in error"},
		{tc{"GET", "/api/projects/p1/presence", fakeResponse(200, js), `{"projectId":"p1","online":[{"userId":"u1","userName":null}]}`}, "presence without connections"},
		{tc{"GET", "/ws", fakeResponse(200, js), `{}`}, "a /ws answer of 200"},
		{tc{"GET", "/sse?projects=p1", fakeResponse(200, "text/event-stream", "Cache-Control", "no-cache"), ""}, "an SSE stream without no-transform"},
		{tc{"GET", "/sse?projects=p1", fakeResponse(200, "text/event-stream", "X-Accel-Buffering", "no"), ""}, "an SSE stream without Cache-Control"},
		{tc{"GET", "/nowhere", fakeResponse(200, js), `{}`}, "an undocumented path answered 200"},
		{tc{"GET", "/api/websocket/stats", fakeResponse(200, js), `{"success":true,"timestamp":"t","data":{}}`}, "stats without its counts"},
	}
	for _, c := range invalid {
		if err := s.validateHTTP(c.method, c.path, c.resp, []byte(c.body)); err == nil {
			t.Errorf("%s passed validation", c.why)
		}
	}
}

// recordTB records what a helper reports instead of failing the test.
type recordTB struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (r *recordTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recordTB) Helper() {}

func (r *recordTB) reported() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errs...)
}

// A message outside the schema that reaches a test client fails its test:
// the WebSocket reader and the SSE parser both validate what they receive.
func TestAPIDocumentsClientsReport(t *testing.T) {
	bad := `{"event":"joined_project","data":{"projectId":"p1","role":"member"}}`
	good := `{"event":"pong","data":{"ts":1}}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.Write(r.Context(), websocket.MessageText, []byte(bad))
		c.Write(r.Context(), websocket.MessageText, []byte(good))
		c.Read(r.Context()) // until the client goes
	}))
	defer srv.Close()
	rec := &recordTB{TB: t}
	fake := &testServer{URL: srv.URL, WSURL: "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"}
	c := dialWS(rec, fake, "", withoutToken())
	c.read(rec)
	c.read(rec)
	if got := rec.reported(); len(got) != 1 || !strings.Contains(got[0], "joined_project") {
		t.Errorf("WebSocket: the invalid message was reported as %q, want one report of it", got)
	}

	stream := "retry: 2000\n\nevent: joined_project\ndata: " + bad + "\n\n" +
		"event: pong\ndata: " + good + "\n\n" +
		"id: p1:1\nevent: story_uploaded\ndata: {\"event\":\"story_uploaded\",\"projectId\":\"p1\",\"seq\":1,\"ts\":1,\"data\":{}}\n\n" +
		"event: story_uploaded\ndata: {\"event\":\"story_uploaded\",\"projectId\":\"p1\",\"seq\":2,\"ts\":1,\"data\":{}}\n\n" +
		"event: error\ndata: {\"event\":\"joined_project\",\"data\":{\"projectId\":\"p1\",\"role\":\"member\",\"seq\":1}}\n\n"
	var errs specErrors
	out := make(chan sseMsg, 16)
	var first string
	if err := sseParse(strings.NewReader(stream), out, &first, nil, true, func(m sseMsg) { errs.add(checkSSEMessage(m)) }); err != io.EOF {
		t.Fatal(err)
	}
	got := errs.take()
	want := []string{"joined_project", "pong", "id:", "error"} // schema, not on SSE, no id, event: line
	if len(got) != len(want) {
		t.Fatalf("SSE: got reports %q, want %d", got, len(want))
	}
	for i, w := range want {
		if !strings.Contains(got[i], w) {
			t.Errorf("SSE report %d %q does not mention %q", i, got[i], w)
		}
	}
}

// The server serves both documents as they are in docs/, public, under the
// API's origin rules.
func TestAPIDocumentsServed(t *testing.T) {
	s := startServer(t)
	for path, want := range map[string][]byte{"/api/asyncapi.yaml": docs.AsyncAPI, "/api/openapi.yaml": docs.OpenAPI} {
		resp := s.request(t, "GET", path, "", nil)
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/yaml" || !bytes.Equal(body, want) {
			t.Errorf("GET %s: %d %q, %d bytes; want 200 application/yaml, the %d bytes of docs/", path, resp.StatusCode, resp.Header.Get("Content-Type"), len(body), len(want))
		}
		status, m := s.doJSONHeaders(t, "GET", path, "", nil, http.Header{"Origin": {"https://elsewhere.example"}})
		if status != http.StatusForbidden || errCode(m) != "FORBIDDEN" {
			t.Errorf("GET %s from another origin: %d %v, want 403 FORBIDDEN", path, status, m)
		}
	}
}

// errCode is the code of an HTTP error answer.
func errCode(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}
