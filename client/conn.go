package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// wsRetryAfter: after a WebSocket failure, reconnects use the transport that
// worked last for this long, then try the WebSocket again.
const wsRetryAfter = 5 * time.Minute

// failure says why an attempt failed or a connection was lost.
type failure struct {
	err   error
	fatal bool // retrying cannot help
	auth  bool // the token was refused: get a new one
}

// run connects, keeps the connection, and reconnects with backoff until
// Close or a fatal failure.
func (c *Client) run(done chan struct{}) {
	defer close(done)
	ctx := c.closeCtx
	attempt := 0
	for {
		f := c.attempt(ctx, &attempt)
		if ctx.Err() != nil {
			c.stop(nil)
			return
		}
		err, fatal := f.err, f.fatal
		if f.auth && c.opts.GetToken == nil {
			// Without GetToken, a handshake refused with 401 cannot get
			// better; a close with 4401 is retried while the token is valid.
			c.mu.Lock()
			tok := c.token
			c.mu.Unlock()
			var e *Error
			if exp, ok := tokenExpiry(tok); ok && !exp.After(time.Now()) {
				fatal = true
				err = &Error{Code: "TOKEN_EXPIRED", Message: "the token has expired and no GetToken was given"}
			} else if errors.As(err, &e) && e.Status == http.StatusUnauthorized {
				fatal = true
			}
		}
		if err != nil {
			c.log.Info("saga push: connection failed", "err", err, "attempt", attempt)
		}
		if fatal {
			c.stop(err)
			return
		}
		if c.opts.ReconnectAttempts > 0 && attempt >= c.opts.ReconnectAttempts {
			c.stop(fmt.Errorf("%w after %d attempts: %w", ErrGaveUp, attempt, err))
			return
		}
		c.mu.Lock()
		delay := c.shutdownIn
		c.shutdownIn = 0
		c.mu.Unlock()
		if delay <= 0 {
			delay = backoff(attempt, c.opts.ReconnectDelay, c.opts.MaxReconnectDelay)
		}
		attempt++
		c.setState(StateReconnecting)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			c.stop(nil)
			return
		}
	}
}

// attempt obtains a token, connects, and when connected keeps the
// connection until it is lost. It returns why it ended.
func (c *Client) attempt(ctx context.Context, attempt *int) failure {
	if f, ok := c.obtainToken(ctx); !ok {
		return f
	}
	var last failure
	for _, name := range c.transportOrder() {
		var f failure
		var ok bool
		if name == WebSocket {
			var ws *wsConn
			if ws, f, ok = c.dialWS(ctx); ok {
				*attempt = 0
				return c.keepWS(ctx, ws)
			}
			c.mu.Lock()
			c.wsFailedAt = time.Now()
			c.mu.Unlock()
		} else {
			var s *sseSession
			if s, f, ok = c.openSSE(ctx); ok {
				*attempt = 0
				return c.keepSSE(ctx, s)
			}
		}
		if ctx.Err() != nil || f.fatal || f.auth {
			return f
		}
		c.log.Debug("saga push: transport failed", "transport", name, "err", f.err)
		last = f
	}
	return last
}

// stop ends the loop: fatal error (err), give-up (err) or Close (nil).
func (c *Client) stop(err error) {
	closing := err == nil
	if closing {
		err = ErrClosed
	}
	c.mu.Lock()
	c.running = false
	if !closing {
		c.stopErr = err
	}
	changed := c.setStateLocked(StateDisconnected)
	c.settleConnectLocked(err)
	if !closing {
		for _, p := range c.projects {
			p.settle(JoinResult{}, err)
		}
	}
	c.mu.Unlock()
	if changed {
		c.notifyState(StateDisconnected)
	}
}

// connected switches to the connected state on transport name.
func (c *Client) connected(name string) {
	c.mu.Lock()
	c.transport = name
	c.preferred = name
	c.stopErr = nil
	changed := c.setStateLocked(StateConnected)
	waiters := c.connWaiters
	c.connWaiters = nil
	c.mu.Unlock()
	c.log.Info("saga push: connected", "transport", name)
	if changed {
		c.notifyState(StateConnected)
	}
	for _, w := range waiters {
		w <- nil
	}
}

// teardown forgets the live connection (its reader becomes stale).
func (c *Client) teardown() {
	c.mu.Lock()
	c.cur = nil
	c.ws = nil
	c.sse = nil
	c.transport = ""
	for _, p := range c.projects {
		p.joined = false
	}
	c.mu.Unlock()
}

// transportOrder lists the transports to try, the last working one first
// (WebSocket again wsRetryAfter after it failed).
func (c *Client) transportOrder() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	list := c.opts.Transports
	pref := c.preferred
	if pref == "" || list[0] == pref || !slices.Contains(list, pref) {
		return list
	}
	if pref == SSE && time.Since(c.wsFailedAt) > wsRetryAfter {
		return list
	}
	out := []string{pref}
	for _, t := range list {
		if t != pref {
			out = append(out, t)
		}
	}
	return out
}

// backoff is exponential backoff with full jitter: a random delay in
// [0, min(max, base*2^attempt)).
func backoff(attempt int, base, ceiling time.Duration) time.Duration {
	d := base
	for i := 0; i < attempt && d < ceiling; i++ {
		d *= 2
	}
	return jitter(min(d, ceiling))
}

// jitter is a random duration in [0, d).
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

func (c *Client) setState(s State) {
	c.mu.Lock()
	changed := c.setStateLocked(s)
	c.mu.Unlock()
	if changed {
		c.notifyState(s)
	}
}

// setStateLocked changes the state and reports whether it changed; the
// caller calls notifyState after unlocking.
func (c *Client) setStateLocked(s State) bool {
	if c.state == s || (c.closed && s != StateDisconnected) {
		return false
	}
	c.state = s
	return true
}

func (c *Client) notifyState(s State) {
	c.log.Debug("saga push client state", "state", s)
	if c.opts.OnStateChange != nil {
		c.opts.OnStateChange(s)
	}
}

func (c *Client) settleConnectLocked(err error) {
	for _, w := range c.connWaiters {
		w <- err
	}
	c.connWaiters = nil
}

// endpoint returns the URL of path on the server, with query q.
func (c *Client) endpoint(path string, q string) string {
	u := *c.base
	u.Path = strings.TrimRight(u.Path, "/") + path
	u.RawPath = ""
	u.RawQuery = q
	return u.String()
}

// health GETs /api/websocket/health: any HTTP answer means reachable.
func (c *Client) health(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.endpoint("/api/websocket/health", ""), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Cache-Control", "no-store")
	resp, err := c.http.Do(req)
	if err != nil {
		return &Error{Code: "TRANSPORT_FAILED", Message: "server not reachable: " + err.Error()}
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return nil
}

// httpFailure turns a refused handshake (status, body) into a failure: 401
// is an auth failure, 403 fatal (origin refused), anything else a transport
// failure.
func httpFailure(status int, body []byte, what string) (failure, *Error) {
	var b struct {
		Error *Error `json:"error"`
	}
	e := &Error{Code: "HTTP_" + strconv.Itoa(status), Message: what + ": HTTP " + strconv.Itoa(status)}
	if json.Unmarshal(body, &b) == nil && b.Error != nil && b.Error.Code != "" {
		e = b.Error
	}
	e.Status = status
	switch status {
	case http.StatusUnauthorized:
		return failure{err: e, auth: true}, e
	case http.StatusForbidden:
		return failure{err: e, fatal: true}, e
	}
	return failure{err: &Error{Code: "TRANSPORT_FAILED", Message: what + ": " + e.Message, Status: status}}, e
}
