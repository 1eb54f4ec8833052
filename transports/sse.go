package transports

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/httpguard"
	"github.com/saga-family/sagapush/internal/protocol"
	"github.com/saga-family/sagapush/internal/session"
	"github.com/saga-family/sagapush/internal/sock"
)

// SSEOptions configure the Server-Sent Events transport.
type SSEOptions struct {
	Heartbeat time.Duration // comment line interval (default 15s)
	Retry     time.Duration // the retry: hint for browsers (default 2s)
	// WriteTimeout bounds each write to the client (default 30s): a client
	// that takes no byte for that long is gone. It is a deadline per write,
	// not a server WriteTimeout, so it never cuts a healthy stream.
	WriteTimeout time.Duration
	Origins      httpguard.Origins
	Handshakes   *httpguard.AddrLimiter
}

// SSE serves GET /sse?projects=P1,P2: the same hub, messages and guarantees
// as the WebSocket, for clients behind proxies that break WebSockets.
type SSE struct {
	mu      sync.Mutex
	streams int // open streams, under mu

	hub      *hub.Hub
	sessions *session.Manager
	opts     SSEOptions
	sent     prometheus.Counter
}

// NewSSE returns the transport.
func NewSSE(sm *session.Manager, opts SSEOptions) *SSE {
	orDefault(&opts.Heartbeat, 15*time.Second)
	orDefault(&opts.Retry, 2*time.Second)
	orDefault(&opts.WriteTimeout, 30*time.Second)
	h := sm.Hub()
	initHandshakes(h.Metrics(), protocol.SSE, "origin", "bad_request", "forbidden", "join_failed", "hijack_failed")
	return &SSE{hub: h, sessions: sm, opts: opts, sent: h.Metrics().MessagesOut.WithLabelValues(protocol.SSE)}
}

// Len counts open streams.
func (s *SSE) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams
}

