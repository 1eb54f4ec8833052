package handlers

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
)

const eventsPath = "/api/events"

// publishServer is a test server whose store and hub are events.
func publishServer(t *testing.T, events *fakeEvents) http.Handler {
	return testServer(t, func(c *Config) { c.Publisher, c.UserEvents = events, events })
}

func TestPublishAuth(t *testing.T) {
	events := &fakeEvents{}
	h := publishServer(t, events)
	ok := `{"projectId":"p1","event":"story_uploaded","data":{}}`
	for _, tc := range []struct {
		name, token string
		status      int
		code        string
	}{
		{"no token", "", http.StatusUnauthorized, "UNAUTHORIZED"},
		{"expired token", expiredToken, http.StatusUnauthorized, "TOKEN_EXPIRED"},
		{"user cannot be checked", uncheckedToken, http.StatusServiceUnavailable, "INTERNAL_ERROR"},
		{"user role", userToken, http.StatusForbidden, "FORBIDDEN"},
		{"admin role", adminToken, http.StatusForbidden, "FORBIDDEN"}, // service only
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantError(t, do(t, h, "POST", eventsPath, tc.token, ok), tc.status, tc.code, "")
		})
	}
	if c := events.calls(); len(c) != 0 {
		t.Errorf("refused requests published %v", c)
	}
}

func TestPublishBadBody(t *testing.T) {
	events := &fakeEvents{}
	h := publishServer(t, events)
	const badObject = "body must be a JSON object {projectId|userId, event, data}"
	for _, tc := range []struct{ name, body, message string }{
		{"empty body", "", badObject},
		{"not JSON", "story_uploaded please", badObject},
		{"JSON array", `[{"projectId":"p1","event":"story_uploaded","data":{}}]`, badObject},
		{"trailing garbage", `{"projectId":"p1","event":"story_uploaded","data":{}} and more`, badObject},
		{"two objects", `{"projectId":"p1","event":"story_uploaded","data":{}}{}`, badObject},
		{"projectId not a string", `{"projectId":5,"event":"story_uploaded","data":{}}`, badObject},
		{"no data", `{"projectId":"p1","event":"story_uploaded"}`, "data must be a JSON object"},
		{"null data", `{"projectId":"p1","event":"story_uploaded","data":null}`, "data must be a JSON object"},
		{"array data", `{"projectId":"p1","event":"story_uploaded","data":[1]}`, "data must be a JSON object"},
		{"string data", `{"projectId":"p1","event":"story_uploaded","data":"x"}`, "data must be a JSON object"},
		{"no target", `{"event":"story_uploaded","data":{}}`, "projectId or userId is required"},
		{"both targets", `{"projectId":"p1","userId":"u1","event":"story_uploaded","data":{}}`, "give projectId or userId, not both"},
		{"unknown event", `{"projectId":"p1","event":"story_deleted","data":{}}`, "unknown event: it must be one of docs/protocol.md section 6"},
		{"client event", `{"projectId":"p1","event":"join_project","data":{}}`, "unknown event: it must be one of docs/protocol.md section 6"},
		{"no event", `{"projectId":"p1","data":{}}`, "unknown event: it must be one of docs/protocol.md section 6"},
		{"bad projectId", `{"projectId":"a:b","event":"story_uploaded","data":{}}`, "invalid projectId"},
		{"user event without a name", `{"userId":"u1","event":"","data":{}}`, "invalid event name"},
		{"user event name too long", `{"userId":"u1","event":"` + strings.Repeat("e", 65) + `","data":{}}`, "invalid event name"},
		{"user event bad name", `{"userId":"u1","event":"a,b","data":{}}`, "invalid event name"},
		{"bad userId", `{"userId":"a\u0001b","event":"notification","data":{}}`, "invalid userId"},
		{"user event string data", `{"userId":"u1","event":"notification","data":"x"}`, "data must be a JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantError(t, do(t, h, "POST", eventsPath, serviceToken, tc.body), http.StatusBadRequest, "INVALID_MESSAGE", tc.message)
		})
	}
	if c := events.calls(); len(c) != 0 {
		t.Errorf("bad bodies published %v", c)
	}
}

// A body over 512K (512,000 bytes) is refused before anything else, the
// token included; one of exactly 512,000 bytes is taken.
func TestPublishTooLarge(t *testing.T) {
	events := &fakeEvents{}
	h := publishServer(t, events)
	body := func(size int) string {
		const head, tail = `{"projectId":"p1","event":"story_uploaded","data":{"x":"`, `"}}`
		return head + strings.Repeat("x", size-len(head)-len(tail)) + tail
	}
	for _, token := range []string{serviceToken, ""} {
		wantError(t, do(t, h, "POST", eventsPath, token, body(512_001)), http.StatusRequestEntityTooLarge, "INVALID_MESSAGE", "Request Entity Too Large")
	}
	if c := events.calls(); len(c) != 0 {
		t.Errorf("oversized bodies published %v", c)
	}
	if rec := do(t, h, "POST", eventsPath, serviceToken, body(512_000)); rec.Code != http.StatusAccepted {
		t.Errorf("512,000-byte body: %d, want 202", rec.Code)
	}
}

func TestPublishProjectEvent(t *testing.T) {
	events := &fakeEvents{}
	h := publishServer(t, events)
	for want := 1.0; want <= 2; want++ {
		rec := do(t, h, "POST", eventsPath, serviceToken, "{\"projectId\":\"p1\",\"event\":\"story_uploaded\",\n \"data\": {\"story\": {\"id\": \"s1\"},\n \"n\": 1}}")
		if rec.Code != http.StatusAccepted {
			t.Fatalf("publish: %d %s", rec.Code, rec.Body)
		}
		if b := decode(t, rec); b["projectId"] != "p1" || b["seq"] != want || len(b) != 2 {
			t.Errorf("publish: %v, want projectId p1, seq %v", b, want)
		}
	}
	// The data is stored compact: one line for an SSE data field.
	want := sent{"p1", "story_uploaded", `{"story":{"id":"s1"},"n":1}`}
	if c := events.calls(); len(c) != 2 || c[0] != want || c[1] != want {
		t.Errorf("published %v, want twice %v", c, want)
	}
}

func TestPublishUserEvent(t *testing.T) {
	events := &fakeEvents{}
	h := publishServer(t, events)
	rec := do(t, h, "POST", eventsPath, serviceToken, `{"userId":"u1","event":"notification","data":{ "message": "ready" }}`)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("user event: %d %s", rec.Code, rec.Body)
	}
	if b := decode(t, rec); b["userId"] != "u1" || len(b) != 1 {
		t.Errorf("user event: %v, want userId u1 only", b)
	}
	want := []sent{{"u1", "notification", `{"message":"ready"}`}}
	if c := events.calls(); !slices.Equal(c, want) {
		t.Errorf("relayed %v, want %v", c, want)
	}
}

// When the store or the relay fails, the answer is a 503 that does not
// show the cause.
func TestPublishUnavailable(t *testing.T) {
	h := publishServer(t, &fakeEvents{err: errors.New("pq: connection refused")})
	rec := do(t, h, "POST", eventsPath, serviceToken, `{"projectId":"p1","event":"story_uploaded","data":{}}`)
	wantError(t, rec, http.StatusServiceUnavailable, "INTERNAL_ERROR", "the event could not be stored")
	rec = do(t, h, "POST", eventsPath, serviceToken, `{"userId":"u1","event":"notification","data":{}}`)
	wantError(t, rec, http.StatusServiceUnavailable, "INTERNAL_ERROR", "the event could not be relayed")
}
