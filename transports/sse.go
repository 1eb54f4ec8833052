package transports

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"sagapush/hub"
)

const sseTransportName = "sse"

// SSEOptions configure the Server-Sent Events transport.
type SSEOptions struct {
	Heartbeat  time.Duration // comment line interval (default 15s)
	Retry      time.Duration // the retry: hint for browsers (default 2s)
	Origins    Origins
	Handshakes *AddrLimiter
	Logger     *slog.Logger
}

// SSE serves GET /sse?projects=P1,P2: the same hub, messages and guarantees
// as the WebSocket, for clients behind proxies that break WebSockets.
type SSE struct {
	hub  *hub.Hub
	auth *Authenticator
	opts SSEOptions

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
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &SSE{hub: h, auth: a, opts: opts}
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

// appendCursor writes the cursor of the given projects, in that order.
func appendCursor(b []byte, projects []string, seqs map[string]int64) []byte {
	for i, p := range projects {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, p...)
		b = append(b, ':')
		b = strconv.AppendInt(b, seqs[p], 10)
	}
	return b
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
	cursor, err := ParseCursor(last)
	if err != nil {
		refuse(http.StatusBadRequest, "INVALID_MESSAGE", "Last-Event-ID: "+err.Error(), "bad_request")
		return
	}
	for p, n := range cursor { // the cursor wins over since
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
	defer s.hub.Disconnect(conn)

	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	var joined []string
	var denied []hub.ErrorData
	// The cursor starts where each project starts: after the client's
	// since when that is recovered, else at the project's seq at the join.
	seqs := make(map[string]int64, len(projects))
	for _, p := range projects {
		var from *int64
		if n, ok := since[p]; ok {
			from = &n
		}
		res, err := s.hub.Join(ctx, conn, p, from, nil)
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
	for _, d := range denied {
		conn.Send(hub.ErrorFrame(d, nil))
	}
	metrics.WithLabelValues(sseTransportName, "ok").Inc()
	s.mu.Lock()
	s.streams++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.streams--
		s.mu.Unlock()
	}()

	slices.Sort(joined)
	// Every joined_project comes first (PROTOCOL section 4), then replays
	// and live events; a stable partition keeps each project's order.
	first := conn.Pull(nil, 0)
	slices.SortStableFunc(first, func(a, b *hub.Frame) int {
		return boolRank(a.Name != "joined_project") - boolRank(b.Name != "joined_project")
	})
	s.stream(w, r, conn, st, first, joined, seqs, exp)
}

// stream writes the queued frames until the client leaves, the token
// expires, the hub closes the connection, or the stream falls behind.
func (s *SSE) stream(w http.ResponseWriter, r *http.Request, conn *hub.Conn, st *sseStream, first []*hub.Frame, projects []string, seqs map[string]int64, exp time.Time) {
	rc := http.NewResponseController(w)
	rc.SetWriteDeadline(time.Time{}) // a server WriteTimeout must not cut the stream
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache, no-transform")
	h.Set("X-Accel-Buffering", "no")
	h.Set("Connection", "keep-alive")
	w.WriteHeader(http.StatusOK)

	bw := bufio.NewWriterSize(w, 2048)
	bw.WriteString("retry: ")
	bw.WriteString(strconv.FormatInt(s.opts.Retry.Milliseconds(), 10))
	bw.WriteString("\n\n")

	heartbeat := time.NewTicker(s.opts.Heartbeat)
	defer heartbeat.Stop()
	var expired <-chan time.Time
	if !exp.IsZero() {
		t := time.NewTimer(time.Until(exp))
		defer t.Stop()
		expired = t.C
	}
	out := s.hub.Metrics().MessagesOut.WithLabelValues(sseTransportName)
	var idBuf []byte
	flush := func() bool {
		return bw.Flush() == nil && rc.Flush() == nil
	}
	// write writes frames and reports whether the stream goes on.
	write := func(frames []*hub.Frame) bool {
		for i, f := range frames {
			frames[i] = nil
			if f.CloseCode > 0 {
				flush()
				return false
			}
			var id []byte
			if _, ok := seqs[f.ProjectID]; ok && f.Seq > 0 {
				seqs[f.ProjectID] = f.Seq
				idBuf = appendCursor(idBuf[:0], projects, seqs)
				id = idBuf
			}
			writeSSE(bw, f.Name, f.JSON, id)
			out.Inc()
		}
		return flush()
	}
	if !write(first) {
		return
	}
	frames := first[:0]
	for {
		select {
		case <-r.Context().Done():
			return
		case <-st.done:
			return // aborted: too slow; the client resumes with its cursor
		case <-expired:
			writeSSE(bw, "error", hub.ErrorFrame(hub.ErrorData{Code: "TOKEN_EXPIRED", Message: "token expired"}, nil).JSON, nil)
			flush()
			return
		case <-heartbeat.C:
			bw.WriteString(": heartbeat\n\n")
			if !flush() {
				return
			}
		case <-st.wake:
			frames = conn.Pull(frames[:0], 0)
			if !write(frames) {
				return
			}
		}
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
func writeSSE(bw *bufio.Writer, name string, data, id []byte) {
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
}

func (st *sseStream) Wake() {
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

func (st *sseStream) Abort(int, string) { st.once.Do(func() { close(st.done) }) }
