package client

import (
	"errors"
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