// ServeHTTP parses the query, opens a session, joins its projects and hands
// the stream to a goroutine of its own.
func (s *SSE) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	metrics := s.hub.Metrics()
	fail := func(status int, code, msg, outcome string) {
		refuse(w, protocol.SSE, metrics, &session.Refusal{Status: status, Outcome: outcome, Err: protocol.Error{Code: code, Message: msg}})
	}
	if !admit(w, r, protocol.SSE, s.opts.Handshakes, metrics) {
		return
	}
	if !s.opts.Origins.Allowed(r) {
		fail(http.StatusForbidden, protocol.CodeForbidden, "origin not allowed", "origin")
		return
	}
	if o := r.Header.Get("Origin"); o != "" && len(s.opts.Origins) > 0 {
		w.Header().Set("Access-Control-Allow-Origin", o)
		w.Header().Add("Vary", "Origin")
	}
	st := &sseStream{wake: make(chan struct{}, 1), done: make(chan struct{})}
	sess := s.sessions.New(protocol.SSE, st)
	cred, _ := handshakeCredential(r) // none: refused as a missing token
	if no := sess.Authenticate(r.Context(), cred); no != nil {
		refuse(w, protocol.SSE, metrics, no)
		return
	}
	handedOff := false
	defer func() {
		if !handedOff {
			sess.End(0)
		}
	}()
	q := r.URL.Query()
	projects, err := protocol.ParseProjects(q.Get("projects"))
	if err != nil {
		fail(http.StatusBadRequest, protocol.CodeInvalidMessage, err.Error(), "bad_request")
		return
	}
	since, err := protocol.ParseCursor(q.Get("since"))
	if err != nil {
		fail(http.StatusBadRequest, protocol.CodeInvalidMessage, "since: "+err.Error(), "bad_request")
		return
	}
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = q.Get("lastEventId")
	}
	resume, err := protocol.ParseCursor(last)
	if err != nil {
		fail(http.StatusBadRequest, protocol.CodeInvalidMessage, "Last-Event-ID: "+err.Error(), "bad_request")
		return
	}
	for p, n := range resume { // the cursor wins over since
		since[p] = n
	}

	conn := sess.Conn()
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	// Each join replays from memory only what fits in what is left of the
	// connection's budget, and streams the rest as it drains. The cursor
	// starts where each project starts: after the client's since when that
	// is recovered, else at the project's seq at the join.
	joined, denied := sess.JoinAll(ctx, projects, since)
	cancel()
	seqs := make(map[string]int64, len(joined))
	for _, res := range joined {
		seqs[res.ProjectID] = res.Seq
		if res.Recovered != nil && *res.Recovered {
			seqs[res.ProjectID] = since[res.ProjectID]
		}
	}
	if len(seqs) == 0 {
		if slices.ContainsFunc(denied, func(d protocol.Error) bool { return d.Code == protocol.CodeProjectAccessDenied }) {
			fail(http.StatusForbidden, protocol.CodeProjectAccessDenied, "no listed project may be accessed", "forbidden")
		} else {
			fail(http.StatusServiceUnavailable, protocol.CodeJoinProjectError, "the projects could not be joined now", "join_failed")
		}
		return
	}
	// Every joined_project comes first (docs/protocol.md, SSE), then
	// replays and live events; a stable partition keeps each project's
	// order. The refusals come after the joins, not through the hub's
	// queue: they must not count against a budget the replays may fill.
	first := conn.Pull(nil, 0)
	for _, d := range denied {
		first = append(first, hub.ErrorFrame(d, nil))
	}
	slices.SortStableFunc(first, func(a, b *hub.Frame) int {
		return boolRank(a.Name != protocol.JoinedProject) - boolRank(b.Name != protocol.JoinedProject)
	})

	// Take the connection over: the stream's own goroutine writes it from
	// here, and this handler returns, so net/http frees its request,
	// response, buffers and the handler's deep stack, which it would
	// otherwise keep for the stream's whole life.
	nc, brw, err := http.NewResponseController(unwrapWriter(w)).Hijack()
	if err != nil {
		fail(http.StatusInternalServerError, protocol.CodeInternalError, "streaming is not supported on this connection", "hijack_failed")
		return
	}
	_ = brw // its buffers hold nothing we need: the client sends nothing more
	metrics.Handshakes.WithLabelValues(protocol.SSE, "ok").Inc()
	s.mu.Lock()
	s.streams++
	s.mu.Unlock()
	st.attach(nc)
	ss := &sseWriter{s: s, sess: sess, conn: conn, st: st, nc: nc, cur: protocol.NewPosition(seqs)}
	handedOff = true
	// Nothing reads the socket, and a write to a client that sent its FIN
	// succeeds: the watch is what notices a client that closed its
	// connection, at once, so that it leaves the stats, the user's
	// connection limit and its rooms then, not at a later write.
	ss.unwatch = sock.WatchHangup(nc, st.abort)

	head := sseHead
	if o := w.Header().Get("Access-Control-Allow-Origin"); o != "" {
		head += "Access-Control-Allow-Origin: " + o + "\r\nVary: Origin\r\n"
	}
	head += "\r\nretry: " + strconv.FormatInt(s.opts.Retry.Milliseconds(), 10) + "\n\n"
	if !ss.write([]byte(head), first) {
		ss.end()
		return
	}
	sess.Start() // arms the token's expiry, which ends the stream
	go ss.loop()
}

// sseHead is the response head of every stream. The body ends when the
// connection closes (no length, no chunking: a raw stream proxies and
// parses most simply).
const sseHead = "HTTP/1.1 200 OK\r\n" +
	"Content-Type: text/event-stream\r\n" +
	"Cache-Control: no-cache, no-transform\r\n" +
	"X-Accel-Buffering: no\r\n" +
	"Connection: close\r\n"

// sseWriter owns one hijacked stream.
type sseWriter struct {
	s       *SSE
	sess    *session.Session
	conn    *hub.Conn
	st      *sseStream
	nc      net.Conn
	unwatch func() // ends the hang-up watch: before nc closes
	cur     protocol.Position
}

