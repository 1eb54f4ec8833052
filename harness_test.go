// Integration test harness: the tests of this package run the real binary,
// built once by TestMain with the race detector, and talk to it the way
// clients do (HTTP, WebSocket; SSE, Postgres multi-instance and browser tests
// can reuse the same pieces).
//
// How to use it in a new test file of package main:
//
//	s := startServer(t, "RATE_LIMIT_MAX_EVENTS=5")   // KEY=VALUE overrides; PORT=0, fixed JWT_SECRET, no DATABASE_URL
//	s2 := startServer(t, "DATABASE_URL="+url)         // Postgres mode; start several for multi-instance tests
//	tok := s.token(t, auth.Claims{UserID: "u1", Projects: []string{"p1"}}, time.Minute)
//	svc := s.serviceToken(t)
//	c := dialWS(t, s, tok)                            // WebSocket client (coder/websocket), closed in t.Cleanup
//	c.call(t, "join_project", "p1")                    // send with an ack, return the reply (error on a mismatch)
//	seq := publish(t, s, svc, "p1", "story_uploaded", map[string]any{"storyId": "s1"})
//	m := c.expect(t, "story_uploaded")                 // read until that event (bounded)
//	status, body := s.getJSON(t, "/api/websocket/stats", svc)
//	resp := s.request(t, "GET", "/sse?projects=p1", tok, nil)  // raw *http.Response (SSE streams, headers)
//	eventually(t, 5*time.Second, "no connection left", func() bool { ... })
//
// s.URL is the http base URL (http://127.0.0.1:PORT), s.WSURL the /ws URL,
// s.Secret the JWT secret. The server's stderr is kept and dumped when the
// test fails; a data race reported by the server fails the test. The server
// is stopped in t.Cleanup (SIGTERM, then SIGKILL after 10 s); s.stop(t)
// stops it earlier and returns its exit code.
//
// Every wait is bounded (waitTimeout by default): tests wait for an event,
// never sleep in place of waiting for one.
//
// SAGAPUSH_TEST_BIN=/path/to/binary skips the build (the binary must be built
// from this tree, preferably with -race). The build is plain `go build -race`,
// so GOFLAGS (e.g. -tags=pgstub) passes through.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"sagapush/auth"
	"sagapush/internal/testsupport"
)

// testSecret is the JWT_SECRET of every test server unless overridden.
const testSecret = "sagapush-test-secret-0123456789abcdef"

// waitTimeout bounds every single wait of the harness. The server runs under
// the race detector, several at once: keep this generous.
const waitTimeout = 10 * time.Second

var binPath string

func TestMain(m *testing.M) {
	code, err := testMain(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func testMain(m *testing.M) (int, error) {
	if p := os.Getenv("SAGAPUSH_TEST_BIN"); p != "" {
		binPath = p
		return m.Run(), nil
	}
	dir, err := os.MkdirTemp("", "sagapush-test-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	binPath = filepath.Join(dir, "sagapush")
	cmd := exec.Command("go", "build", "-race", "-o", binPath, ".")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("go build -race: %w", err)
	}
	return m.Run(), nil
}

// serverEnvKeys are the variables the server reads: the test's own
// environment never leaks them into a test server.
type testServer struct {
	URL    string // http://127.0.0.1:PORT
	WSURL  string // ws://127.0.0.1:PORT/ws
	Port   int
	Secret []byte // JWT_SECRET ("" when the test unset it)

	cmd    *exec.Cmd
	stderr *testsupport.SyncBuffer
	stdout *testsupport.SyncBuffer
	exited chan struct{} // closed once the process is reaped
	state  *os.ProcessState
}

var listeningRE = regexp.MustCompile(`msg=listening addr=(\S+)`)

// startServer runs the binary with PORT=0, JWT_SECRET=testSecret and no
// DATABASE_URL, then env (KEY=VALUE, later wins), and waits (15 s at most)
// until it listens.
func startServer(t testing.TB, env ...string) *testServer {
	t.Helper()
	full := append(testsupport.CleanEnv(), "PORT=0", "JWT_SECRET="+testSecret)
	if os.Getenv("GORACE") == "" {
		// The race runtime sleeps 1 s at exit by default: every test pays it.
		full = append(full, "GORACE=atexit_sleep_ms=50")
	}
	full = append(full, env...)
	s := &testServer{stderr: &testsupport.SyncBuffer{}, stdout: &testsupport.SyncBuffer{}, exited: make(chan struct{})}
	for _, kv := range full {
		if v, ok := strings.CutPrefix(kv, "JWT_SECRET="); ok {
			s.Secret = []byte(v)
		}
	}

	s.cmd = exec.Command(binPath, "serve")
	s.cmd.Env = full
	s.cmd.Stdout = s.stdout
	pipe, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start server: %v", err)
	}
	addr := make(chan string, 1)
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		found := false
		for sc.Scan() {
			line := sc.Text()
			s.stderr.Write([]byte(line + "\n"))
			if !found {
				if m := listeningRE.FindStringSubmatch(line); m != nil {
					found = true
					addr <- m[1]
				}
			}
		}
		io.Copy(s.stderr, pipe) // a line over 1 MiB: keep the rest anyway
	}()
	go func() {
		<-scanDone // Wait must follow the last read of the pipe
		s.cmd.Wait()
		s.state = s.cmd.ProcessState
		close(s.exited)
	}()
	t.Cleanup(func() {
		code := s.stop(t)
		out := s.stderr.String()
		if strings.Contains(out, "WARNING: DATA RACE") || code == 66 {
			t.Errorf("the server reported a data race (exit code %d)", code)
		}
		if t.Failed() {
			const keep = 64 << 10
			if len(out) > keep {
				out = "...\n" + out[len(out)-keep:]
			}
			t.Logf("server stderr:\n%s", out)
		}
	})

	select {
	case a := <-addr:
		i := strings.LastIndexByte(a, ':')
		port, err := strconv.Atoi(a[i+1:])
		if err != nil {
			t.Fatalf("cannot parse listening address %q", a)
		}
		s.Port = port
		s.URL = fmt.Sprintf("http://127.0.0.1:%d", port)
		s.WSURL = fmt.Sprintf("ws://127.0.0.1:%d/ws", port)
	case <-s.exited:
		t.Fatalf("server exited before listening: %v", s.state)
	case <-time.After(15 * time.Second):
		t.Fatal("server did not listen within 15 s")
	}
	return s
}

