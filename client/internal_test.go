package client

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func parseAll(t *testing.T, r io.Reader, max int) ([]sseMessage, error) {
	t.Helper()
	p := newSSEParser(r, max)
	var out []sseMessage
	for {
		m, err := p.next()
		if err != nil {
			return out, err
		}
		out = append(out, m)
	}
}

func TestSSEParser(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     string // messages as event|id|data, separated by ;
	}{
		{"server format", "retry: 2000\n\nid: p1:1\nevent: story_uploaded\ndata: {\"seq\":1}\n\n: heartbeat\n\nevent: joined_project\ndata: {}\n\n",
			`story_uploaded|p1:1|{"seq":1};joined_project|p1:1|{}`},
		{"CRLF", "event: a\r\ndata: x\r\n\r\ndata: y\r\n\r\n", "a||x;message||y"},
		{"CR only", "event: a\rdata: x\r\rdata: y\r\r", "a||x;message||y"},
		{"multi-line data", "data: one\ndata:two\ndata:  three\n\n", "message||one\ntwo\n three"},
		{"no space", "event:a\ndata:x\n\n", "a||x"},
		{"field without colon", "data\ndata\n\n", "message||\n"},
		{"empty data is not dispatched", "event: a\n\ndata: x\n\n", "message||x"},
		{"id with NUL ignored", "id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\nid\ndata: c\n\n", "message|1|a;message|1|b;message||c"},
		{"unknown field and comment", "foo: bar\n: comment\ndata: x\n\n", "message||x"},
		{"BOM", "\xEF\xBB\xBFdata: x\n\n", "message||x"},
		{"unterminated last message", "data: x\n\ndata: y\n", "message||x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, r := range []io.Reader{strings.NewReader(tc.in), iotest.OneByteReader(strings.NewReader(tc.in))} {
				msgs, err := parseAll(t, r, 1<<20)
				if !errors.Is(err, io.EOF) {
					t.Fatalf("err %v, want EOF", err)
				}
				var got []string
				for _, m := range msgs {
					got = append(got, m.event+"|"+m.id+"|"+string(m.data))
				}
				if s := strings.Join(got, ";"); s != tc.want {
					t.Errorf("got %q, want %q", s, tc.want)
				}
			}
		})
	}
}

func TestSSEParserRetryAndLimit(t *testing.T) {
	msgs, _ := parseAll(t, strings.NewReader("retry: 1500\ndata: a\n\nretry: 2x\ndata: b\n\n"), 1<<20)
	if len(msgs) != 2 || msgs[0].retry != 1500*time.Millisecond || msgs[1].retry != 1500*time.Millisecond {
		t.Errorf("retry: %+v", msgs)
	}
	_, err := parseAll(t, strings.NewReader("data: "+strings.Repeat("x", 100)+"\n\n"), 64)
	if !errors.Is(err, errLineTooLong) {
		t.Errorf("long line: %v", err)
	}
}

func TestBackoff(t *testing.T) {
	base, ceiling := 100*time.Millisecond, time.Second
	for attempt, limit := range []time.Duration{100, 200, 400, 800, 1000, 1000, 1000} {
		limit *= time.Millisecond
		var top time.Duration
		for range 500 {
			d := backoff(attempt, base, ceiling)
			if d < 0 || d >= limit {
				t.Fatalf("attempt %d: %v outside [0, %v)", attempt, d, limit)
			}
			top = max(top, d)
		}
		if top < limit/2 {
			t.Errorf("attempt %d: largest of 500 delays %v: not jittered up to %v", attempt, top, limit)
		}
	}
	if d := backoff(1000, base, ceiling); d >= ceiling {
		t.Errorf("attempt 1000: %v", d)
	}
}

func jwtWith(payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"HS256"}`)) + "." + enc([]byte(payload)) + ".sig"
}

func TestTokenTimes(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	for _, tc := range []struct {
		payload string
		want    time.Duration
		ok      bool
	}{
		{fmt.Sprintf(`{"iat":%d,"exp":%d}`, now.Unix(), now.Unix()+3600), time.Hour - 30*time.Second, true},
		{fmt.Sprintf(`{"iat":%d,"exp":%d}`, now.Unix(), now.Unix()+100), 90 * time.Second, true},
		{fmt.Sprintf(`{"exp":%d}`, now.Unix()+100), 90 * time.Second, true},
		{fmt.Sprintf(`{"exp":%d}`, now.Unix()-100), 0, true},
		{`{"sub":"x"}`, 0, false},
	} {
		d, ok := refreshDelay(jwtWith(tc.payload), now)
		if d != tc.want || ok != tc.ok {
			t.Errorf("%s: %v %v, want %v %v", tc.payload, d, ok, tc.want, tc.ok)
		}
	}
	if _, ok := tokenExpiry("not a jwt"); ok {
		t.Error("tokenExpiry of garbage")
	}
	if exp, ok := tokenExpiry(jwtWith(`{"exp":1234}`)); !ok || exp.Unix() != 1234 {
		t.Errorf("tokenExpiry: %v %v", exp, ok)
	}
}

// BenchmarkHandle measures the client's cost per domain event, from the
// received bytes to the OnEvent handler (decode, dedupe, delivery).
func BenchmarkHandle(b *testing.B) {
	var n int
	c, err := New(Options{URL: "http://127.0.0.1:1", Token: "t", OnEvent: func(Event) { n++ }})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	src := &wsConn{}
	c.cur = src
	c.projects["p1"] = &project{hasSeq: true}
	frames := make([][]byte, 1024)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		j := i % len(frames)
		frames[j] = fmt.Appendf(frames[j][:0], `{"event":"story_uploaded","projectId":"p1","seq":%d,"ts":1795682291658,"data":{"story":{"id":"s1","projectId":"p1","title":"How Grandpa met Grandma","status":"processing"}}}`, i+1)
		c.handle(frames[j], src, "")
	}
	if n != b.N {
		b.Fatalf("%d events for %d frames", n, b.N)
	}
}
