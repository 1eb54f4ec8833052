package client

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// sseSession is a connection by Server-Sent Events: at most one stream at a
// time, re-opened whenever the joined projects change.
type sseSession struct {
	c        *Client
	reopenCh chan struct{}
	cur      *sseStream // the stream opened last (nil: no project joined); run goroutine only
}

// sseStream is one GET /sse and its reader.
type sseStream struct {
	key    string // the projects of the stream, comma-joined
	cancel context.CancelFunc
	done   chan struct{} // closed when the reader returned
	err    error         // why (set before done closes)
}

// reopen asks the session to re-open its stream for the current projects
// (coalesced: one re-open serves every join and leave made meanwhile).
func (s *sseSession) reopen() {
	select {
	case s.reopenCh <- struct{}{}:
	default:
	}
}

// openResult is the outcome of opening a stream.
type openResult struct {
	ok     bool
	denied []string // HTTP 403 PROJECT_ACCESS_DENIED: every listed project refused
	deny   *Error
	f      failure
}

// openSSE connects by SSE: the stream of the wanted projects, or a health
// check when there is none. Projects refused with 403 are dropped and the
// rest retried.
func (c *Client) openSSE(ctx context.Context) (*sseSession, failure, bool) {
	s := &sseSession{c: c, reopenCh: make(chan struct{}, 1)}
	for {
		r := s.open(ctx, true)
		if r.ok {
			return s, failure{}, true
		}
		if r.denied == nil {
			s.closeStream()
			c.teardown()
			return nil, r.f, false
		}
		c.denyAll(r)
	}
}

// keepSSE runs a connected SSE session until it is lost or the client
// closes.
func (c *Client) keepSSE(ctx context.Context, s *sseSession) failure {
	c.mu.Lock()
	c.sse = s
	key := strings.Join(c.projectIDsLocked(), ",")
	c.mu.Unlock()
	c.connected(SSE)
	if (s.cur == nil && key != "") || (s.cur != nil && s.cur.key != key) {
		s.reopen() // projects joined or left while the stream was opening
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	refresh := c.newRefresher(ctx)
	defer refresh.stop()
	lost := func(f failure) failure {
		c.teardown()
		s.closeStream()
		return f
	}
	for {
		var done chan struct{}
		if s.cur != nil {
			done = s.cur.done
		}
		select {
		case <-ctx.Done():
			return lost(failure{err: ErrClosed})
		case <-done:
			msg := "event stream closed"
			if err := s.cur.err; err != nil && !errors.Is(err, io.EOF) {
				msg += ": " + err.Error()
			}
			return lost(failure{err: &Error{Code: "CONNECTION_CLOSED", Message: msg}})
		case <-s.reopenCh:
			r := s.open(ctx, false)
			if r.denied != nil {
				c.denyAll(r)
				s.reopen()
			} else if !r.ok {
				return lost(r.f)
			}
		case <-refresh.fire:
			refresh.start()
		case tok := <-refresh.done:
			if refresh.got(tok) && s.cur != nil {
				s.reopen() // same projects: resumes from the stream's cursor
			}
		}
	}
}

// denyAll fails the projects of a stream refused with 403.
func (c *Client) denyAll(r openResult) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range r.denied {
		e := &Error{Code: "PROJECT_ACCESS_DENIED", Message: "access to project " + id + " denied", ProjectID: id, Status: http.StatusForbidden}
		if r.deny != nil && r.deny.Message != "" {
			e.Message = r.deny.Message
		}
		c.failProjectLocked(id, e)
	}
	c.log.Warn("saga push: projects refused", "projects", r.denied)
}

// open (re)opens the stream for the wanted projects, with a fresh ticket,
// and waits for its response headers. With no project it closes the stream
// and, while connecting, checks that the server answers.
func (s *sseSession) open(ctx context.Context, connecting bool) openResult {
	c := s.c
	s.closeStream()
	c.mu.Lock()
	none := len(c.projects) == 0
	c.mu.Unlock()
	if none {
		if !connecting {
			return openResult{ok: true}
		}
		hctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
		defer cancel()
		if err := c.health(hctx); err != nil {
			return openResult{f: failure{err: err}}
		}
		return openResult{ok: true}
	}
	tctx, tcancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	ticket, f, ok := c.ticket(tctx)
	tcancel()
	if !ok {
		return openResult{f: f}
	}
	c.mu.Lock()
	ids := c.projectIDsLocked()
	key := strings.Join(ids, ",")
	if len(ids) == 0 { // every project was left meanwhile: no stream
		c.mu.Unlock()
		return openResult{ok: true}
	}
	q := url.Values{}
	q.Set("projects", key)
	q.Set("ticket", ticket)
	if c.cursor != "" && c.cursorKey == key {
		q.Set("lastEventId", c.cursor)
	} else {
		c.cursor = ""
		var since []string
		for _, id := range ids {
			if p := c.projects[id]; p.hasSeq {
				since = append(since, id+":"+itoa(p.lastSeq))
			}
		}
		if len(since) > 0 {
			q.Set("since", strings.Join(since, ","))
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	st := &sseStream{key: key, cancel: cancel, done: make(chan struct{})}
	// From here on, only this stream's messages count: the since above
	// covers everything an older stream accepted.
	c.cur = st
	c.mu.Unlock()

	req, err := http.NewRequestWithContext(sctx, http.MethodGet, c.endpoint("/sse", q.Encode()), nil)
	if err != nil {
		cancel()
		return openResult{f: failure{err: err, fatal: true}}
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	timer := time.AfterFunc(c.opts.RequestTimeout, cancel) // the headers must come in time
	resp, err := c.http.Do(req)
	timer.Stop()
	if err != nil {
		cancel()
		return openResult{f: failure{err: &Error{Code: "TRANSPORT_FAILED", Message: "event stream could not connect: " + err.Error()}}}
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		cancel()
		f, e := httpFailure(resp.StatusCode, body, "event stream refused")
		if resp.StatusCode == http.StatusForbidden && e.Code == "PROJECT_ACCESS_DENIED" {
			return openResult{denied: ids, deny: e}
		}
		return openResult{f: f}
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		resp.Body.Close()
		cancel()
		return openResult{f: failure{err: &Error{Code: "TRANSPORT_FAILED", Message: "event stream has Content-Type " + ct}}}
	}
	s.cur = st
	go st.read(c, resp.Body)
	return openResult{ok: true}
}

// closeStream ends the current stream and waits for its reader.
func (s *sseSession) closeStream() {
	if st := s.cur; st != nil {
		s.cur = nil
		st.cancel()
		<-st.done
	}
}

// read parses the stream and hands each message to the client.
func (st *sseStream) read(c *Client, body io.ReadCloser) {
	defer close(st.done)
	defer body.Close()
	p := newSSEParser(body, int(c.opts.MaxMessageSize))
	for {
		m, err := p.next()
		if err != nil {
			st.err = err
			return
		}
		c.handle(m.data, st, m.id)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
