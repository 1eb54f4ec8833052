package e2e

// The WebSocket client of the tests (coder/websocket): dialing /ws with
// options, reading on a goroutine with bounded waits, sending frames and
// checking the answers of docs/protocol.md section 4.

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// wsMsg is one message received by a wsClient.
type wsMsg struct {
	typ  websocket.MessageType
	data []byte
}

// wsClient is a WebSocket client. A goroutine reads the connection into a
// channel (so pings are answered, as coder/websocket does only while
// reading); with manualRead it reads only when the test asks for a message.
type wsClient struct {
	Conn *websocket.Conn
	Resp *http.Response // the handshake response
	name string

	msgs   chan wsMsg
	done   chan struct{} // closed when the reader stopped; err is set then
	err    error
	want   chan struct{} // manual mode: one read per token
	auto   chan struct{} // closed: read continuously
	autoOn sync.Once
	cancel context.CancelFunc
	acks   atomic.Int64
	// presence: keep presence messages (seePresence).
	presence bool
	// spec: messages that docs/asyncapi.yaml does not allow, found by
	// readLoop, reported by the read helpers and at the end of the test.
	spec specErrors
}

type dialConfig struct {
	header      http.Header
	query       url.Values
	noToken     bool
	tokenHeader bool
	manual      bool
	name        string
	presence    bool
}

type dialOpt func(*dialConfig)

// withHeader adds a handshake header.
func withHeader(k, v string) dialOpt { return func(c *dialConfig) { c.header.Set(k, v) } }

// withOrigin sets the Origin header of the handshake.
func withOrigin(o string) dialOpt { return withHeader("Origin", o) }

// withoutToken dials without a token: the client must send an auth frame.
func withoutToken() dialOpt { return func(c *dialConfig) { c.noToken = true } }

// withTokenHeader sends the token as "Authorization: Bearer" instead of the
// token query parameter.
func withTokenHeader() dialOpt { return func(c *dialConfig) { c.tokenHeader = true } }

// withTicket dials with a one-time ticket (?ticket=) and no token.
func withTicket(ticket string) dialOpt {
	return func(c *dialConfig) {
		c.noToken = true
		c.query.Set("ticket", ticket)
	}
}

// manualRead reads only when the test asks for a message (read, expect...)
// until startReading; such a client answers no ping meanwhile.
func manualRead() dialOpt { return func(c *dialConfig) { c.manual = true } }

// named labels the client in failure messages.
func named(n string) dialOpt { return func(c *dialConfig) { c.name = n } }

// seePresence keeps presence messages, which a client drops by default:
// they come whenever a user arrives or leaves, and only presence tests look
// for them.
func seePresence() dialOpt { return func(c *dialConfig) { c.presence = true } }

// tryDialWS dials /ws and returns the handshake's error and response (with
// up to 1 KiB of body on failure) instead of failing the test.
func tryDialWS(t testing.TB, s *testServer, token string, opts ...dialOpt) (*wsClient, *http.Response, error) {
	t.Helper()
	cfg := dialConfig{header: http.Header{}, query: url.Values{}}
	for _, o := range opts {
		o(&cfg)
	}
	u := s.WSURL
	if token != "" && !cfg.noToken {
		if cfg.tokenHeader {
			cfg.header.Set("Authorization", "Bearer "+token)
		} else {
			cfg.query.Set("token", token)
		}
	}
	if len(cfg.query) > 0 {
		u += "?" + cfg.query.Encode()
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: cfg.header})
	if resp != nil { // the handshake's answer, against docs/openapi.yaml
		var body []byte
		if resp.StatusCode != http.StatusSwitchingProtocols && resp.Body != nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body = io.NopCloser(bytes.NewReader(body))
		}
		if msg := checkHTTP("GET", "/ws", resp, body); msg != "" {
			t.Errorf("%s", msg)
		}
	}
	if err != nil {
		return nil, resp, err
	}
	conn.SetReadLimit(4 << 20)
	rctx, rcancel := context.WithCancel(context.Background())
	c := &wsClient{
		Conn: conn, Resp: resp, name: cfg.name,
		msgs: make(chan wsMsg, 8192), done: make(chan struct{}), presence: cfg.presence,
		want: make(chan struct{}, 1), auto: make(chan struct{}), cancel: rcancel,
	}
	if c.name == "" {
		c.name = "client"
	}
	if !cfg.manual {
		c.startReading()
	}
	go c.readLoop(rctx)
	t.Cleanup(func() {
		rcancel()
		conn.CloseNow()
		<-c.done
		c.reportSpec(t)
	})
	return c, resp, nil
}

