// Package httpguard holds what an HTTP request must pass before a transport
// or the API looks at it: the origin policy (WEBSOCKET_CORS_ORIGIN), the
// client's address behind trusted proxies (TRUSTED_PROXIES), the
// per-address rate of new connections and the per-address count of open
// plain-HTTP connections.
package httpguard

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"golang.org/x/time/rate"
)

// Proxies are the addresses of the reverse proxies in front of the service
// (TRUSTED_PROXIES). Only a request that comes from one of them has its
// X-Forwarded-For believed; anyone else could write any address there and
// escape the per-address limits.
type Proxies []netip.Prefix

// ParseProxies reads a comma-separated list of addresses and CIDR ranges.
func ParseProxies(list string) (Proxies, error) {
	var p Proxies
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !strings.Contains(f, "/") {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("%q is not an IP address or CIDR range", f)
			}
			p = append(p, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		pre, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not an IP address or CIDR range", f)
		}
		p = append(p, netip.PrefixFrom(pre.Addr().Unmap(), pre.Bits()).Masked())
	}
	return p, nil
}

// Contains reports whether a "host:port" or bare address is a proxy's.
func (p Proxies) Contains(addr string) bool {
	a, err := netip.ParseAddr(hostOf(addr))
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, pre := range p {
		if pre.Contains(a) {
			return true
		}
	}
	return false
}

// ClientIP returns the function that finds a request's client address:
// the direct peer's, or, when the peer is a proxy, the right-most
// X-Forwarded-For entry that is not a proxy's (entries further left were
// written by the client and prove nothing). echo's extractor does the
// walk; every range echo trusts by default (loopback, private networks) is
// turned off so that only the listed ones count.
func (p Proxies) ClientIP() func(*http.Request) string {
	if len(p) == 0 {
		return echo.ExtractIPDirect()
	}
	opts := []echo.TrustOption{echo.TrustLoopback(false), echo.TrustLinkLocal(false), echo.TrustPrivateNet(false)}
	for _, pre := range p {
		opts = append(opts, echo.TrustIPRange(&net.IPNet{IP: pre.Addr().AsSlice(), Mask: net.CIDRMask(pre.Bits(), pre.Addr().BitLen())}))
	}
	return echo.ExtractIPFromXFFHeader(opts...)
}

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
	rate     rate.Limit
	burst    int
	clientIP func(*http.Request) string

	mu    sync.Mutex
	addrs map[string]*rate.Limiter
	swept time.Time
}

// NewAddrLimiter allows perSecond new connections per client address (as
// proxies.ClientIP finds it), with bursts of burst. perSecond <= 0 disables
// the limit.
func NewAddrLimiter(perSecond float64, burst int, proxies Proxies) *AddrLimiter {
	return &AddrLimiter{rate: rate.Limit(perSecond), burst: burst, clientIP: proxies.ClientIP(), addrs: make(map[string]*rate.Limiter)}
}

// Allow takes one handshake of the request's address.
func (l *AddrLimiter) Allow(r *http.Request) bool {
	if l == nil || l.rate <= 0 {
		return true
	}
	host := l.clientIP(r)
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
// SSE streams have limits of their own. A trusted proxy's connections are
// not counted: they carry every client behind it. Hand ConnState to
// http.Server.
type ConnLimiter struct {
	max     int
	proxies Proxies
	refused atomic.Uint64

	mu    sync.Mutex
	conns map[net.Conn]string // the counted connections and their address
	addrs map[string]int
}

// NewConnLimiter allows max connections per address but the proxies';
// max <= 0 returns nil, which allows any number.
func NewConnLimiter(max int, proxies Proxies) *ConnLimiter {
	if max <= 0 {
		return nil
	}
	return &ConnLimiter{max: max, proxies: proxies, conns: make(map[net.Conn]string), addrs: make(map[string]int)}
}

// ConnState counts a new connection, closing it at once when its address
// already has the most allowed, and forgets it when it is hijacked or closed.
func (l *ConnLimiter) ConnState(c net.Conn, state http.ConnState) {
	if l == nil {
		return
	}
	switch state {
	case http.StateNew:
		addr := c.RemoteAddr().String()
		if l.proxies.Contains(addr) {
			return
		}
		host := hostOf(addr)
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
