package transports

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/olahol/melody"
	"github.com/prometheus/client_golang/prometheus"

	"sagapush/auth"
	"sagapush/hub"
	"sagapush/internal/sockwrite"
)

// WebSocket close codes of PROTOCOL section 3 that this transport decides.
const (
	closePolicy     = 1008
	closeNoAuth     = 4408
	closeUnauthed   = hub.CloseUnauthenticated
	closeTooManyWS  = hub.CloseTooMany
	wsTransportName = "websocket"
)

// WSOptions configure the WebSocket transport.
type WSOptions struct {
	PingInterval   time.Duration // default 25s
	PingTimeout    time.Duration // default 60s: silence before close
	AuthTimeout    time.Duration // default 10s: the auth frame's deadline
	MaxMessageSize int64         // default 16 KiB (bigger frames: close 1009)
	// CompressAbove is the smallest message compressed when the client
	// offered permessage-deflate; 0 disables compression.
	CompressAbove int
	Origins       Origins
	Handshakes    *AddrLimiter
	Logger        *slog.Logger
	ReadBuffer    int // gorilla read buffer (default 256; client frames are small)
	WriteBuffer   int // gorilla write buffer, pooled: pings and close frames only (default 256)
}

// WebSocket serves GET /ws with melody.
type WebSocket struct {
	hub  *hub.Hub
	auth *Authenticator
	opts WSOptions
	m    *melody.Melody
	log  *slog.Logger

	sentCounter prometheus.Counter
	deadlines   deadlines

	sessions *sessions

	mu      sync.Mutex
	closing bool
}

// NewWebSocket returns the transport.
func NewWebSocket(h *hub.Hub, a *Authenticator, opts WSOptions) *WebSocket {
	if opts.PingInterval <= 0 {
		opts.PingInterval = 25 * time.Second
	}
	if opts.PingTimeout <= 0 {
		opts.PingTimeout = 60 * time.Second
	}
	if opts.AuthTimeout <= 0 {
		opts.AuthTimeout = 10 * time.Second
	}
	if opts.MaxMessageSize <= 0 {
		opts.MaxMessageSize = 16 << 10
	}
	if opts.ReadBuffer <= 0 {
		opts.ReadBuffer = 256
	}
	if opts.WriteBuffer <= 0 {
		opts.WriteBuffer = 256
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	m := melody.New()
	m.Config.PingPeriod = opts.PingInterval
	m.Config.PongWait = opts.PingTimeout
	m.Config.MaxMessageSize = opts.MaxMessageSize // melody's default is 512 bytes
	m.Config.MessageBufferSize = 2                // close frames only: data frames are written in wire.go
	m.Config.WriteWait = 10 * time.Second
	m.Upgrader = &websocket.Upgrader{
		ReadBufferSize:  opts.ReadBuffer,
		WriteBufferSize: opts.WriteBuffer,
		// Write buffers are taken from the pool only while a message is
		// being written, so an idle connection holds none.
		WriteBufferPool:   &sync.Pool{},
		EnableCompression: opts.CompressAbove > 0,
		// melody's default allows every origin; ServeHTTP checks it and
		// closes with 1008 so that browsers see why.
		CheckOrigin:      func(*http.Request) bool { return true },
		HandshakeTimeout: 10 * time.Second,
	}
	ws := &WebSocket{hub: h, auth: a, opts: opts, m: m, log: opts.Logger, sessions: newSessions(),
		sentCounter: h.Metrics().MessagesOut.WithLabelValues(wsTransportName)}
	m.HandleConnect(ws.onConnect)
	m.HandleDisconnect(ws.onDisconnect)
	m.HandleMessage(ws.onMessage)
	// A binary frame goes through the inbox as nil (a text frame is never
	// nil: gorilla reads it with io.ReadAll), so that its error comes in
	// order with the answers to the frames before it.
	m.HandleMessageBinary(func(s *melody.Session, _ []byte) { ws.onMessage(s, nil) })
	m.HandleError(func(s *melody.Session, err error) {
		if errors.Is(err, melody.ErrMessageBufferFull) {
			// Only close frames go through melody's buffer, once each;
			// should it ever fill, never drop silently.
			if c := ws.sessions.get(s); c != nil {
				c.Abort(hub.CloseTooSlow, "too slow")
			}
		}
	})
	return ws
}

// ServeHTTP authenticates a header or query token before the upgrade (401
// without upgrade when it fails), then hands the connection to melody.
func (ws *WebSocket) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	metrics := ws.hub.Metrics().Handshakes
	if !ws.opts.Handshakes.Allow(r) {
		metrics.WithLabelValues(wsTransportName, "rate_limited").Inc()
		w.Header().Set("Retry-After", "1")
		WriteHTTPError(w, http.StatusTooManyRequests, "RATE_LIMIT_EXCEEDED", "too many connection attempts from this address")
		return
	}
	c := &wsClient{ws: ws, deadlineIdx: -1, compress: ws.negotiatesDeflate(r)}
	if !ws.opts.Origins.Allowed(r) {
		c.rejectOrigin = true
	} else if token := TokenFromRequest(r); token != "" {
		u, exp, e := ws.auth.Authenticate(r.Context(), token)
		if e != nil {
			metrics.WithLabelValues(wsTransportName, "unauthorized").Inc()
			WriteHTTPError(w, HTTPStatus(e), e.Code, e.Message)
			return
		}
		conn, err := ws.hub.Connect(u, wsTransportName, c)
		if err != nil {
			metrics.WithLabelValues(wsTransportName, "refused").Inc()
			status := http.StatusTooManyRequests
			if errors.Is(err, hub.ErrClosed) {
				status = http.StatusServiceUnavailable
			}
			WriteHTTPError(w, status, "RATE_LIMIT_EXCEEDED", err.Error())
			return
		}
		c.conn, c.expires = conn, exp
	}
	// melody runs the read loop on the goroutine that calls it. Run it on a
	// fresh one and return from the HTTP handler once upgraded: net/http then
	// lets go of its request, response and 8 KiB of buffers, which it would
	// otherwise pin for the connection's whole life.
	c.upgraded = make(chan struct{})
	go func() {
		err := ws.m.HandleRequest(&hijacker{ResponseWriter: w, c: c}, r.WithContext(context.WithValue(r.Context(), clientCtxKey{}, c)))
		if err != nil {
			// gorilla already answered the failed upgrade.
			metrics.WithLabelValues(wsTransportName, "upgrade_failed").Inc()
			if c.conn != nil {
				ws.hub.Disconnect(c.conn)
			}
			close(c.upgraded)
		}
	}()
	<-c.upgraded
	c.upgraded = nil // closed, so nothing else reads it; free it
}

