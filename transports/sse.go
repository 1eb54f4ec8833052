package transports

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"sagapush/hub"
)

const sseTransportName = "sse"

// SSEOptions configure the Server-Sent Events transport.
type SSEOptions struct {
	Heartbeat time.Duration // comment line interval (default 15s)
	Retry     time.Duration // the retry: hint for browsers (default 2s)
	// WriteTimeout bounds each write to the client (default 30s): a client
	// that takes no byte for that long is gone. It is a deadline per write,
	// not a server WriteTimeout, so it never cuts a healthy stream.
	WriteTimeout time.Duration
	Origins      Origins
	Handshakes   *AddrLimiter
	Logger       *slog.Logger
}

// SSE serves GET /sse?projects=P1,P2: the same hub, messages and guarantees
// as the WebSocket, for clients behind proxies that break WebSockets.
type SSE struct {
	hub  *hub.Hub
	auth *Authenticator
	opts SSEOptions
	sent prometheus.Counter

	mu      sync.Mutex
	streams int
}

// NewSSE returns the transport.
func NewSSE(h *hub.Hub, a *Authenticator, opts SSEOptions) *SSE {
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 15 * time.Second
	}
	if opts.Retry <= 0 {
		opts.Retry = 2 * time.Second
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &SSE{hub: h, auth: a, opts: opts, sent: h.Metrics().MessagesOut.WithLabelValues(sseTransportName)}
}

// Len counts open streams.
func (s *SSE) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams
}

// Cursor is what an SSE event id carries: the last seq delivered per project
// of the stream. Clients treat it as opaque; it reads "P1:17,P2:4", the same
// form as the since parameter.
type Cursor map[string]int64

// ParseCursor reads a cursor or a since parameter.
func ParseCursor(s string) (Cursor, error) {
	c := Cursor{}
	if strings.TrimSpace(s) == "" {
		return c, nil
	}
	for _, part := range strings.Split(s, ",") {
		id, seq, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok || !ValidID(id) {
			return nil, errors.New("expected P1:17,P2:4")
		}
		n, err := strconv.ParseInt(seq, 10, 64)
		if err != nil || n < 0 {
			return nil, errors.New("a seq must be a non-negative integer")
		}
		c[id] = n
	}
	return c, nil
}

