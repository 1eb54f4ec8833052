package protocol

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// AppendEvent writes valid JSON with every field in place, escaping what
// needs it, and the same as encoding/json would for the same values.
func TestAppendEvent(t *testing.T) {
	for _, c := range []struct{ name, project string }{
		{"story_uploaded", "p1"},
		{"story_uploaded", `we"ird\project`},
		{"export_ready", "projét\u2028x"},
		{"x", "\x01"},
	} {
		b := AppendEvent(nil, c.name, c.project, 7, 1700000000123, []byte(`{"a":[1,"b"]}`))
		var got map[string]any
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%q: %v", b, err)
		}
		want := map[string]any{"event": c.name, "projectId": c.project, "seq": 7.0, "ts": 1700000000123.0,
			"data": map[string]any{"a": []any{1.0, "b"}}}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q decodes to %v, want %v", b, got, want)
		}
		if len(b) > EventSize(c.name, c.project, []byte(`{"a":[1,"b"]}`))+len(c.project)*5 {
			t.Fatalf("%q: EventSize is far too small", b)
		}
	}
	if b := AppendEvent(nil, "x", "p", 1, 0, nil); !strings.Contains(string(b), `"data":{}`) {
		t.Fatalf("no data gives %s, want an empty object", b)
	}
}

// Message carries event, projectId, data and ack, leaving out what is
// empty; ErrorMessage is an error message with its code.
func TestMessage(t *testing.T) {
	got := string(Message(JoinedProject, "", Joined{ProjectID: "p1", Role: "member", Seq: 3}, json.RawMessage("12")))
	want := `{"event":"joined_project","data":{"projectId":"p1","role":"member","seq":3},"ack":12}`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	got = string(Message(TypingStart, "p1", TypingRelay{StoryID: "s", UserID: "u"}, nil))
	want = `{"event":"typing_start","projectId":"p1","data":{"storyId":"s","userId":"u","userName":null}}`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	got = string(ErrorMessage(Error{Code: CodeRateLimitExceeded, Message: "slow down", RetryAfterMs: 5}, nil))
	want = `{"event":"error","data":{"code":"RATE_LIMIT_EXCEEDED","message":"slow down","retryAfterMs":5}}`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	if got := string(Message("x", "", func() {}, nil)); !strings.Contains(got, CodeInternalError) {
		t.Fatalf("an unencodable message gives %s, want an INTERNAL_ERROR", got)
	}
	b, _ := json.Marshal(HTTPError{Error: Error{Code: CodeNotFound, Message: "no"}})
	if string(b) != `{"error":{"code":"NOT_FOUND","message":"no"}}` {
		t.Fatalf("HTTP error body %s", b)
	}
	ua, err := UserEvent("export_done", 5, json.RawMessage(`{"k":1}`))
	if err != nil || string(ua) != `{"event":"export_done","ts":5,"data":{"k":1}}` {
		t.Fatalf("user event %s, %v", ua, err)
	}
}

// A cursor reads back what Position writes; bad forms are refused.
func TestCursor(t *testing.T) {
	p := NewPosition(map[string]int64{"b": 4, "a": 17})
	if got := string(p.Append(nil)); got != "a:17,b:4" {
		t.Fatalf("position %q", got)
	}
	if !p.Advance("b", 5) || p.Advance("c", 1) {
		t.Fatal("Advance: b is held, c is not")
	}
	c, err := ParseCursor(string(p.Append(nil)))
	if err != nil || !reflect.DeepEqual(c, Cursor{"a": 17, "b": 5}) {
		t.Fatalf("round trip: %v %v", c, err)
	}
	if c, err := ParseCursor("  "); err != nil || len(c) != 0 {
		t.Fatalf("empty cursor: %v %v", c, err)
	}
	for _, bad := range []string{"a", "a:", "a:-1", "a:x", ":1", "a:1,,b:2", "a\x01:1", strings.Repeat("p", MaxIDLen+1) + ":1"} {
		if _, err := ParseCursor(bad); err == nil {
			t.Fatalf("cursor %q accepted", bad)
		}
	}
}

func TestParseProjects(t *testing.T) {
	got, err := ParseProjects(" p2, p1,p2,, p3 ")
	if err != nil || !reflect.DeepEqual(got, []string{"p2", "p1", "p3"}) {
		t.Fatalf("got %v %v", got, err)
	}
	many := make([]string, MaxProjects+1)
	for i := range many {
		many[i] = "p" + string(rune('a'+i%26)) + strings.Repeat("x", i/26)
	}
	if got, err := ParseProjects(strings.Join(many[:MaxProjects], ",")); err != nil || len(got) != MaxProjects {
		t.Fatalf("%d projects: %d, %v", MaxProjects, len(got), err)
	}
	for _, bad := range []string{"", " , ", "p1,a:b", "p1,\x7f", strings.Join(many, ",")} {
		if _, err := ParseProjects(bad); err == nil {
			t.Fatalf("projects %q accepted", bad)
		}
	}
}

func TestValidID(t *testing.T) {
	for _, ok := range []string{"p", "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "projét", strings.Repeat("x", MaxIDLen)} {
		if !ValidID(ok) {
			t.Fatalf("%q refused", ok)
		}
	}
	for _, bad := range []string{"", "a,b", "a:b", "a\nb", "\xff", strings.Repeat("x", MaxIDLen+1)} {
		if ValidID(bad) {
			t.Fatalf("%q accepted", bad)
		}
	}
}

func TestClientEvent(t *testing.T) {
	if ClientEvent(Ping) != Ping || ClientEvent("story_uploaded") != "other" {
		t.Fatal("ClientEvent keeps client names and folds the rest")
	}
}

// The SSE query's parsers never panic, keep their bounds, and a cursor
// reads back what a position writes.
func FuzzSSEQuery(f *testing.F) {
	for _, s := range [][2]string{
		{"p1,p2", "p1:17,p2:4"},
		{" p1 , p1 ,", ""},
		{"a:b", "a:-1"},
		{"\xff", "p:99999999999999999999"},
		{strings.Repeat("p,", 250), strings.Repeat("p:1,", 250)},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, projects, cursor string) {
		ps, err := ParseProjects(projects)
		if err == nil {
			if len(ps) == 0 || len(ps) > MaxProjects {
				t.Fatalf("%q: %d projects", projects, len(ps))
			}
			seen := map[string]bool{}
			for _, p := range ps {
				if !ValidID(p) || seen[p] {
					t.Fatalf("%q: project %q invalid or repeated", projects, p)
				}
				seen[p] = true
			}
		}
		c, err := ParseCursor(cursor)
		if err != nil {
			return
		}
		if len(c) > MaxProjects {
			t.Fatalf("%q: %d entries", cursor, len(c))
		}
		pos := NewPosition(c)
		back, err := ParseCursor(string(pos.Append(nil)))
		if err != nil || !reflect.DeepEqual(back, c) {
			t.Fatalf("%q: position %q reads back as %v, %v", cursor, pos.Append(nil), back, err)
		}
	})
}

func TestServerOwned(t *testing.T) {
	for _, name := range []string{
		"story_uploaded", "export_failed", // domain
		"authenticated", "joined_project", "left_project", "pong", "error", "server_shutdown", // server
		"auth", "join_project", "leave_project", "ping", "typing_start", "typing_stop", // client
		"user_online", "user_offline", // presence
	} {
		if !ServerOwned(name) {
			t.Errorf("%s is the server's own name", name)
		}
	}
	for _, name := range []string{"notification", "export_done", "Error", "pong2", ""} {
		if ServerOwned(name) {
			t.Errorf("%s is not the server's own name", name)
		}
	}
}