// Shutdown writes server_shutdown and a 1001 close to connections that the
// hub does not know yet (no auth frame so far); the hub's Shutdown handles
// the others.
func (ws *WebSocket) Shutdown(reconnectAfter time.Duration) {
	ws.mu.Lock()
	ws.closing = true
	ws.mu.Unlock()
	pending := ws.sessions.all()
	f := hub.Reply("server_shutdown", "", map[string]any{"message": "server shutting down", "reconnectAfterMs": reconnectAfter.Milliseconds()}, nil)
	for _, c := range pending {
		if c.hubConn() == nil {
			c.direct(f.JSON)
			c.closeWith(hub.CloseGoingAway, "server shutting down")
		}
	}
}

// CloseAll closes every remaining socket at once: http.Server.Shutdown does
// not track hijacked connections.
func (ws *WebSocket) CloseAll() {
	for _, c := range ws.sessions.all() {
		c.Abort(hub.CloseGoingAway, "server shutting down")
	}
}

// Len counts open WebSocket sessions, authenticated or not.
func (ws *WebSocket) Len() int { return ws.sessions.len() }

// clientCtxKey carries the client from ServeHTTP to onConnect, through the
// request melody hands over.
type clientCtxKey struct{}

func (ws *WebSocket) onConnect(s *melody.Session) {
	c := s.Request.Context().Value(clientCtxKey{}).(*wsClient)
	s.Request = nil // melody keeps it for the session's life; nothing here needs it
	c.mu.Lock()
	c.sess = s
	c.mu.Unlock()
	ws.sessions.put(s, c)
	close(c.upgraded)
	ws.mu.Lock()
	closing := ws.closing
	ws.mu.Unlock()
	ws.hub.Metrics().Handshakes.WithLabelValues(wsTransportName, "ok").Inc()
	switch {
	case c.rejectOrigin:
		c.closeWith(closePolicy, "origin not allowed")
		return
	case closing:
		c.closeWith(hub.CloseGoingAway, "server shutting down")
		return
	}
	c.mu.Lock()
	if c.conn == nil {
		ws.deadlines.set(c, time.Now().Add(ws.opts.AuthTimeout))
	} else {
		c.armExpiryLocked()
	}
	c.mu.Unlock()
	// Frames may have been queued between Connect and now.
	c.Wake()
}

func (ws *WebSocket) onDisconnect(s *melody.Session) {
	c := ws.sessions.get(s)
	c.mu.Lock()
	c.gone = true
	if c.inboxCond != nil {
		c.inboxCond.Broadcast()
	}
	conn := c.conn
	c.mu.Unlock()
	ws.deadlines.remove(c)
	ws.sessions.remove(s)
	if conn != nil {
		ws.hub.Disconnect(conn)
	}
}

