package client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
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

// open (re)opens the stream for the wanted projects and waits for its
// response headers. With no project it closes the stream and, while
// connecting, checks that the server answers.
func (s *sseSession) open(ctx context.Context, connecting bool) openResult {
	c := s.c
	s.closeStream()
	c.mu.Lock()
	ids := c.projectIDsLocked()
	key := strings.Join(ids, ",")
	if len(ids) == 0 {
		c.mu.Unlock()
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
	q := url.Values{}
	q.Set("projects", key)
	if c.token != "" {
		q.Set("token", c.token)
	}
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

// ------------------------------------------------------------------ the event stream format

// sseMessage is one dispatched message of an event stream.
type sseMessage struct {
	event string // "message" when the stream named none
	data  []byte // a fresh slice, owned by the receiver
	id    string // the last event id at dispatch ("" when none was ever set)
	retry time.Duration
}

// sseParser reads an event stream as the HTML standard says: lines end with
// CRLF, LF or CR; a leading BOM is skipped; ":" starts a comment; fields are
// event, data, id (ignored when it holds NUL) and retry (digits only); an
// empty line dispatches the message, unless its data is empty.
type sseParser struct {
	r       *bufio.Reader
	max     int
	line    []byte
	skipLF  bool // the previous line ended with CR: skip a LF that follows
	started bool
	lastID  string
	retry   time.Duration
	event   string
	data    []byte
}

var errLineTooLong = errors.New("client: event stream line too long")

func newSSEParser(r io.Reader, max int) *sseParser {
	return &sseParser{r: bufio.NewReaderSize(r, 8<<10), max: max}
}

// readLine returns the next line without its end. The slice is valid until
// the next call. An unterminated last line is dropped (io.EOF).
func (p *sseParser) readLine() ([]byte, error) {
	p.line = p.line[:0]
	for {
		n := p.r.Buffered()
		if n == 0 {
			if _, err := p.r.Peek(1); err != nil {
				return nil, err
			}
			n = p.r.Buffered()
		}
		buf, _ := p.r.Peek(n)
		if p.skipLF {
			p.skipLF = false
			if buf[0] == '\n' {
				p.r.Discard(1)
				continue
			}
		}
		i := bytes.IndexAny(buf, "\r\n")
		if i < 0 {
			if len(p.line)+n > p.max {
				return nil, errLineTooLong
			}
			p.line = append(p.line, buf...)
			p.r.Discard(n)
			continue
		}
		if len(p.line)+i > p.max {
			return nil, errLineTooLong
		}
		p.line = append(p.line, buf[:i]...)
		p.skipLF = buf[i] == '\r'
		p.r.Discard(i + 1)
		if !p.started {
			p.started = true
			p.line = bytes.TrimPrefix(p.line, []byte("\xEF\xBB\xBF"))
		}
		return p.line, nil
	}
}

// next returns the next dispatched message.
func (p *sseParser) next() (sseMessage, error) {
	for {
		line, err := p.readLine()
		if err != nil {
			return sseMessage{}, err
		}
		if len(line) == 0 { // dispatch
			if len(p.data) == 0 {
				p.event = ""
				continue
			}
			data := make([]byte, len(p.data)-1) // without the last LF
			copy(data, p.data)
			m := sseMessage{event: p.event, data: data, id: p.lastID, retry: p.retry}
			if m.event == "" {
				m.event = "message"
			}
			p.event, p.data = "", p.data[:0]
			return m, nil
		}
		if line[0] == ':' {
			continue // a comment (the server's heartbeat)
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(field) {
		case "event":
			p.event = string(value)
		case "data":
			if len(p.data)+len(value) > p.max {
				return sseMessage{}, errLineTooLong
			}
			p.data = append(p.data, value...)
			p.data = append(p.data, '\n')
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				p.lastID = string(value)
			}
		case "retry":
			if ms, ok := digits(value); ok {
				p.retry = time.Duration(ms) * time.Millisecond
			}
		}
	}
}

// digits parses a non-empty string of ASCII digits.
func digits(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