func (s *SSE) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	metrics := s.hub.Metrics().Handshakes
	refuse := func(status int, code, msg, outcome string) {
		metrics.WithLabelValues(sseTransportName, outcome).Inc()
		WriteHTTPError(w, status, code, msg)
	}
	if !s.opts.Handshakes.Allow(r) {
		w.Header().Set("Retry-After", "1")
		refuse(http.StatusTooManyRequests, "RATE_LIMIT_EXCEEDED", "too many connection attempts from this address", "rate_limited")
		return
	}
	if !s.opts.Origins.Allowed(r) {
		refuse(http.StatusForbidden, "FORBIDDEN", "origin not allowed", "origin")
		return
	}
	if o := r.Header.Get("Origin"); o != "" && len(s.opts.Origins) > 0 {
		w.Header().Set("Access-Control-Allow-Origin", o)
		w.Header().Add("Vary", "Origin")
	}
	u, exp, e := s.auth.Authenticate(r.Context(), TokenFromRequest(r))
	if e != nil {
		refuse(HTTPStatus(e), e.Code, e.Message, "unauthorized")
		return
	}
	q := r.URL.Query()
	var projects []string
	for _, p := range strings.Split(q.Get("projects"), ",") {
		if p = strings.TrimSpace(p); p == "" || slices.Contains(projects, p) {
			continue
		}
		if !ValidID(p) {
			refuse(http.StatusBadRequest, "INVALID_MESSAGE", "invalid project id in projects", "bad_request")
			return
		}
		projects = append(projects, p)
	}
	if len(projects) == 0 {
		refuse(http.StatusBadRequest, "INVALID_MESSAGE", "projects is required: /sse?projects=P1,P2", "bad_request")
		return
	}
	since, err := ParseCursor(q.Get("since"))
	if err != nil {
		refuse(http.StatusBadRequest, "INVALID_MESSAGE", "since: "+err.Error(), "bad_request")
		return
	}
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = q.Get("lastEventId")
	}
	resume, err := ParseCursor(last)
	if err != nil {
		refuse(http.StatusBadRequest, "INVALID_MESSAGE", "Last-Event-ID: "+err.Error(), "bad_request")
		return
	}
	for p, n := range resume { // the cursor wins over since
		since[p] = n
	}

	st := &sseStream{wake: make(chan struct{}, 1), done: make(chan struct{})}
	conn, err := s.hub.Connect(u, sseTransportName, st)
	if err != nil {
		status := http.StatusTooManyRequests
		if errors.Is(err, hub.ErrClosed) {
			status = http.StatusServiceUnavailable
		}
		refuse(status, "RATE_LIMIT_EXCEEDED", err.Error(), "refused")
		return
	}
	handedOff := false
	defer func() {
		if !handedOff {
			s.hub.Disconnect(conn)
		}
	}()

	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	var joined []string
	var denied []hub.ErrorData
	// What the joins queued is taken out of the hub's queue after each
	// join: the replays of several projects together may exceed QueueLimit,
	// which is meant for a client that does not read, not for a stream that
	// has not started yet.
	var first []*hub.Frame
	// The cursor starts where each project starts: after the client's
	// since when that is recovered, else at the project's seq at the join.
	seqs := make(map[string]int64, len(projects))
	for _, p := range projects {
		var from *int64
		if n, ok := since[p]; ok {
			from = &n
		}
		res, err := s.hub.Join(ctx, conn, p, from, nil)
		first = conn.Pull(first, 0)
		if err != nil {
			denied = append(denied, joinError(err, p))
			continue
		}
		joined = append(joined, p)
		seqs[p] = res.Seq
		if res.Recovered != nil && *res.Recovered {
			seqs[p] = *from
		}
	}
	cancel()
	if len(joined) == 0 {
		if slices.ContainsFunc(denied, func(d hub.ErrorData) bool { return d.Code == "PROJECT_ACCESS_DENIED" }) {
			refuse(http.StatusForbidden, "PROJECT_ACCESS_DENIED", "no listed project may be accessed", "forbidden")
		} else {
			refuse(http.StatusServiceUnavailable, "JOIN_PROJECT_ERROR", "the projects could not be joined now", "join_failed")
		}
		return
	}
	// Not through the hub's queue (Send): behind big replays the queue
	// may be over QueueLimit, and the error would abort the stream.
	for _, d := range denied {
		first = append(first, hub.ErrorFrame(d, nil))
	}
	slices.Sort(joined)
	cur := cursor{projects: joined, seqs: make([]int64, len(joined))}
	for i, p := range joined {
		cur.seqs[i] = seqs[p]
	}
	// Every joined_project comes first (PROTOCOL section 4), then replays
	// and live events; a stable partition keeps each project's order.
	first = conn.Pull(first, 0)
	slices.SortStableFunc(first, func(a, b *hub.Frame) int {
		return boolRank(a.Name != "joined_project") - boolRank(b.Name != "joined_project")
	})

	// Take the connection over: the stream's own goroutine writes it from
	// here, and this handler returns, so net/http frees its request,
	// response, buffers and the handler's deep stack, which it would
	// otherwise keep for the stream's whole life.
	nc, brw, err := http.NewResponseController(unwrapWriter(w)).Hijack()
	if err != nil {
		refuse(http.StatusInternalServerError, "INTERNAL_ERROR", "streaming is not supported on this connection", "hijack_failed")
		return
	}
	_ = brw // its buffers hold nothing we need: the client sends nothing more
	metrics.WithLabelValues(sseTransportName, "ok").Inc()
	s.mu.Lock()
	s.streams++
	s.mu.Unlock()
	st.attach(nc)

	head := sseHead
	if o := w.Header().Get("Access-Control-Allow-Origin"); o != "" {
		head += "Access-Control-Allow-Origin: " + o + "\r\nVary: Origin\r\n"
	}
	head += "\r\nretry: " + strconv.FormatInt(s.opts.Retry.Milliseconds(), 10) + "\n\n"
	ss := &sseWriter{s: s, conn: conn, st: st, nc: nc, cur: cur}
	handedOff = true
	if !ss.write([]byte(head), first) {
		ss.end()
		return
	}
	go ss.loop(exp)
}

// sseHead is the response head of every stream. The body ends when the
// connection closes (no length, no chunking: a raw stream proxies and
// parses most simply).
const sseHead = "HTTP/1.1 200 OK\r\n" +
	"Content-Type: text/event-stream\r\n" +
	"Cache-Control: no-cache, no-transform\r\n" +
	"X-Accel-Buffering: no\r\n" +
	"Connection: close\r\n"

// cursor is the stream's position: the last seq written per project, in
// the order of projects (sorted).
type cursor struct {
	projects []string
	seqs     []int64
}

func (c *cursor) advance(projectID string, seq int64) bool {
	for i, p := range c.projects {
		if p == projectID {
			c.seqs[i] = seq
			return true
		}
	}
	return false
}

func (c *cursor) append(b []byte) []byte {
	for i, p := range c.projects {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, p...)
		b = append(b, ':')
		b = strconv.AppendInt(b, c.seqs[i], 10)
	}
	return b
}

// sseWriter owns one hijacked stream.
type sseWriter struct {
	s    *SSE
	conn *hub.Conn
	st   *sseStream
	nc   net.Conn
	cur  cursor
}