// maxInbox bounds the client frames waiting for the worker; the read loop
// waits beyond it, which pushes back on the client through TCP.
const maxInbox = 32

// onMessage runs on melody's read loop. It only queues the frame: handling
// it (JSON, joins, store reads) would grow the read loop's stack, and an
// idle connection would then keep that stack for its whole life. A worker
// goroutine, started on demand, handles the frames in order and exits when
// none is left.
func (ws *WebSocket) onMessage(s *melody.Session, msg []byte) {
	c := ws.sessions.get(s)
	c.touch()
	c.mu.Lock()
	for len(c.inbox) >= maxInbox && !c.gone {
		if c.inboxCond == nil {
			c.inboxCond = sync.NewCond(&c.mu)
		}
		c.inboxCond.Wait()
	}
	c.inbox = append(c.inbox, msg)
	start := !c.working
	c.working = true
	c.mu.Unlock()
	if start {
		go c.work()
	}
}

// work handles queued frames in arrival order until the inbox is empty.
func (c *wsClient) work() {
	for {
		c.mu.Lock()
		if len(c.inbox) == 0 {
			c.working = false
			c.inbox = nil
			c.mu.Unlock()
			return
		}
		msg := c.inbox[0]
		c.inbox[0] = nil
		c.inbox = c.inbox[1:]
		if c.inboxCond != nil {
			c.inboxCond.Signal()
		}
		c.mu.Unlock()
		c.ws.handle(c, msg)
	}
}

