package session

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/saga-family/sagapush/auth"
	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/protocol"
	"github.com/saga-family/sagapush/store"
)

// tokens maps a test token to its claims; "expired" is refused as expired.
type tokens map[string]*auth.Claims

func (t tokens) Verify(token string) (*auth.Claims, error) {
	if token == "expired" {
		return nil, auth.ErrExpired
	}
	if c, ok := t[token]; ok {
		cc := *c
		return &cc, nil
	}
	return nil, errors.New("bad signature")
}

// peer is a transport that keeps every message and close it is given.
type peer struct {
	mu     sync.Mutex
	conn   *hub.Conn
	msgs   chan map[string]any
	closed chan int
}

func newPeer() *peer {
	return &peer{msgs: make(chan map[string]any, 4096), closed: make(chan int, 8)}
}

func (p *peer) Wake() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn == nil {
		return
	}
	for _, f := range p.conn.Pull(nil, 0) {
		if f.CloseCode > 0 {
			p.closed <- f.CloseCode
			continue
		}
		p.Direct(f.JSON)
	}
}
func (p *peer) Abort(code int, _ string) { p.closed <- code }
func (p *peer) Warm()                    {}
func (p *peer) Attach(c *hub.Conn) {
	p.mu.Lock()
	p.conn = c
	p.mu.Unlock()
	p.Wake()
}
func (p *peer) Direct(b []byte) {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		panic(err)
	}
	p.msgs <- m
}
func (p *peer) Close(code int, _ string) { p.closed <- code }

// next returns the next message, failing after a bound.
func (p *peer) next(t *testing.T) map[string]any {
	t.Helper()
	select {
	case m := <-p.msgs:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no message within 5s")
		return nil
	}
}

// ackOf is a message's ack, 0 when it has none.
func ackOf(m map[string]any) float64 {
	a, _ := m["ack"].(float64)
	return a
}

// expectError reads the next message and checks it is an error with code
// answering ack (0: none).
func (p *peer) expectError(t *testing.T, code string, ack float64) map[string]any {
	t.Helper()
	m := p.next(t)
	data, _ := m["data"].(map[string]any)
	if m["event"] != "error" || data["code"] != code || ackOf(m) != ack {
		t.Fatalf("got %v, want error %s with ack %v", m, code, ack)
	}
	return data
}

func (p *peer) expectEvent(t *testing.T, event string, ack float64) map[string]any {
	t.Helper()
	m := p.next(t)
	if m["event"] != event || ackOf(m) != ack {
		t.Fatalf("got %v, want %s with ack %v", m, event, ack)
	}
	data, _ := m["data"].(map[string]any)
	return data
}