// batchPool holds the buffers batches are built in: a stream holds none
// while idle.
var batchPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// write writes prefix and frames in one write and reports whether the
// stream goes on.
func (w *sseWriter) write(prefix []byte, frames []*hub.Frame) bool {
	buf := batchPool.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 64<<10 {
			buf.Reset()
			batchPool.Put(buf)
		}
	}()
	buf.Write(prefix)
	goOn := true
	for i, f := range frames {
		frames[i] = nil
		if f.CloseCode > 0 {
			goOn = false
			break
		}
		var id []byte
		if f.Seq > 0 && w.cur.advance(f.ProjectID, f.Seq) {
			id = w.cur.append(make([]byte, 0, 64))
		}
		writeSSE(buf, f.Name, f.JSON, id)
		w.s.sent.Inc()
	}
	if buf.Len() == 0 {
		return goOn
	}
	if !w.st.arm(w.s.opts.WriteTimeout) {
		return false
	}
	_, err := w.nc.Write(buf.Bytes())
	return err == nil && goOn
}

// loop writes what the hub queues until the client leaves, the token
// expires, the hub closes the stream, or it falls behind.
func (w *sseWriter) loop(exp time.Time) {
	defer w.end()
	heartbeat := time.NewTicker(w.s.opts.Heartbeat)
	defer heartbeat.Stop()
	var expired <-chan time.Time
	if !exp.IsZero() {
		t := time.NewTimer(time.Until(exp))
		defer t.Stop()
		expired = t.C
	}
	var frames []*hub.Frame
	for {
		select {
		case <-w.st.done:
			return // aborted: too slow; the client resumes with its cursor
		case <-expired:
			var buf bytes.Buffer
			writeSSE(&buf, "error", hub.ErrorFrame(hub.ErrorData{Code: "TOKEN_EXPIRED", Message: "token expired"}, nil).JSON, nil)
			w.write(buf.Bytes(), nil)
			return
		case <-heartbeat.C:
			if w.gone() || !w.write([]byte(": heartbeat\n\n"), nil) {
				return
			}
		case <-w.st.wake:
			frames = w.conn.Pull(frames[:0], 0)
			if !w.write(nil, frames) {
				return
			}
			if cap(frames) > 64 {
				frames = nil
			}
		}
	}
}

// gone reports whether the client closed its side. Nothing reads the
// stream's socket (that would take a goroutine per stream), so it is
// probed at each heartbeat: a closed peer reads EOF at once.
func (w *sseWriter) gone() bool {
	var b [1]byte
	w.nc.SetReadDeadline(pastDeadline)
	_, err := w.nc.Read(b[:])
	var ne net.Error
	return err == nil || !(errors.As(err, &ne) && ne.Timeout())
}

func (w *sseWriter) end() {
	w.nc.Close()
	w.s.hub.Disconnect(w.conn)
	w.s.mu.Lock()
	w.s.streams--
	w.s.mu.Unlock()
}

// unwrapWriter returns the innermost http.ResponseWriter under wrappers
// that expose it with Unwrap.
func unwrapWriter(w http.ResponseWriter) http.ResponseWriter {
	for {
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return w
		}
		w = u.Unwrap()
	}
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// writeSSE writes one message. JSON holds no raw newline when encoded by
// encoding/json, but split defensively: the spec joins data lines with \n.
func writeSSE(bw *bytes.Buffer, name string, data, id []byte) {
	if id != nil {
		bw.WriteString("id: ")
		bw.Write(id)
		bw.WriteByte('\n')
	}
	bw.WriteString("event: ")
	bw.WriteString(name)
	bw.WriteByte('\n')
	for {
		line, rest, more := bytes.Cut(data, []byte{'\n'})
		bw.WriteString("data: ")
		bw.Write(line)
		bw.WriteByte('\n')
		if !more {
			break
		}
		data = rest
	}
	bw.WriteByte('\n')
}

// sseStream is the hub's Outlet for one stream.
type sseStream struct {
	wake chan struct{}
	done chan struct{}
	once sync.Once

	mu      sync.Mutex
	nc      net.Conn // set once the stream is taken over
	aborted bool
}

// pastDeadline makes a pending or future read or write fail at once.
var pastDeadline = time.Unix(1, 0)

func (st *sseStream) attach(nc net.Conn) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.nc = nc
	if st.aborted {
		nc.SetWriteDeadline(pastDeadline)
	}
}

// arm sets the deadline of the next write; false once aborted.
func (st *sseStream) arm(timeout time.Duration) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.aborted {
		return false
	}
	st.nc.SetWriteDeadline(time.Now().Add(timeout))
	return true
}

func (st *sseStream) Wake() {
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

// Abort ends the stream: the writer returns at once, even from a write
// blocked on a client that reads nothing (the hub aborts exactly those:
// QueueLimit frames behind).
func (st *sseStream) Abort(int, string) {
	st.once.Do(func() { close(st.done) })
	st.mu.Lock()
	defer st.mu.Unlock()
	st.aborted = true
	if st.nc != nil {
		st.nc.SetWriteDeadline(pastDeadline)
	}
}