// handle acts on one client frame.
func (ws *WebSocket) handle(c *wsClient, msg []byte) {
	conn := c.hubConn()
	var f ClientFrame
	var bad error
	if msg == nil {
		bad = errors.New("binary frames are not accepted")
	} else {
		f, bad = DecodeClientFrame(msg)
	}
	// Every frame of an authenticated user counts against the rate limit,
	// bad ones included, except auth: a token refresh is never refused for
	// being busy.
	if conn != nil && (bad != nil || f.Event != "auth") {
		if ok, retry := ws.hub.Allow(conn); !ok {
			c.replyError(hub.ErrorData{Code: "RATE_LIMIT_EXCEEDED", Message: "too many events", RetryAfterMs: max(retry.Milliseconds(), 1)}, f.Ack)
			if c.refused(); c.abusive() {
				conn.CloseAfterFlush(hub.CloseTooMany, "sustained abuse") // after the answer
			}
			return
		}
		c.allowed()
	}
	if bad != nil {
		c.replyError(hub.ErrorData{Code: "INVALID_MESSAGE", Message: bad.Error()}, f.Ack)
		return
	}
	ws.hub.Metrics().MessagesIn.WithLabelValues(wsTransportName, metricEvent(f.Event)).Inc()
	if f.Event == "auth" {
		c.handleAuth(f)
		return
	}
	if conn == nil {
		c.replyError(hub.ErrorData{Code: "UNAUTHORIZED", Message: "authenticate first with an auth frame"}, f.Ack)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	switch f.Event {
	case "join_project":
		ref, err := decodeProjectRef(f.Data)
		if err != nil {
			c.replyError(hub.ErrorData{Code: "INVALID_MESSAGE", Message: err.Error()}, f.Ack)
			return
		}
		if _, err := ws.hub.Join(ctx, conn, ref.ProjectID, ref.Since, f.Ack); err != nil {
			c.replyError(joinError(err, ref.ProjectID), f.Ack)
		}
	case "leave_project":
		ref, err := decodeProjectRef(f.Data)
		if err != nil {
			c.replyError(hub.ErrorData{Code: "INVALID_MESSAGE", Message: err.Error()}, f.Ack)
			return
		}
		if err := ws.hub.Leave(conn, ref.ProjectID); err != nil {
			c.replyError(hub.ErrorData{Code: "NOT_IN_PROJECT", Message: "not joined to this project", ProjectID: ref.ProjectID}, f.Ack)
			return
		}
		conn.Send(hub.Reply("left_project", "", map[string]string{"projectId": ref.ProjectID, "reason": "requested"}, f.Ack))
	case "ping":
		conn.Send(hub.Reply("pong", "", map[string]int64{"ts": time.Now().UnixMilli()}, f.Ack))
	case "typing_start", "typing_stop":
		t, err := decodeTyping(f.Data)
		if err != nil {
			c.replyError(hub.ErrorData{Code: "INVALID_MESSAGE", Message: err.Error()}, f.Ack)
			return
		}
		err = ws.hub.Typing(ctx, conn, t.ProjectID, t.StoryID, f.Event == "typing_start")
		switch {
		case errors.Is(err, hub.ErrNotInProject):
			c.replyError(hub.ErrorData{Code: "NOT_IN_PROJECT", Message: "join the project before typing", ProjectID: t.ProjectID}, f.Ack)
		case err != nil:
			c.replyError(hub.ErrorData{Code: "INTERNAL_ERROR", Message: "typing could not be relayed"}, f.Ack)
		}
	default:
		c.replyError(hub.ErrorData{Code: "UNKNOWN_EVENT", Message: "unknown event"}, f.Ack)
	}
}

// joinError maps a hub.Join error to the protocol's error.
func joinError(err error, projectID string) hub.ErrorData {
	switch {
	case errors.Is(err, hub.ErrAccessDenied):
		return hub.ErrorData{Code: "PROJECT_ACCESS_DENIED", Message: "you may not access this project", ProjectID: projectID}
	case errors.Is(err, hub.ErrTooManyRooms):
		return hub.ErrorData{Code: "JOIN_PROJECT_ERROR", Message: err.Error(), ProjectID: projectID}
	default:
		return hub.ErrorData{Code: "JOIN_PROJECT_ERROR", Message: "the project could not be joined now", ProjectID: projectID}
	}
}

// metricEvent keeps the metric's label set bounded.
func metricEvent(name string) string {
	switch name {
	case "auth", "join_project", "leave_project", "ping", "typing_start", "typing_stop":
		return name
	}
	return "other"
}

// TokenFromRequest returns the bearer token of the Authorization header, or
// else the token query parameter.
func TokenFromRequest(r *http.Request) string { return auth.TokenFromRequest(r) }

// wsClient is one WebSocket session: the hub connection's Outlet and the
// state melody does not keep.
type wsClient struct {
	// What a fan-out touches (Wake, pumpLocked, sendLocked) comes first, in
	// one cache line: at 15,000 members a fan-out is bound by cache misses.
	// The size is kept a multiple of 64 bytes (192 on 64-bit platforms;
	// TestClientLayout), so allocations and this line are 64-byte aligned.
	mu               sync.Mutex
	gone             bool
	aborted          bool
	flushing         bool // the socket is full: writes go to pending
	sockClosed       bool
	closeWhenFlushed bool // gorilla closed while the flusher had data
	compress         bool // permessage-deflate was negotiated
	line             atomic.Uint32
	fd               sockwrite.FD // for direct writes; none: the flusher only
	sess             *melody.Session
	conn             *hub.Conn // nil until authenticated
	ws               *WebSocket

	// The rest of the socket's state (wire.go), under mu.
	sock       net.Conn // the hijacked connection
	pending    [][]byte // waiting for the flusher, in order
	flusher    bool     // the flusher goroutine runs
	handshaken bool     // gorilla wrote the 101 response

	rejectOrigin bool
	working      bool  // a worker goroutine is running
	refusedRun   int32 // rate-limited frames in a row

	upgraded chan struct{} // closed once the upgrade succeeded or failed
	expires  time.Time

	deadlineAt  time.Time // guarded by WebSocket.deadlines.mu
	deadlineIdx int       // index in the deadline heap; -1 when none

	inbox     [][]byte   // client frames waiting for the worker
	inboxCond *sync.Cond // made when the read loop first has to wait
}

func (c *wsClient) hubConn() *hub.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn
}

// touch counts any client frame as a sign of life (PROTOCOL: the timeout is
// "without any client frame or pong"); melody only counts pongs. It runs on
// the read goroutine, the only one that may set the read deadline.
func (c *wsClient) touch() {
	c.sess.WebsocketConnection().SetReadDeadline(time.Now().Add(c.ws.opts.PingTimeout))
}

// Warm loads the line Wake starts with (hub.Warmer), the lock's: an atomic
// load of c.line, a word there that nothing writes, which the compiler keeps
// and which does not wait, so the hub's loads for a chunk of clients overlap.
func (c *wsClient) Warm() { c.line.Load() }

// Wake writes the hub's queued frames (wire.go). It never waits.
func (c *wsClient) Wake() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pumpLocked()
}

// direct writes a message outside the hub's queue: before authentication.
func (c *wsClient) direct(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == nil || c.gone || c.aborted || c.flushing {
		return // an unauthenticated flood gets no more answers
	}
	c.sendBatchLocked([][]byte{c.wire(&hub.Frame{JSON: b})})
}