// dialWS dials /ws with token (query parameter by default) and fails the
// test when the handshake fails.
func dialWS(t testing.TB, s *testServer, token string, opts ...dialOpt) *wsClient {
	t.Helper()
	c, resp, err := tryDialWS(t, s, token, opts...)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", s.WSURL, err, status)
	}
	return c
}

func (c *wsClient) readLoop(ctx context.Context) {
	defer close(c.done)
	dropped := false // a dropped message does not spend a manual read
	for {
		select {
		case <-c.auto:
		default:
			if dropped {
				break
			}
			select {
			case <-c.want:
			case <-c.auto:
			case <-ctx.Done():
				c.err = ctx.Err()
				return
			}
		}
		typ, b, err := c.Conn.Read(ctx)
		if err != nil {
			c.err = err
			return
		}
		// Every message, presence included, against docs/asyncapi.yaml.
		if typ != websocket.MessageText {
			c.spec.add(c.name + ": the server sent a binary message; asyncapi.yaml has JSON text only")
		} else if msg := checkMessage("ws", b); msg != "" {
			c.spec.add(c.name + ": " + msg)
		}
		if dropped = !c.presence && isPresence(b); dropped {
			continue
		}
		select {
		case c.msgs <- wsMsg{typ, b}:
		case <-ctx.Done():
			c.err = ctx.Err()
			return
		}
	}
}

// startReading switches a manualRead client to continuous reading.
func (c *wsClient) startReading() { c.autoOn.Do(func() { close(c.auto) }) }

// next returns the next message, or ok=false when the connection ended
// (closed is then true) or nothing came within d.
func (c *wsClient) next(d time.Duration) (m wsMsg, ok, closed bool) {
	select {
	case m := <-c.msgs:
		return m, true, false
	default:
	}
	select { // manual mode: ask the reader for one more
	case c.want <- struct{}{}:
	default:
	}
	return receive(c.msgs, c.done, d)
}

// reportSpec fails the test for each message received so far that
// docs/asyncapi.yaml does not allow.
func (c *wsClient) reportSpec(t testing.TB) {
	t.Helper()
	for _, msg := range c.spec.take() {
		t.Errorf("%s", msg)
	}
}

// readMsg returns the next raw message (bounded wait).
func (c *wsClient) readMsg(t testing.TB) wsMsg {
	t.Helper()
	m, ok, closed := c.next(waitTimeout)
	defer c.reportSpec(t)
	if !ok {
		if closed {
			t.Fatalf("%s: connection ended while waiting for a message: %v (close status %d)", c.name, c.err, websocket.CloseStatus(c.err))
		}
		t.Fatalf("%s: no message within %v", c.name, waitTimeout)
	}
	return m
}

// read returns the next message, which must be a JSON object in a text frame.
func (c *wsClient) read(t testing.TB) map[string]any {
	t.Helper()
	m := c.readMsg(t)
	if m.typ != websocket.MessageText {
		t.Fatalf("%s: got a %v message, want text: %q", c.name, m.typ, m.data)
	}
	var v map[string]any
	if err := json.Unmarshal(m.data, &v); err != nil {
		t.Fatalf("%s: message is not a JSON object: %q", c.name, m.data)
	}
	return v
}

// expect reads until a message with that event comes and returns it.
func (c *wsClient) expect(t testing.TB, event string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		m := c.read(t)
		if m["event"] == event {
			return m
		}
		t.Logf("%s: skipping %v while waiting for %s", c.name, m, event)
	}
	t.Fatalf("%s: no %s within %v", c.name, event, waitTimeout)
	return nil
}

// expectNext reads the next message and checks that it is event.
func (c *wsClient) expectNext(t testing.TB, event string) map[string]any {
	t.Helper()
	m := c.read(t)
	if m["event"] != event {
		t.Fatalf("%s: got %v, want the next message to be %s", c.name, m, event)
	}
	return m
}

// expectEnd reads (dropping messages) until the connection ends and returns
// why it ended.
func (c *wsClient) expectEnd(t testing.TB) error {
	t.Helper()
	c.startReading()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for {
		select {
		case <-c.msgs:
		case <-c.done:
			return c.err
		case <-timer.C:
			t.Fatalf("%s: connection still open after %v, want it closed", c.name, waitTimeout)
		}
	}
}

// expectClose reads (dropping messages) until the connection ends and checks
// the close code the server sent; code -1 means no close frame at all.
func (c *wsClient) expectClose(t testing.TB, code websocket.StatusCode) {
	t.Helper()
	err := c.expectEnd(t)
	if got := websocket.CloseStatus(err); got != code {
		t.Fatalf("%s: connection ended with %v (close status %d), want close %d", c.name, err, got, code)
	}
}

