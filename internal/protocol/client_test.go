package protocol

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestDecodeClientFrame(t *testing.T) {
	cases := []struct {
		in      string
		ok      bool
		event   string
		data    string // "" when nil
		ack     string // "" when nil
		errHint string // part of the error message
	}{
		{in: `{"event":"ping"}`, ok: true, event: "ping"},
		{in: `  {"event":"ping","ack":1}  `, ok: true, event: "ping", ack: "1"},
		{in: `{"event":"join_project","data":"p1","ack":0}`, ok: true, event: "join_project", data: `"p1"`, ack: "0"},
		{in: `{"event":"join_project","data":{"projectId":"p1","since":3},"ack":-2.5e3}`, ok: true, event: "join_project", data: `{"projectId":"p1","since":3}`, ack: "-2.5e3"},
		{in: `{"event":"ping","data":null,"ack":null}`, ok: true, event: "ping"},
		{in: `{"ack":7,"event":"x","extra":[1,2]}`, ok: true, event: "x", ack: "7"},
		{in: `{"event":"\u00e9v\u00e9nement"}`, ok: true, event: "événement"},
		{in: ``, errHint: "object"},
		{in: `   `, errHint: "object"},
		{in: `hello`, errHint: "object"},
		{in: `[{"event":"ping"}]`, errHint: "object"},
		{in: `"ping"`, errHint: "object"},
		{in: `null`, errHint: "object"},
		{in: `{"event":"ping"`, errHint: "object"},
		{in: `{"event":"ping"}{}`, errHint: "object"},
		{in: "{\"event\":\"\xff\"}", errHint: "object"},
		{in: `{}`, errHint: "event"},
		{in: `{"data":{},"ack":3}`, ack: "3", errHint: "event"},
		{in: `{"event":null,"ack":4}`, ack: "4", errHint: "event"},
		{in: `{"event":5,"ack":5}`, ack: "5", errHint: "event"},
		{in: `{"event":["ping"],"ack":6}`, ack: "6", errHint: "event"},
		{in: `{"event":"","ack":7}`, ack: "7", errHint: "event"},
		{in: `{"event":"ping","ack":"8"}`, errHint: "ack"},
		{in: `{"event":"ping","ack":true}`, errHint: "ack"},
		{in: `{"event":"ping","ack":{}}`, errHint: "ack"},
		{in: `{"event":"ping","ack":123456789012345678901234567890123}`, errHint: "ack"},
	}
	for _, tc := range cases {
		f, err := DecodeClientFrame([]byte(tc.in))
		if (err == nil) != tc.ok {
			t.Errorf("%q: err %v, want ok %v", tc.in, err, tc.ok)
			continue
		}
		if err != nil && !strings.Contains(err.Error(), tc.errHint) {
			t.Errorf("%q: error %q does not mention %q", tc.in, err, tc.errHint)
		}
		if f.Event != tc.event || string(f.Data) != tc.data || string(f.Ack) != tc.ack {
			t.Errorf("%q: got event %q data %q ack %q, want %q %q %q", tc.in, f.Event, f.Data, f.Ack, tc.event, tc.data, tc.ack)
		}
	}
}

func TestDecodeProjectRef(t *testing.T) {
	i64 := func(n int64) *int64 { return &n }
	cases := []struct {
		in    string
		ok    bool
		id    string
		since *int64
	}{
		{in: `"p1"`, ok: true, id: "p1"},
		{in: `{"projectId":"p1"}`, ok: true, id: "p1"},
		{in: `{"projectId":"p1","since":0}`, ok: true, id: "p1", since: i64(0)},
		{in: `{"projectId":"p1","since":17}`, ok: true, id: "p1", since: i64(17)},
		{in: `{"projectId":"p1","since":null}`, ok: true, id: "p1"},
		{in: `{"projectId":"p1","other":true}`, ok: true, id: "p1"},
		{in: `"` + strings.Repeat("a", 128) + `"`, ok: true, id: strings.Repeat("a", 128)},
		{in: `"4f9a2c1e-7b3d-4e8f-9a6b-1c2d3e4f5a6b"`, ok: true, id: "4f9a2c1e-7b3d-4e8f-9a6b-1c2d3e4f5a6b"},
		{in: ``},
		{in: `""`},
		{in: `"` + strings.Repeat("a", 129) + `"`},
		{in: `"a,b"`},
		{in: `"a:b"`},
		{in: `"a\nb"`},
		{in: `"a\u007fb"`},
		{in: `{}`},
		{in: `{"projectId":""}`},
		{in: `{"projectId":5}`},
		{in: `{"projectId":"p1","since":-1}`},
		{in: `{"projectId":"p1","since":1.5}`},
		{in: `{"projectId":"p1","since":1e30}`},
		{in: `{"projectId":"p1","since":"x"}`},
		{in: `{"projectId":"p1","since":[]}`},
		{in: `42`},
		{in: `true`},
		{in: `[]`},
		{in: `"unterminated`},
	}
	for _, tc := range cases {
		ref, err := DecodeProjectRef(json.RawMessage(tc.in))
		if (err == nil) != tc.ok {
			t.Errorf("%q: err %v, want ok %v", tc.in, err, tc.ok)
			continue
		}
		if !tc.ok {
			continue
		}
		if ref.ProjectID != tc.id {
			t.Errorf("%q: projectId %q, want %q", tc.in, ref.ProjectID, tc.id)
		}
		if (ref.Since == nil) != (tc.since == nil) || (ref.Since != nil && *ref.Since != *tc.since) {
			t.Errorf("%q: since %v, want %v", tc.in, ref.Since, tc.since)
		}
	}
}