// replyError answers a frame with an error, in order with everything else.
func (c *wsClient) replyError(e hub.ErrorData, ack json.RawMessage) {
	f := hub.ErrorFrame(e, ack)
	if conn := c.hubConn(); conn != nil {
		conn.Send(f)
		return
	}
	c.direct(f.JSON)
}

// closeWith closes after what is already in melody's buffer.
func (c *wsClient) closeWith(code int, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone || c.aborted {
		return
	}
	c.aborted = true
	c.sess.CloseWithMsg(websocket.FormatCloseMessage(code, reason))
}

// Abort closes at once through the websocket connection itself: melody's
// Close would queue behind a full buffer. It never blocks the caller.
func (c *wsClient) Abort(code int, reason string) {
	c.mu.Lock()
	if c.gone || c.sess == nil {
		c.mu.Unlock()
		return
	}
	c.aborted = true
	conn := c.sess.WebsocketConnection()
	c.mu.Unlock()
	// The close frame waits for the frame being written, as long as a data
	// write may take (WriteWait): a stalled client that reads again within
	// that time learns its close code (4001 above all) instead of seeing
	// the connection cut after the buffered data.
	wait := c.ws.m.Config.WriteWait
	go func() {
		conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(wait))
		conn.Close()
	}()
}

// abuseRun is how many rate-limited frames in a row make a client abusive:
// one that ignores retryAfterMs, not one that overshot once.
const abuseRun = 100

// refused, allowed and abusive run on the worker goroutine only.
func (c *wsClient) refused()      { c.refusedRun++ }
func (c *wsClient) allowed()      { c.refusedRun = 0 }
func (c *wsClient) abusive() bool { return c.refusedRun >= abuseRun }

// handleAuth takes the first token (auth frame) or a refresh.
func (c *wsClient) handleAuth(f ClientFrame) {
	token, err := decodeAuth(f.Data)
	if err != nil {
		c.replyError(hub.ErrorData{Code: "INVALID_MESSAGE", Message: err.Error()}, f.Ack)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	u, exp, e := c.ws.auth.Authenticate(ctx, token)
	if e != nil {
		c.replyError(*e, f.Ack)
		return
	}
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	refresh := conn != nil
	if refresh {
		if conn.User().ID != u.ID {
			c.replyError(hub.ErrorData{Code: "UNAUTHORIZED", Message: "the new token names another user"}, f.Ack)
			return
		}
		conn.SetUser(u)
	} else {
		conn, err = c.ws.hub.Connect(u, wsTransportName, c)
		if errors.Is(err, hub.ErrClosed) {
			c.closeWith(hub.CloseGoingAway, "server shutting down")
			return
		}
		if err != nil {
			c.replyError(hub.ErrorData{Code: "RATE_LIMIT_EXCEEDED", Message: err.Error()}, f.Ack)
			c.closeWith(closeTooManyWS, "too many connections")
			return
		}
	}
	c.mu.Lock()
	if c.gone {
		// The socket closed while this frame waited for the worker:
		// onDisconnect did not see this connection, so it is undone here.
		c.mu.Unlock()
		if !refresh {
			c.ws.hub.Disconnect(conn)
		}
		return
	}
	c.conn, c.expires = conn, exp
	c.armExpiryLocked()
	c.mu.Unlock()
	data := map[string]any{"userId": u.ID, "expiresAt": nil}
	if !exp.IsZero() {
		data["expiresAt"] = exp.UnixMilli()
	}
	conn.Send(hub.Reply("authenticated", "", data, f.Ack))
	if refresh {
		// The new token may grant fewer projects.
		c.ws.hub.Recheck(ctx, conn)
	}
}

// armExpiryLocked schedules the current token's expiry; the auth deadline
// or a previous token's expiry left in the schedule is then stale.
func (c *wsClient) armExpiryLocked() {
	if c.expires.IsZero() {
		c.ws.deadlines.remove(c) // a token without exp: nothing to wait for
		return
	}
	c.ws.deadlines.set(c, c.expires)
}

// due runs when a deadline scheduled for c comes: the auth frame's, or the
// token's expiry. A deadline that no longer applies does nothing.
func (c *wsClient) due(at time.Time) {
	c.mu.Lock()
	conn, exp, gone := c.conn, c.expires, c.gone
	c.mu.Unlock()
	switch {
	case gone:
	case conn == nil:
		c.closeWith(closeNoAuth, "no auth frame in time")
	case !exp.IsZero() && exp.Equal(at):
		conn.Send(hub.ErrorFrame(hub.ErrorData{Code: "TOKEN_EXPIRED", Message: "token expired"}, nil))
		conn.CloseAfterFlush(closeUnauthed, "token expired")
	}
}