// stop sends SIGTERM (SIGKILL after 10 s) unless the process already exited,
// waits for it and returns its exit code (-1 when killed by a signal).
func (s *testServer) stop(t testing.TB) int {
	t.Helper()
	select {
	case <-s.exited:
	default:
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			t.Errorf("server did not exit within 10 s of SIGTERM; killing it")
			s.cmd.Process.Kill()
			<-s.exited
		}
	}
	return s.state.ExitCode()
}

// signal sends sig to the server process.
func (s *testServer) signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal: %v", err)
	}
}

// token mints an HS256 token with the server's secret (auth.Mint: ttl <= 0
// means no exp).
func (s *testServer) token(t testing.TB, c auth.Claims, ttl time.Duration) string {
	t.Helper()
	tok, err := auth.Mint(s.Secret, c, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// userToken is a 1-hour token of user id with access to projects.
func (s *testServer) userToken(t testing.TB, id string, projects ...string) string {
	t.Helper()
	return s.token(t, auth.Claims{UserID: id, Name: "Name of " + id, Projects: projects}, time.Hour)
}

// serviceToken is a 1-hour token with role service (the Saga backend).
func (s *testServer) serviceToken(t testing.TB) string {
	t.Helper()
	return s.token(t, auth.Claims{UserID: "backend", Role: auth.RoleService}, time.Hour)
}

// request sends an HTTP request to the server with an optional bearer token
// and JSON body (a string or []byte is sent as is). The response headers must
// come within waitTimeout; the body stays readable until the test ends (an
// SSE stream, say). The caller closes the body.
func (s *testServer) request(t testing.TB, method, path, token string, body any) *http.Response {
	t.Helper()
	return s.requestHeaders(t, method, path, token, body, nil)
}

// requestHeaders is request with extra headers.
func (s *testServer) requestHeaders(t testing.TB, method, path, token string, body any, h http.Header) *http.Response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, method, s.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	timer := time.AfterFunc(waitTimeout, cancel)
	resp, err := http.DefaultClient.Do(req)
	timer.Stop()
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp
}

// readBody reads a whole response body within waitTimeout and closes it.
func readBody(t testing.TB, resp *http.Response) []byte {
	t.Helper()
	defer resp.Body.Close()
	type result struct {
		b   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		b, err := io.ReadAll(resp.Body)
		ch <- result{b, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("read body: %v", r.err)
		}
		return r.b
	case <-time.After(waitTimeout):
		t.Fatalf("body not read within %v", waitTimeout)
		return nil
	}
}

// doJSON sends a request and decodes a JSON object answer.
func (s *testServer) doJSON(t testing.TB, method, path, token string, body any) (int, map[string]any) {
	t.Helper()
	resp := s.request(t, method, path, token, body)
	b := readBody(t, resp)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s %s: status %d, body is not a JSON object: %q", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode, m
}

func (s *testServer) getJSON(t testing.TB, path, token string) (int, map[string]any) {
	t.Helper()
	return s.doJSON(t, "GET", path, token, nil)
}

// publish posts a domain event as the backend does and returns its seq.
func publish(t testing.TB, s *testServer, serviceToken, projectID, event string, data any) int64 {
	t.Helper()
	seq, err := publishErr(s, serviceToken, projectID, event, data)
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

// publishErr is publish for goroutines other than the test's.
func publishErr(s *testServer, serviceToken, projectID, event string, data any) (int64, error) {
	b, err := json.Marshal(map[string]any{"projectId": projectID, "event": event, "data": data})
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", s.URL+"/api/events", bytes.NewReader(b))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+serviceToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("publish %s to %s: %w", event, projectID, err)
	}
	defer resp.Body.Close()
	var body struct {
		ProjectID string `json:"projectId"`
		Seq       *int64 `json:"seq"`
	}
	rb, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("publish %s to %s: %w", event, projectID, err)
	}
	if resp.StatusCode != http.StatusAccepted || json.Unmarshal(rb, &body) != nil || body.Seq == nil || body.ProjectID != projectID {
		return 0, fmt.Errorf("publish %s to %s: status %d, body %s", event, projectID, resp.StatusCode, rb)
	}
	return *body.Seq, nil
}