func TestDecodeTyping(t *testing.T) {
	cases := []struct {
		in           string
		ok           bool
		project, sid string
	}{
		{in: `{"projectId":"p1","storyId":"s1"}`, ok: true, project: "p1", sid: "s1"},
		{in: `{"storyId":"s1","projectId":"p1","x":1}`, ok: true, project: "p1", sid: "s1"},
		{in: `{"projectId":"p1"}`, ok: true, project: "p1"},
		{in: `{"projectId":"p1","storyId":"` + strings.Repeat("s", 128) + `"}`, ok: true, project: "p1", sid: strings.Repeat("s", 128)},
		{in: `{"projectId":"p1","storyId":"` + strings.Repeat("s", 129) + `"}`},
		{in: `{"storyId":"s1"}`},
		{in: `{"projectId":"a,b","storyId":"s1"}`},
		{in: `{"projectId":5,"storyId":"s1"}`},
		{in: `{"projectId":"p1","storyId":5}`},
		{in: `"p1"`},
		{in: `[]`},
		{in: ``},
		{in: `null`},
	}
	for _, tc := range cases {
		d, err := DecodeTyping(json.RawMessage(tc.in))
		if (err == nil) != tc.ok {
			t.Errorf("%q: err %v, want ok %v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && (d.ProjectID != tc.project || d.StoryID != tc.sid) {
			t.Errorf("%q: got %+v", tc.in, d)
		}
	}
}

func TestDecodeAuth(t *testing.T) {
	for in, ok := range map[string]bool{
		`{"token":"abc"}`: true,
		`{"token":""}`:    false,
		`{}`:              false,
		`"abc"`:           false,
		`{"token":5}`:     false,
		``:                false,
	} {
		tok, err := DecodeAuth(json.RawMessage(in))
		if (err == nil) != ok || (ok && tok != "abc") {
			t.Errorf("%q: %q %v, want ok %v", in, tok, err, ok)
		}
	}
}

func FuzzDecodeClientFrame(f *testing.F) {
	for _, s := range []string{
		`{"event":"ping"}`,
		`{"event":"ping","ack":1}`,
		`{"event":"auth","data":{"token":"a.b.c"},"ack":2}`,
		`{"event":"join_project","data":{"projectId":"p1","since":17},"ack":3}`,
		`{"event":"join_project","data":"p1"}`,
		`{"event":"leave_project","data":{"projectId":"p1"}}`,
		`{"event":"typing_start","data":{"projectId":"p1","storyId":"s1"}}`,
		`{"event":"ping","ack":-1.5e-3}`,
		`{"event":"ping","ack":"1"}`,
		`{"event":5,"ack":1}`,
		`{"event":"","data":null}`,
		`{"EVENT":"ping","Ack":1}`,
		`{"event":"a","event":"b","ack":1,"ack":2}`,
		"{\"event\":\"\xc3\x28\"}",
		`[1,2,3]`,
		`not json`,
		``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := DecodeClientFrame(b)
		if err == nil {
			if fr.Event == "" {
				t.Fatalf("%q: no error and no event", b)
			}
			if !utf8.ValidString(fr.Event) {
				t.Fatalf("%q: event %q is not UTF-8", b, fr.Event)
			}
			if fr.Data != nil && (!json.Valid(fr.Data) || bytes.Equal(fr.Data, []byte("null"))) {
				t.Fatalf("%q: data %q", b, fr.Data)
			}
		}
		if fr.Ack != nil {
			// A JSON number, which an answer can embed as is.
			var n json.Number
			if len(fr.Ack) > 32 || json.Unmarshal(fr.Ack, &n) != nil || n.String() != string(fr.Ack) {
				t.Fatalf("%q: ack %q is not a JSON number", b, fr.Ack)
			}
			if _, err := json.Marshal(struct {
				Ack json.RawMessage `json:"ack"`
			}{fr.Ack}); err != nil {
				t.Fatalf("%q: ack %q cannot be embedded: %v", b, fr.Ack, err)
			}
		}
		if err != nil && fr.Event != "" {
			t.Fatalf("%q: error %v with event %q", b, err, fr.Event)
		}
		// The decoders of data never panic either.
		if err == nil {
			DecodeProjectRef(fr.Data)
			DecodeTyping(fr.Data)
			DecodeAuth(fr.Data)
		}
	})
}
