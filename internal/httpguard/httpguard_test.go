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
	l := NewConnLimiter(2, nil)
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
	off := NewConnLimiter(0, nil)
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

func TestProxiesClientIP(t *testing.T) {
	if _, err := ParseProxies("10.0.0.1, nonsense"); err == nil {
		t.Error("ParseProxies accepted nonsense")
	}
	p, err := ParseProxies(" 10.0.0.1 ,192.168.0.0/16,, ::1")
	if err != nil {
		t.Fatal(err)
	}
	ip := p.ClientIP()
	none := Proxies(nil).ClientIP()
	for _, tc := range []struct {
		peer, xff, want, wantNone string
	}{
		// Not from a proxy: its X-Forwarded-For is anyone's word.
		{"203.0.113.9:4000", "198.51.100.1", "203.0.113.9", "203.0.113.9"},
		{"127.0.0.1:4000", "198.51.100.1", "127.0.0.1", "127.0.0.1"}, // loopback is not trusted unless listed
		// From a proxy: the right-most address that is not a proxy's.
		{"10.0.0.1:4000", "198.51.100.1", "198.51.100.1", "10.0.0.1"},
		{"10.0.0.1:4000", "6.6.6.6, 198.51.100.1, 192.168.3.4", "198.51.100.1", "10.0.0.1"},
		{"[::1]:4000", "198.51.100.2", "198.51.100.2", "::1"},
		{"10.0.0.1:4000", "", "10.0.0.1", "10.0.0.1"},
		{"10.0.0.1:4000", "not-an-ip", "10.0.0.1", "10.0.0.1"},
	} {
		r := httptest.NewRequest("GET", "/ws", nil)
		r.RemoteAddr = tc.peer
		if tc.xff != "" {
			r.Header.Set("X-Forwarded-For", tc.xff)
		}
		if got := ip(r); got != tc.want {
			t.Errorf("peer %s, X-Forwarded-For %q: client %s, want %s", tc.peer, tc.xff, got, tc.want)
		}
		if got := none(r); got != tc.wantNone {
			t.Errorf("no proxies: peer %s, X-Forwarded-For %q: client %s, want %s", tc.peer, tc.xff, got, tc.wantNone)
		}
	}
}

// Behind a proxy, every client has its own handshake budget, and the
// proxy's connections are not capped as one client's.
func TestLimitsBehindProxy(t *testing.T) {
	p, _ := ParseProxies("10.0.0.1")
	l := NewAddrLimiter(1, 1, p)
	req := func(peer, xff string) *http.Request {
		r := httptest.NewRequest("GET", "/ws", nil)
		r.RemoteAddr = peer
		r.Header.Set("X-Forwarded-For", xff)
		return r
	}
	if !l.Allow(req("10.0.0.1:1", "198.51.100.1")) || !l.Allow(req("10.0.0.1:2", "198.51.100.2")) {
		t.Fatal("two clients behind the proxy share one budget")
	}
	if l.Allow(req("10.0.0.1:3", "198.51.100.1")) {
		t.Fatal("a client behind the proxy got past its budget")
	}
	// A client that writes X-Forwarded-For itself gains nothing.
	if !l.Allow(req("203.0.113.9:1", "198.51.100.7")) || l.Allow(req("203.0.113.9:2", "198.51.100.8")) {
		t.Fatal("a direct client's own X-Forwarded-For was believed")
	}

	c := NewConnLimiter(1, p)
	a, b := from("10.0.0.1", 1), from("10.0.0.1", 2)
	c.ConnState(a, http.StateNew)
	c.ConnState(b, http.StateNew)
	if a.closed || b.closed {
		t.Fatal("the proxy's connections were capped")
	}
	c.ConnState(a, http.StateClosed)
	c.ConnState(b, http.StateClosed)
	if len(c.conns) != 0 || len(c.addrs) != 0 {
		t.Errorf("state left: %v %v", c.conns, c.addrs)
	}
}
