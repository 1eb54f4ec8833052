package e2e

// The SSE client of the tests: a stream read raw with bufio, the way a
// browser's EventSource parses it, on a goroutine with bounded waits.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// sseMsg is one item of a stream: a message (Event/Data, ID when the
// message had an id: field), a retry: block, or a comment line.
type sseMsg struct {
	ID        string
	HasID     bool
	Event     string
	Data      string
	Retry     string
	IsComment bool
	Comment   string
}

func (m sseMsg) String() string {
	switch {
	case m.IsComment:
		return fmt.Sprintf("comment %q", m.Comment)
	case m.Event == "" && m.Retry != "":
		return fmt.Sprintf("retry %q", m.Retry)
	}
	return fmt.Sprintf("{id:%q(%v) event:%q data:%s}", m.ID, m.HasID, m.Event, m.Data)
}

// sseConn is an open SSE stream read by a goroutine into a channel.
type sseConn struct {
	name      string
	Resp      *http.Response
	msgs      chan sseMsg
	done      chan struct{} // closed when the stream ended; err is set then
	err       error         // io.EOF when the server ended the response cleanly
	firstLine string        // the very first line of the body
	// spec: messages that docs/asyncapi.yaml does not allow, found by the
	// reader, reported by read and at the end of the test.
	spec specErrors
}

// sseParse reads an event stream per the HTML living standard (fields,
// one optional space after the colon, blank line dispatch), sending each
// message, retry block and comment to out. It returns the read error
// (io.EOF at a clean end) and the first line read.
// Presence messages are dropped unless keepPresence: they come whenever a
// user arrives or leaves, and only presence tests look for them. check, when
// not nil, sees every message with data first, presence included.
func sseParse(r io.Reader, out chan<- sseMsg, first *string, stop <-chan struct{}, keepPresence bool, check func(sseMsg)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var cur sseMsg
	var data []string
	var fields int
	lines := 0
	emit := func(m sseMsg) bool {
		if check != nil && !m.IsComment && m.Data != "" {
			check(m)
		}
		if !keepPresence && (m.Event == "user_online" || m.Event == "user_offline") {
			return true
		}
		select {
		case out <- m:
			return true
		case <-stop:
			return false
		}
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			if err == io.EOF && line != "" {
				return io.ErrUnexpectedEOF // a truncated line
			}
			return err
		}
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		if lines == 0 {
			*first = line
		}
		lines++
		if line == "" {
			if fields > 0 {
				cur.Data = strings.Join(data, "\n")
				if !emit(cur) {
					return errors.New("stopped")
				}
			}
			cur, data, fields = sseMsg{}, nil, 0
			continue
		}
		if strings.HasPrefix(line, ":") {
			if !emit(sseMsg{IsComment: true, Comment: strings.TrimPrefix(line[1:], " ")}) {
				return errors.New("stopped")
			}
			continue
		}
		name, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		fields++
		switch name {
		case "id":
			cur.ID, cur.HasID = value, true
		case "event":
			cur.Event = value
		case "data":
			data = append(data, value)
		case "retry":
			cur.Retry = value
		}
	}
}

// openSSE opens /sse (path holds the query) with token in the Authorization
// header (none when token is "") and extra headers, and fails the test
// unless the answer is 200.
func openSSE(t testing.TB, s *testServer, path, token string, h http.Header) *sseConn {
	t.Helper()
	return openSSEWith(t, s, path, token, h, false)
}

// openSSEWith is openSSE; keepPresence keeps presence messages (presence
// tests), which the other tests do not see.
func openSSEWith(t testing.TB, s *testServer, path, token string, h http.Header, keepPresence bool) *sseConn {
	t.Helper()
	resp := s.requestHeaders(t, "GET", path, token, nil, h)
	if resp.StatusCode != http.StatusOK {
		body := readBody(t, resp)
		t.Fatalf("GET %s: status %d, body %s, want 200", path, resp.StatusCode, body)
	}
	c := &sseConn{name: path, Resp: resp, msgs: make(chan sseMsg, 8192), done: make(chan struct{})}
	stop := make(chan struct{})
	go func() {
		defer close(c.done)
		c.err = sseParse(resp.Body, c.msgs, &c.firstLine, stop, keepPresence, func(m sseMsg) {
			c.spec.add(checkSSEMessage(m))
		})
	}()
	t.Cleanup(func() {
		close(stop)
		resp.Body.Close()
		<-c.done
		c.reportSpec(t)
	})
	return c
}

// checkSSEMessage validates one message of a stream: its data is a message
// of docs/asyncapi.yaml's SSE channel, its event: line that message's event,
// and it has an id: (the cursor) exactly when it is a domain event.
func checkSSEMessage(m sseMsg) string {
	var v struct {
		Event string          `json:"event"`
		Seq   json.RawMessage `json:"seq"`
	}
	if err := json.Unmarshal([]byte(m.Data), &v); err != nil {
		return fmt.Sprintf("SSE data of %v is not a JSON object", m)
	}
	if v.Event != m.Event {
		return fmt.Sprintf("SSE event: %q but the data's event is %q", m.Event, v.Event)
	}
	if m.HasID != (v.Seq != nil) {
		return fmt.Sprintf("SSE message %v: an id: must come with a domain event (seq), and only with one", m)
	}
	return checkMessage("sse", []byte(m.Data))
}

// reportSpec fails the test for each message received so far that
// docs/asyncapi.yaml does not allow.
func (c *sseConn) reportSpec(t testing.TB) {
	t.Helper()
	for _, msg := range c.spec.take() {
		t.Errorf("%s: %s", c.name, msg)
	}
}

// close ends the stream from the client side.
func (c *sseConn) close() { c.Resp.Body.Close() }

