package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// claims reads the iat and exp claims of a JWT without verifying it.
func claims(token string) (iat, exp time.Time, hasIat, hasExp bool) {
	parts := strings.Split(token, ".")
	if len(parts) < 2 {
		return
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return
	}
	var c struct {
		Iat *float64 `json:"iat"`
		Exp *float64 `json:"exp"`
	}
	if json.Unmarshal(b, &c) != nil {
		return
	}
	if c.Iat != nil {
		iat, hasIat = time.UnixMilli(int64(*c.Iat*1000)), true
	}
	if c.Exp != nil {
		exp, hasExp = time.UnixMilli(int64(*c.Exp*1000)), true
	}
	return
}

// tokenExpiry returns the token's exp (ok false when it has none).
func tokenExpiry(token string) (time.Time, bool) {
	_, exp, _, ok := claims(token)
	return exp, ok
}

// refreshDelay is how long to wait before asking for a new token: the
// refresh happens min(30 s, 10% of the token's lifetime) before exp. The
// lifetime runs from iat, or from now when the token has none. ok is false
// for a token without exp.
func refreshDelay(token string, now time.Time) (time.Duration, bool) {
	iat, exp, hasIat, hasExp := claims(token)
	if !hasExp {
		return 0, false
	}
	if !hasIat {
		iat = now
	}
	lead := min(30*time.Second, max(0, exp.Sub(iat))/10)
	return max(0, exp.Sub(now)-lead), true
}

func (c *Client) obtainToken(ctx context.Context) (failure, bool) {
	if c.opts.GetToken != nil {
		tctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
		tok, err := c.opts.GetToken(tctx)
		cancel()
		if err == nil && tok == "" {
			err = errors.New("GetToken returned no token")
		}
		if err != nil {
			return failure{err: fmt.Errorf("client: GetToken: %w", err)}, false
		}
		c.mu.Lock()
		c.token = tok
		c.mu.Unlock()
		return failure{}, true
	}
	c.mu.Lock()
	tok := c.token
	c.mu.Unlock()
	if exp, ok := tokenExpiry(tok); ok && !exp.After(time.Now()) {
		return failure{fatal: true, err: &Error{Code: "TOKEN_EXPIRED", Message: "the token has expired and no GetToken was given"}}, false
	}
	return failure{}, true
}

// refresher schedules token refreshes for a session: min(30 s, 10% of the
// token's lifetime) before it expires, GetToken runs on a goroutine of its
// own and its token comes on done.
type refresher struct {
	c     *Client
	ctx   context.Context
	timer *time.Timer
	fire  <-chan time.Time // nil: nothing scheduled
	done  chan string      // a new token
}

func (c *Client) newRefresher(ctx context.Context) *refresher {
	r := &refresher{c: c, ctx: ctx, done: make(chan string, 1)}
	r.schedule()
	return r
}

// schedule arms the timer for the current token (nothing without GetToken
// or for a token without exp).
func (r *refresher) schedule() {
	r.stop()
	if r.c.opts.GetToken == nil {
		return
	}
	r.c.mu.Lock()
	tok := r.c.token
	r.c.mu.Unlock()
	if d, ok := refreshDelay(tok, time.Now()); ok {
		r.after(max(d, time.Second))
	}
}

func (r *refresher) after(d time.Duration) {
	r.timer = time.NewTimer(d)
	r.fire = r.timer.C
}

func (r *refresher) stop() {
	if r.timer != nil {
		r.timer.Stop()
	}
	r.timer, r.fire = nil, nil
}

// start calls GetToken in the background (the timer fired).
func (r *refresher) start() {
	r.stop()
	go func() {
		ctx, cancel := context.WithTimeout(r.ctx, r.c.opts.RequestTimeout)
		defer cancel()
		tok, err := r.c.opts.GetToken(ctx)
		if err == nil && tok == "" {
			err = errors.New("GetToken returned no token")
		}
		if err != nil {
			if r.ctx.Err() == nil {
				r.c.log.Warn("saga push: token refresh failed", "err", err)
			}
			tok = ""
		}
		select {
		case r.done <- tok:
		case <-r.ctx.Done():
		}
	}()
}

// got handles a refresh result; it reports whether there is a new token
// (now the client's), and re-arms the timer.
func (r *refresher) got(tok string) bool {
	if tok == "" {
		r.after(5 * time.Second) // try again soon
		return false
	}
	r.c.mu.Lock()
	r.c.token = tok
	r.c.mu.Unlock()
	r.schedule()
	return true
}