// expectSilence checks that no message comes within d and that the
// connection stays open.
func (c *wsClient) expectSilence(t testing.TB, d time.Duration) {
	t.Helper()
	m, ok, closed := c.next(d)
	switch {
	case ok:
		t.Fatalf("%s: got %s, want nothing for %v", c.name, m.data, d)
	case closed:
		t.Fatalf("%s: connection ended (%v, close status %d), want it open", c.name, c.err, websocket.CloseStatus(c.err))
	}
}

// sendRaw writes a text frame as is.
func (c *wsClient) sendRaw(t testing.TB, s string) {
	t.Helper()
	c.write(t, websocket.MessageText, []byte(s))
}

// sendBinary writes a binary frame.
func (c *wsClient) sendBinary(t testing.TB, b []byte) {
	t.Helper()
	c.write(t, websocket.MessageBinary, b)
}

func (c *wsClient) write(t testing.TB, typ websocket.MessageType, b []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := c.Conn.Write(ctx, typ, b); err != nil {
		t.Fatalf("%s: write: %v", c.name, err)
	}
}

// send writes v as JSON.
func (c *wsClient) send(t testing.TB, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	c.write(t, websocket.MessageText, b)
}

// sendEvent writes {"event","data"?,"ack"?}; ack < 0 leaves it out, data nil too.
func (c *wsClient) sendEvent(t testing.TB, event string, data any, ack int64) {
	t.Helper()
	f := map[string]any{"event": event}
	if data != nil {
		f["data"] = data
	}
	if ack >= 0 {
		f["ack"] = ack
	}
	c.send(t, f)
}

// call sends the event with a fresh ack and returns the next message, which
// must carry that ack (the answer of section 3).
func (c *wsClient) call(t testing.TB, event string, data any) map[string]any {
	t.Helper()
	ack := c.acks.Add(1) + 1000
	c.sendEvent(t, event, data, ack)
	m := c.read(t)
	if !ackIs(m, ack) {
		t.Fatalf("%s: answer to %s: got %v, want ack %d", c.name, event, m, ack)
	}
	return m
}

// join joins the project and checks the joined_project answer.
func (c *wsClient) join(t testing.TB, projectID string) map[string]any {
	t.Helper()
	m := c.call(t, "join_project", map[string]any{"projectId": projectID})
	if m["event"] != "joined_project" {
		t.Fatalf("%s: join %s: got %v", c.name, projectID, m)
	}
	return dataOf(t, m)
}

// sync makes a ping round trip and returns every message that came before
// the pong: proof of what was (not) queued for this client until now.
func (c *wsClient) sync(t testing.TB) []map[string]any {
	t.Helper()
	ack := c.acks.Add(1) + 1000
	c.sendEvent(t, "ping", nil, ack)
	var before []map[string]any
	for {
		m := c.read(t)
		if m["event"] == "pong" && ackIs(m, ack) {
			return before
		}
		before = append(before, m)
	}
}

// expectNothingQueued checks that nothing but the pong answers a ping.
func (c *wsClient) expectNothingQueued(t testing.TB) {
	t.Helper()
	if got := c.sync(t); len(got) > 0 {
		t.Fatalf("%s: got %v, want nothing", c.name, got)
	}
}

// authenticate sends an auth frame and checks the authenticated answer.
func (c *wsClient) authenticate(t testing.TB, token string) map[string]any {
	t.Helper()
	m := c.call(t, "auth", map[string]any{"token": token})
	if m["event"] != "authenticated" {
		t.Fatalf("%s: auth: got %v", c.name, m)
	}
	return dataOf(t, m)
}

// expectError reads the next message and checks it is an error with code.
func (c *wsClient) expectError(t testing.TB, code string) map[string]any {
	t.Helper()
	m := c.read(t)
	if got := errorCode(t, m); got != code {
		t.Fatalf("%s: got error %v, want %s", c.name, m, code)
	}
	return m
}

// expectEvent reads the next message and checks it is the domain event of
// projectID with seq.
func (c *wsClient) expectEvent(t testing.TB, projectID string, seq int64) map[string]any {
	t.Helper()
	m := c.read(t)
	if m["projectId"] != projectID || m["seq"] != float64(seq) {
		t.Fatalf("%s: got %v, want event seq %d of %s", c.name, m, seq, projectID)
	}
	for _, k := range []string{"event", "ts", "data"} {
		if _, ok := m[k]; !ok {
			t.Fatalf("%s: event %v lacks %q", c.name, m, k)
		}
	}
	return m
}

// isPresence tells a presence message by its first bytes: the server
// writes "event" first.
func isPresence(b []byte) bool {
	return bytes.HasPrefix(b, []byte(`{"event":"user_online"`)) || bytes.HasPrefix(b, []byte(`{"event":"user_offline"`))
}
