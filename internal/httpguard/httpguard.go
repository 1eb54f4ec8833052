// Package httpguard holds what an HTTP request must pass before a transport
// or the API looks at it: the origin policy (WEBSOCKET_CORS_ORIGIN), the
// per-address rate of new connections and the per-address count of open
// plain-HTTP connections.
package httpguard

import (
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Origins is the WEBSOCKET_CORS_ORIGIN policy: a request without Origin is
// allowed; with one, it must be listed, or, when the list is empty, be the
// request's own host (same origin).
type Origins []string

// Allowed reports whether the request's Origin passes.
func (o Origins) Allowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if len(o) == 0 {
		u, err := url.Parse(origin)
		return err == nil && strings.EqualFold(u.Host, r.Host)
	}
	return o.Listed(origin)
}

// Listed reports whether origin is in the list (or the list allows any).
func (o Origins) Listed(origin string) bool {
	for _, a := range o {
		if a == "*" || strings.EqualFold(strings.TrimRight(a, "/"), origin) {
			return true
		}
	}
	return false
}

// AddrLimiter caps new connections per client address per second, before
// any upgrade or stream starts.
type AddrLimiter struct {
	rate  rate.Limit
	burst int

	mu    sync.Mutex
	addrs map[string]*rate.Limiter
	swept time.Time
}

// NewAddrLimiter allows perSecond new connections per address, with bursts
// of burst. perSecond <= 0 disables the limit.
func NewAddrLimiter(perSecond float64, burst int) *AddrLimiter {
	return &AddrLimiter{rate: rate.Limit(perSecond), burst: burst, addrs: make(map[string]*rate.Limiter)}
}

// Allow takes one handshake of the request's address.
func (l *AddrLimiter) Allow(r *http.Request) bool {
	if l == nil || l.rate <= 0 {
		return true
	}
	host := hostOf(r.RemoteAddr)
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > time.Minute {
		// Forget addresses whose bucket refilled: they cost memory and
		// would allow nothing more than a fresh bucket does.
		for a, lim := range l.addrs {
			if lim.TokensAt(now) >= float64(l.burst) {
				delete(l.addrs, a)
			}
		}
		l.swept = now
	}
	lim := l.addrs[host]
	if lim == nil {
		lim = rate.NewLimiter(l.rate, l.burst)
		l.addrs[host] = lim
	}
	return lim.AllowN(now, 1)
}

// hostOf is the IP address of a "host:port" remote address.
func hostOf(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// ConnLimiter caps the plain-HTTP connections open at once per client
// address (HTTP_CONNS_PER_ADDRESS), idle keep-alive ones included, so that
// one address cannot hold the server's sockets with requests it sends
// slowly or never. A connection stops counting once hijacked: WebSockets and
// SSE streams have limits of their own. Hand ConnState to http.Server.
type ConnLimiter struct {
	max     int
	refused atomic.Uint64

	mu    sync.Mutex
	conns map[net.Conn]string // the counted connections and their address
	addrs map[string]int
}

// NewConnLimiter allows max connections per address; max <= 0 returns nil,
// which allows any number.
func NewConnLimiter(max int) *ConnLimiter {
	if max <= 0 {
		return nil
	}
	return &ConnLimiter{max: max, conns: make(map[net.Conn]string), addrs: make(map[string]int)}
}

// ConnState counts a new connection, closing it at once when its address
// already has the most allowed, and forgets it when it is hijacked or closed.
func (l *ConnLimiter) ConnState(c net.Conn, state http.ConnState) {
	if l == nil {
		return
	}
	switch state {
	case http.StateNew:
		host := hostOf(c.RemoteAddr().String())
		l.mu.Lock()
		l.conns[c] = host
		l.addrs[host]++
		over := l.addrs[host] > l.max
		l.mu.Unlock()
		if over {
			// Counted until net/http reports it closed, which it does
			// once its read fails.
			l.refused.Add(1)
			c.Close()
		}
	case http.StateHijacked, http.StateClosed:
		l.mu.Lock()
		if host, ok := l.conns[c]; ok {
			delete(l.conns, c)
			if l.addrs[host]--; l.addrs[host] <= 0 {
				delete(l.addrs, host)
			}
		}
		l.mu.Unlock()
	}
}

// Refused counts the connections closed for being over the cap.
func (l *ConnLimiter) Refused() uint64 {
	if l == nil {
		return 0
	}
	return l.refused.Load()
}