func (p *peer) expectClose(t *testing.T, code int) {
	t.Helper()
	select {
	case got := <-p.closed:
		if got != code {
			t.Fatalf("closed with %d, want %d", got, code)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no close %d within 5s", code)
	}
}

type fixture struct {
	hub *hub.Hub
	m   *Manager
	st  *store.Memory
}

func newFixture(t *testing.T, hopts hub.Options, authTimeout time.Duration) *fixture {
	st := store.NewMemory(100)
	hopts.Source, hopts.Access, hopts.Relay = st, st, st
	h := hub.New(hopts)
	t.Cleanup(h.Close)
	if err := st.Start(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	tok := tokens{
		"alice":  {UserID: "alice", Name: "Alice", Projects: []string{"p1"}},
		"alice2": {UserID: "alice", Name: "Alice", Projects: []string{}},
		"bob":    {UserID: "bob", Projects: []string{"p1"}},
		"soon":   {UserID: "carol", Projects: []string{"p1"}, ExpiresAt: time.Now().Add(150 * time.Millisecond)},
	}
	m := NewManager(Options{Hub: h, Auth: &Authenticator{Verifier: tok, Users: st}, AuthTimeout: authTimeout, Leeway: time.Nanosecond})
	return &fixture{hub: h, m: m, st: st}
}

func frame(event string, data any, ack int) []byte {
	b, _ := json.Marshal(map[string]any{"event": event, "data": data, "ack": ack})
	return b
}

// Every client frame gets its answer, with its ack, in order.
func TestCommands(t *testing.T) {
	f := newFixture(t, hub.Options{}, time.Minute)
	p := newPeer()
	s := f.m.New(protocol.WebSocket, p)
	s.Start()
	defer s.End(0)

	s.Receive(frame("ping", nil, 1))
	p.expectError(t, protocol.CodeUnauthorized, 1)
	s.Receive(frame("auth", map[string]string{"token": "nobody"}, 2))
	p.expectError(t, protocol.CodeUnauthorized, 2)
	s.Receive(frame("auth", map[string]string{"token": "expired"}, 3))
	p.expectError(t, protocol.CodeTokenExpired, 3)
	s.Receive(frame("auth", map[string]string{"token": "alice"}, 4))
	if d := p.expectEvent(t, "authenticated", 4); d["userId"] != "alice" || d["expiresAt"] != nil {
		t.Fatalf("authenticated %v", d)
	}
	s.Receive(frame("join_project", map[string]any{"projectId": "p1"}, 5))
	if d := p.expectEvent(t, "joined_project", 5); d["projectId"] != "p1" || d["seq"] != 0.0 {
		t.Fatalf("joined_project %v", d)
	}
	s.Receive(frame("join_project", "p2", 6))
	if d := p.expectError(t, protocol.CodeProjectAccessDenied, 6); d["projectId"] != "p2" {
		t.Fatalf("denied join: %v", d)
	}
	s.Receive(frame("ping", nil, 7))
	if d := p.expectEvent(t, "pong", 7); d["ts"] == nil {
		t.Fatalf("pong %v", d)
	}
	s.Receive(frame("typing_start", map[string]string{"projectId": "p9", "storyId": "s1"}, 8))
	p.expectError(t, protocol.CodeNotInProject, 8)
	s.Receive(frame("typing_start", map[string]string{"storyId": "s1"}, 9))
	p.expectError(t, protocol.CodeInvalidMessage, 9)
	s.Receive(frame("leave_project", "p1", 10))
	if d := p.expectEvent(t, "left_project", 10); d["reason"] != "requested" {
		t.Fatalf("left_project %v", d)
	}
	s.Receive(frame("leave_project", "p1", 11))
	p.expectError(t, protocol.CodeNotInProject, 11)
	s.Receive(frame("dance", nil, 12))
	p.expectError(t, protocol.CodeUnknownEvent, 12)
	s.Receive(nil) // a binary frame
	p.expectError(t, protocol.CodeInvalidMessage, 0)
	s.Receive([]byte(`{"event":"ping","ack":13`))
	p.expectError(t, protocol.CodeInvalidMessage, 0)
	// A refresh must name the same user; one with fewer projects revokes.
	s.Receive(frame("join_project", "p1", 14))
	p.expectEvent(t, "joined_project", 14)
	s.Receive(frame("auth", map[string]string{"token": "bob"}, 15))
	p.expectError(t, protocol.CodeUnauthorized, 15)
	s.Receive(frame("auth", map[string]string{"token": "alice2"}, 16))
	p.expectEvent(t, "authenticated", 16)
	if d := p.expectEvent(t, "left_project", 0); d["reason"] != "access_revoked" {
		t.Fatalf("after a refresh without p1: %v", d)
	}
}

// A session without a token is closed with 4408 when its auth deadline
// passes; one whose token expires gets TOKEN_EXPIRED, then 4401.
func TestDeadlinesClose(t *testing.T) {
	f := newFixture(t, hub.Options{}, 50*time.Millisecond)
	p := newPeer()
	s := f.m.New(protocol.WebSocket, p)
	s.Start()
	p.expectClose(t, protocol.CloseNoAuth)
	s.End(0)

	p = newPeer()
	s = f.m.New(protocol.SSE, p)
	if no := s.Authenticate(context.Background(), Credential{Value: "soon"}); no != nil {
		t.Fatalf("refused: %+v", no)
	}
	s.Start()
	p.expectError(t, protocol.CodeTokenExpired, 0)
	p.expectClose(t, protocol.CloseUnauthenticated)
	s.End(0)
	if n := f.hub.Len(); n != 0 {
		t.Fatalf("%d hub connections left", n)
	}
}

// A refused handshake token maps to the HTTP answer of the contract.
func TestAuthenticateRefusals(t *testing.T) {
	f := newFixture(t, hub.Options{MaxConnsPerUser: 1}, time.Minute)
	for _, c := range []struct {
		token, code string
		status      int
	}{
		{"", protocol.CodeUnauthorized, 401},
		{"nobody", protocol.CodeUnauthorized, 401},
		{"expired", protocol.CodeTokenExpired, 401},
	} {
		no := f.m.New(protocol.SSE, newPeer()).Authenticate(context.Background(), Credential{Value: c.token})
		if no == nil || no.Err.Code != c.code || no.Status != c.status {
			t.Fatalf("token %q: %+v, want %s %d", c.token, no, c.code, c.status)
		}
	}
	s := f.m.New(protocol.SSE, newPeer())
	if no := s.Authenticate(context.Background(), Credential{Value: "alice"}); no != nil {
		t.Fatal(no)
	}
	defer s.End(0)
	no := f.m.New(protocol.SSE, newPeer()).Authenticate(context.Background(), Credential{Value: "alice"})
	if no == nil || no.Status != 429 || no.Err.Code != protocol.CodeRateLimitExceeded {
		t.Fatalf("a second connection over MaxConnsPerUser: %+v", no)
	}
}

// Frames over the rate limit are refused with retryAfterMs and not acted
// on; a client that keeps going regardless is closed with 4429. auth frames
// do not count.
func TestRateLimit(t *testing.T) {
	f := newFixture(t, hub.Options{RateMaxEvents: 2, RateWindow: time.Hour}, time.Minute)
	p := newPeer()
	s := f.m.New(protocol.WebSocket, p)
	if no := s.Authenticate(context.Background(), Credential{Value: "alice"}); no != nil {
		t.Fatal(no)
	}
	defer s.End(0)
	s.Receive(frame("ping", nil, 1))
	s.Receive(frame("ping", nil, 2))
	p.expectEvent(t, "pong", 1)
	p.expectEvent(t, "pong", 2)
	s.Receive(frame("ping", nil, 3))
	if d := p.expectError(t, protocol.CodeRateLimitExceeded, 3); d["retryAfterMs"] == nil {
		t.Fatalf("no retryAfterMs: %v", d)
	}
	s.Receive(frame("auth", map[string]string{"token": "alice"}, 4))
	p.expectEvent(t, "authenticated", 4)
	// The refused ping above was the first of the run: abuseRun-1 more
	// make the run, and the last of them closes.
	for i := 0; i < abuseRun-1; i++ {
		s.Receive(frame("ping", nil, 5))
	}
	for i := 0; i < abuseRun-1; i++ {
		p.expectError(t, protocol.CodeRateLimitExceeded, 5)
	}
	p.expectClose(t, protocol.CloseTooMany)
}

// A session that ends while its auth frame is being handled leaves no hub
// connection behind.
func TestEndDuringAuth(t *testing.T) {
	f := newFixture(t, hub.Options{}, time.Minute)
	for i := 0; i < 200; i++ {
		s := f.m.New(protocol.WebSocket, newPeer())
		s.Receive(frame("auth", map[string]string{"token": "alice"}, 1))
		s.End(0)
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.hub.Len() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d hub connections left after every session ended", f.hub.Len())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Typing goes to the project's other members, not back to the sender.
func TestTypingRelayed(t *testing.T) {
	f := newFixture(t, hub.Options{}, time.Minute)
	pa, pb := newPeer(), newPeer()
	a, b := f.m.New(protocol.WebSocket, pa), f.m.New(protocol.SSE, pb)
	for _, x := range []struct {
		s   *Session
		p   *peer
		tok string
	}{{a, pa, "alice"}, {b, pb, "bob"}} {
		if no := x.s.Authenticate(context.Background(), Credential{Value: x.tok}); no != nil {
			t.Fatal(no)
		}
		defer x.s.End(0)
		if _, e := x.s.Join(context.Background(), "p1", nil, nil); e != nil {
			t.Fatal(e)
		}
		x.p.expectEvent(t, "joined_project", 0)
	}
	a.Receive(frame("typing_start", map[string]string{"projectId": "p1", "storyId": "s1"}, 1))
	m := pb.next(t)
	if m["event"] != "typing_start" || m["projectId"] != "p1" || !strings.Contains(mustJSON(m["data"]), `"userId":"alice"`) {
		t.Fatalf("relayed typing: %v", m)
	}
	a.Receive(frame("ping", nil, 2))
	if m := pa.next(t); m["event"] != "pong" {
		t.Fatalf("the sender got %v before its pong", m)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// A token's expiry closes the session only once the verifier's leeway has
// passed too: a token accepted inside the leeway is not cut at once.
func TestExpiryIncludesLeeway(t *testing.T) {
	f := newFixture(t, hub.Options{}, time.Minute)
	m := NewManager(Options{Hub: f.hub, Auth: f.m.auth, Leeway: time.Hour})
	s := m.New(protocol.SSE, newPeer())
	if no := s.Authenticate(context.Background(), Credential{Value: "soon"}); no != nil {
		t.Fatal(no)
	}
	s.Start()
	defer s.End(0)
	m.deadlines.mu.Lock()
	at := s.deadlineAt
	m.deadlines.mu.Unlock()
	if want := s.expires.Add(time.Hour); !at.Equal(want) {
		t.Fatalf("expiry scheduled at %v, want exp + leeway %v", at, want)
	}
}

// auth frames have a limit of their own per connection, the first one
// included; more are refused without being verified, and they do not
// count toward the user's frames.
func TestAuthFrameLimit(t *testing.T) {
	f := newFixture(t, hub.Options{RateMaxEvents: 3, RateWindow: time.Hour}, time.Minute)
	tok := f.m.auth.Verifier.(tokens)
	verified := 0
	counting := verifierFunc(func(token string) (*auth.Claims, error) { verified++; return tok.Verify(token) })
	m := NewManager(Options{Hub: f.hub, Auth: &Authenticator{Verifier: counting, Users: f.st}, RateWindow: time.Hour, AuthFrames: 10})
	p := newPeer()
	s := m.New(protocol.WebSocket, p)
	defer s.End(0)
	for i := 1; i <= 10; i++ {
		s.Receive(frame("auth", map[string]string{"token": "alice"}, i))
		p.expectEvent(t, "authenticated", float64(i))
	}
	s.Receive(frame("auth", map[string]string{"token": "alice"}, 11))
	if d := p.expectError(t, protocol.CodeRateLimitExceeded, 11); d["retryAfterMs"] == nil {
		t.Fatalf("no retryAfterMs: %v", d)
	}
	if verified != 10 {
		t.Fatalf("%d tokens verified, want 10: the refused frame must not be", verified)
	}
	s.Receive(frame("ping", nil, 12)) // the user's own limit is untouched
	p.expectEvent(t, "pong", 12)
}

type verifierFunc func(string) (*auth.Claims, error)

func (v verifierFunc) Verify(token string) (*auth.Claims, error) { return v(token) }