// metric returns the value of the first sample of /metrics whose line starts
// with prefix (a metric name, optionally with labels), or -1 when absent.
func (s *testServer) metric(t testing.TB, prefix string) float64 {
	t.Helper()
	body := readBody(t, s.request(t, "GET", "/metrics", "", nil))
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, prefix) && (len(line) > len(prefix) && (line[len(prefix)] == ' ' || line[len(prefix)] == '{')) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// eventually polls cond every 20 ms until it holds, for at most d.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

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
}

type dialConfig struct {
	header      http.Header
	noToken     bool
	tokenHeader bool
	manual      bool
	name        string
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

// manualRead reads only when the test asks for a message (read, expect...)
// until startReading; such a client answers no ping meanwhile.
func manualRead() dialOpt { return func(c *dialConfig) { c.manual = true } }

// named labels the client in failure messages.
func named(n string) dialOpt { return func(c *dialConfig) { c.name = n } }

// tryDialWS dials /ws and returns the handshake's error and response (with
// up to 1 KiB of body on failure) instead of failing the test.
func tryDialWS(t testing.TB, s *testServer, token string, opts ...dialOpt) (*wsClient, *http.Response, error) {
	t.Helper()
	cfg := dialConfig{header: http.Header{}}
	for _, o := range opts {
		o(&cfg)
	}
	u := s.WSURL
	if token != "" && !cfg.noToken {
		if cfg.tokenHeader {
			cfg.header.Set("Authorization", "Bearer "+token)
		} else {
			u += "?token=" + url.QueryEscape(token)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: cfg.header})
	if err != nil {
		return nil, resp, err
	}
	conn.SetReadLimit(4 << 20)
	rctx, rcancel := context.WithCancel(context.Background())
	c := &wsClient{
		Conn: conn, Resp: resp, name: cfg.name,
		msgs: make(chan wsMsg, 8192), done: make(chan struct{}),
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
	for {
		select {
		case <-c.auto:
		default:
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
	select {
	case c.want <- struct{}{}:
	default:
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case m := <-c.msgs:
		return m, true, false
	case <-c.done:
		select { // a message may have been queued right before the end
		case m := <-c.msgs:
			return m, true, false
		default:
		}
		return wsMsg{}, false, true
	case <-timer.C:
		return wsMsg{}, false, false
	}
}

// readMsg returns the next raw message (bounded wait).
func (c *wsClient) readMsg(t testing.TB) wsMsg {
	t.Helper()
	m, ok, closed := c.next(waitTimeout)
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

func ackIs(m map[string]any, ack int64) bool {
	v, ok := m["ack"].(float64)
	return ok && v == float64(ack)
}

// dataOf returns the message's data object.
func dataOf(t testing.TB, m map[string]any) map[string]any {
	t.Helper()
	d, ok := m["data"].(map[string]any)
	if !ok {
		t.Fatalf("message %v has no data object", m)
	}
	return d
}

// errorCode checks that m is an error message and returns its code.
func errorCode(t testing.TB, m map[string]any) string {
	t.Helper()
	if m["event"] != "error" {
		t.Fatalf("got %v, want an error", m)
	}
	d := dataOf(t, m)
	if msg, _ := d["message"].(string); msg == "" {
		t.Errorf("error %v has no message", m)
	}
	code, _ := d["code"].(string)
	return code
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

// rawToken signs arbitrary claims with the server's secret (HS256): expired
// or not-yet-valid tokens, tokens without a user id...
func (s *testServer) rawToken(t testing.TB, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(s.Secret)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// expiredToken is a token of user id that expired two minutes ago (beyond
// the 30 s leeway).
func (s *testServer) expiredToken(t testing.TB, id string, projects ...string) string {
	t.Helper()
	now := time.Now()
	return s.rawToken(t, jwt.MapClaims{"userId": id, "projects": projects, "iat": now.Add(-time.Hour).Unix(), "exp": now.Add(-2 * time.Minute).Unix()})
}

// tokenExp returns the exp claim of a token (zero when it has none).
func tokenExp(t testing.TB, tok string) time.Time {
	t.Helper()
	var c jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(tok, &c); err != nil {
		t.Fatal(err)
	}
	if c.ExpiresAt == nil {
		return time.Time{}
	}
	return c.ExpiresAt.Time
}

// algNoneToken is an unsigned token ("alg":"none") of user id.
func algNoneToken(id string) string {
	enc := base64.RawURLEncoding.EncodeToString
	payload, _ := json.Marshal(map[string]any{"userId": id, "sub": id, "exp": time.Now().Add(time.Hour).Unix()})
	return enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc(payload) + "."
}