// batchPool holds the buffers batches are built in: a stream holds none
// while idle.
var batchPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// Bounds of one write: frames taken from the hub's queue at once, and bytes
// built before they are written. The queue keeps the rest, where it counts
// against the connection's budget.
const (
	sseBatch     = 64
	sseFlushAt   = 64 << 10
	ssePoolBelow = 256 << 10 // bigger buffers are not kept for reuse
)

// write writes prefix and frames, in writes of about sseFlushAt bytes, and
// reports whether the stream goes on.
func (w *sseWriter) write(prefix []byte, frames []*hub.Frame) bool {
	buf := batchPool.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= ssePoolBelow {
			buf.Reset()
			batchPool.Put(buf)
		}
	}()
	buf.Write(prefix)
	for i, f := range frames {
		frames[i] = nil
		if f.CloseCode > 0 {
			w.flush(buf)
			return false
		}
		var id []byte
		if f.Seq > 0 && w.cur.Advance(f.ProjectID, f.Seq) {
			id = w.cur.Append(make([]byte, 0, 64))
		}
		writeSSE(buf, f.Name, f.JSON, id)
		w.s.sent.Inc()
		if buf.Len() >= sseFlushAt && !w.flush(buf) {
			return false
		}
	}
	return w.flush(buf)
}

// flush writes what buf holds, within the stream's write timeout.
func (w *sseWriter) flush(buf *bytes.Buffer) bool {
	if buf.Len() == 0 {
		return true
	}
	if !w.st.arm(w.s.opts.WriteTimeout) {
		return false
	}
	_, err := w.nc.Write(buf.Bytes())
	buf.Reset()
	return err == nil
}

// loop writes what the hub queues until the client leaves (its hang-up
// aborts the stream, or a write fails), the hub closes the stream (the
// token expired: the session queued the error and a close), or it falls
// behind. The heartbeat is part of the protocol (proxies and clients time
// out a silent stream), and its write is what notices a client that
// vanished without closing.
func (w *sseWriter) loop() {
	defer w.end()
	heartbeat := time.NewTicker(w.s.opts.Heartbeat)
	defer heartbeat.Stop()
	var frames []*hub.Frame // made on the first wake: an idle stream holds none
	for {
		select {
		case <-w.st.done:
			return // aborted: too slow, or the client hung up
		case <-heartbeat.C:
			if !w.write([]byte(": heartbeat\n\n"), nil) {
				return
			}
		case <-w.st.wake:
			for {
				frames = w.conn.Pull(frames[:0], sseBatch)
				if len(frames) == 0 {
					break
				}
				if !w.write(nil, frames) {
					return
				}
			}
		}
	}
}

// end stops the hang-up watch before the socket closes: the descriptor's
// number may go to another socket at once (package sock).
func (w *sseWriter) end() {
	w.unwatch()
	w.nc.Close()
	w.sess.End(0)
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

// sseStream is the session's Peer for one stream.
type sseStream struct {
	wake chan struct{}
	done chan struct{}
	once sync.Once

	mu      sync.Mutex
	nc      net.Conn // set once the stream is taken over
	aborted bool
}

// pastDeadline makes a pending or future write fail at once.
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

// Attach does nothing: the stream's writer has the connection from the
// session before it starts.
func (st *sseStream) Attach(*hub.Conn) {}

// Direct does nothing: a stream is authenticated before it starts.
func (st *sseStream) Direct([]byte) {}

// Close ends the stream; what was written is out already.
func (st *sseStream) Close(int, string) { st.abort() }

// Abort ends the stream (see abort).
func (st *sseStream) Abort(int, string) { st.abort() }

// abort ends the stream: the writer returns at once, even from a write
// blocked on a client that reads nothing (the hub aborts exactly those:
// QueueLimit frames behind). It never blocks: it is also the hang-up
// watch's callback.
func (st *sseStream) abort() {
	st.once.Do(func() { close(st.done) })
	st.mu.Lock()
	defer st.mu.Unlock()
	st.aborted = true
	if st.nc != nil {
		st.nc.SetWriteDeadline(pastDeadline)
	}
}