// next returns the next item, or ok=false when the stream ended (ended is
// then true) or nothing came within d.
func (c *sseConn) next(d time.Duration) (m sseMsg, ok, ended bool) {
	return receive(c.msgs, c.done, d)
}

// read returns the next message that is not a comment (retry blocks
// included), checking that its data is the JSON object of section 4 whose
// "event" is the message's event: name.
func (c *sseConn) read(t testing.TB) (sseMsg, map[string]any) {
	t.Helper()
	defer c.reportSpec(t)
	deadline := time.Now().Add(waitTimeout)
	for {
		m, ok, ended := c.next(time.Until(deadline))
		if !ok {
			if ended {
				t.Fatalf("%s: stream ended while waiting for a message: %v", c.name, c.err)
			}
			t.Fatalf("%s: no message within %v", c.name, waitTimeout)
		}
		if m.IsComment {
			continue
		}
		if m.Event == "" && m.Data == "" {
			return m, nil // retry block
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(m.Data), &v); err != nil {
			t.Fatalf("%s: data of %v is not a JSON object: %v", c.name, m, err)
		}
		if v["event"] != m.Event {
			t.Fatalf("%s: event: %q but the data's event is %v", c.name, m.Event, v["event"])
		}
		return m, v
	}
}

// expectNext reads the next message and checks that it is event.
func (c *sseConn) expectNext(t testing.TB, event string) (sseMsg, map[string]any) {
	t.Helper()
	m, v := c.read(t)
	if m.Event != event {
		t.Fatalf("%s: got %v, want the next message to be %s", c.name, m, event)
	}
	return m, v
}

// expectJoined reads one joined_project per project (in any order) and
// returns their data by project.
func (c *sseConn) expectJoined(t testing.TB, projects ...string) map[string]map[string]any {
	t.Helper()
	got := map[string]map[string]any{}
	for range projects {
		_, v := c.expectNext(t, "joined_project")
		d := dataOf(t, v)
		p, _ := d["projectId"].(string)
		if !slices.Contains(projects, p) || got[p] != nil {
			t.Fatalf("%s: unexpected joined_project %v, want one of each of %v", c.name, d, projects)
		}
		got[p] = d
	}
	return got
}

// expectEnd reads until the stream ends and returns what came meanwhile.
func (c *sseConn) expectEnd(t testing.TB) []sseMsg {
	t.Helper()
	var seen []sseMsg
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for {
		select {
		case m := <-c.msgs:
			seen = append(seen, m)
		case <-c.done:
			for {
				select {
				case m := <-c.msgs:
					seen = append(seen, m)
				default:
					return seen
				}
			}
		case <-timer.C:
			t.Fatalf("%s: stream still open after %v, want it ended (got %v)", c.name, waitTimeout, seen)
		}
	}
}

// sseEvent is a domain event as decoded from a stream.
type sseEvent struct {
	msg       sseMsg
	v         map[string]any
	ProjectID string
	Seq       int64
}

// readEvent reads the next message, which must be a domain event with an id.
func (c *sseConn) readEvent(t testing.TB) sseEvent {
	t.Helper()
	m, v := c.read(t)
	p, _ := v["projectId"].(string)
	seq, _ := v["seq"].(float64)
	if p == "" || seq <= 0 {
		t.Fatalf("%s: got %v, want a domain event", c.name, m)
	}
	if !m.HasID || m.ID == "" {
		t.Fatalf("%s: domain event %v has no id", c.name, m)
	}
	for _, k := range []string{"ts", "data"} {
		if _, ok := v[k]; !ok {
			t.Fatalf("%s: domain event %v lacks %q", c.name, m, k)
		}
	}
	return sseEvent{msg: m, v: v, ProjectID: p, Seq: int64(seq)}
}

// expectEvents reads domain events only, until every project of to reached
// its seq: each project's events must come exactly once, in order, starting
// right after from[project] (0 when absent). Any other message fails.
func (c *sseConn) expectEvents(t testing.TB, from, to map[string]int64) []sseEvent {
	t.Helper()
	last := map[string]int64{}
	for p := range to {
		last[p] = from[p]
	}
	var got []sseEvent
	for {
		doneAll := true
		for p, n := range to {
			if last[p] < n {
				doneAll = false
			}
		}
		if doneAll {
			return got
		}
		e := c.readEvent(t)
		want, ok := to[e.ProjectID]
		if !ok || e.Seq != last[e.ProjectID]+1 || e.Seq > want {
			t.Fatalf("%s: got %s seq %d after %v, want each of %v in order once, from %v", c.name, e.ProjectID, e.Seq, last, to, from)
		}
		last[e.ProjectID] = e.Seq
		got = append(got, e)
	}
}

// expectComments waits (bounded) for n comment lines, skipping anything else.
func (c *sseConn) expectComments(t testing.TB, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	got := 0
	for got < n {
		m, ok, ended := c.next(time.Until(deadline))
		switch {
		case ended:
			t.Fatalf("%s: stream ended after %d comment lines, want %d", c.name, got, n)
		case !ok:
			t.Fatalf("%s: %d comment lines within %v, want %d", c.name, got, within, n)
		case m.IsComment:
			got++
		}
	}
}

// sseRefused requests path and checks the refusal's status and error code.
func sseRefused(t testing.TB, s *testServer, path, token string, status int, code string) {
	t.Helper()
	resp := s.request(t, "GET", path, token, nil)
	body := readBody(t, resp)
	if resp.StatusCode != status {
		t.Errorf("GET %s: status %d (%s), want %d", path, resp.StatusCode, body, status)
		return
	}
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Code != code || e.Error.Message == "" {
		t.Errorf("GET %s: body %s, want {\"error\":{\"code\":%q,\"message\"}}", path, body, code)
	}
}
