package httpguard

import (
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

// conn is a net.Conn from a chosen address that records its Close.
type conn struct {
	net.Conn
	addr   net.Addr
	closed bool
}

func (c *conn) RemoteAddr() net.Addr { return c.addr }
func (c *conn) Close() error         { c.closed = true; return nil }

func from(ip string, port int) *conn {
	return &conn{addr: &net.TCPAddr{IP: net.ParseIP(ip), Port: port}}
}

func TestConnLimiter(t *testing.T) {
	l := NewConnLimiter(2)
	a1, a2, a3, b1 := from("10.0.0.1", 1), from("10.0.0.1", 2), from("10.0.0.1", 3), from("10.0.0.2", 1)
	for _, c := range []*conn{a1, a2, b1} {
		l.ConnState(c, http.StateNew)
		l.ConnState(c, http.StateActive)
		l.ConnState(c, http.StateIdle)
	}
	l.ConnState(a3, http.StateNew)
	if !a3.closed || a1.closed || a2.closed || b1.closed {
		t.Fatalf("closed: a1 %v a2 %v a3 %v b1 %v; want the third of 10.0.0.1 alone", a1.closed, a2.closed, a3.closed, b1.closed)
	}
	if l.Refused() != 1 {
		t.Errorf("Refused() = %d, want 1", l.Refused())
	}
	l.ConnState(a3, http.StateClosed)

	// A hijacked connection (a WebSocket) stops counting, and so does a
	// closed one; reports for connections never counted change nothing.
	l.ConnState(a1, http.StateHijacked)
	l.ConnState(a1, http.StateClosed)
	l.ConnState(from("10.0.0.1", 9), http.StateClosed)
	a4 := from("10.0.0.1", 4)
	l.ConnState(a4, http.StateNew)
	if a4.closed {
		t.Fatal("a connection under the cap was closed")
	}
	a5 := from("10.0.0.1", 5)
	l.ConnState(a5, http.StateNew)
	if !a5.closed {
		t.Fatal("a connection over the cap stayed open")
	}
	for _, c := range []*conn{a2, a4, a5, b1} {
		l.ConnState(c, http.StateClosed)
	}
	if len(l.conns) != 0 || len(l.addrs) != 0 {
		t.Errorf("state left after every connection closed: %v %v", l.conns, l.addrs)
	}

	// No cap: a nil limiter allows everything.
	off := NewConnLimiter(0)
	c := from("10.0.0.1", 1)
	off.ConnState(c, http.StateNew)
	if c.closed || off.Refused() != 0 {
		t.Error("a limiter of 0 closed a connection")
	}
}

func TestOrigins(t *testing.T) {
	r := httptest.NewRequest("GET", "http://push.example.com/api/websocket/health", nil)
	for _, tc := range []struct {
		list   Origins
		origin string
		want   bool
	}{
		{nil, "", true},
		{nil, "http://push.example.com", true},
		{nil, "http://evil.example", false},
		{nil, "null", false},
		{Origins{"https://app.example.com/"}, "https://app.example.com", true},
		{Origins{"https://app.example.com"}, "http://push.example.com", false},
		{Origins{"*"}, "http://evil.example", true},
	} {
		r.Header.Set("Origin", tc.origin)
		if got := tc.list.Allowed(r); got != tc.want {
			t.Errorf("%v allows %q: %v, want %v", tc.list, tc.origin, got, tc.want)
		}
	}
}
