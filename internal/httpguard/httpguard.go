// Package httpguard holds what an HTTP request must pass before a transport
// or the API looks at it: the origin policy (WEBSOCKET_CORS_ORIGIN) and the
// per-address rate of new connections.
package httpguard

import (
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
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
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
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
