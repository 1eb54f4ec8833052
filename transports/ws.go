package transports

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/olahol/melody"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/httpguard"
	"github.com/saga-family/sagapush/internal/protocol"
	"github.com/saga-family/sagapush/internal/session"
	"github.com/saga-family/sagapush/internal/sock"
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
	Origins       httpguard.Origins
	Handshakes    *httpguard.AddrLimiter
	ReadBuffer    int // gorilla read buffer (default 256; client frames are small)
	WriteBuffer   int // gorilla write buffer, pooled: pings and close frames only (default 256)
}

// WebSocket serves GET /ws with melody: it upgrades, reads frames into the
// client's session, and writes what the hub queues (wire.go).
type WebSocket struct {
	hub      *hub.Hub
	sessions *session.Manager
	opts     WSOptions
	m        *melody.Melody

	sentCounter prometheus.Counter

	clients *clients
	// unauth counts the upgraded clients without a hub connection (no
	// token accepted yet), which no hub count includes.
	unauth atomic.Int64

	mu      sync.Mutex
	closing bool
}

// NewWebSocket returns the transport.
func NewWebSocket(sm *session.Manager, opts WSOptions) *WebSocket {
	orDefault(&opts.PingInterval, 25*time.Second)
	orDefault(&opts.PingTimeout, 60*time.Second)
	orDefault(&opts.MaxMessageSize, 16<<10)
	orDefault(&opts.ReadBuffer, 256)
	orDefault(&opts.WriteBuffer, 256)
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
	h := sm.Hub()
	initHandshakes(h.Metrics(), protocol.WebSocket, "upgrade_failed")
	ws := &WebSocket{hub: h, sessions: sm, opts: opts, m: m, clients: newClients(),
		sentCounter: h.Metrics().MessagesOut.WithLabelValues(protocol.WebSocket)}
	m.HandleConnect(ws.onConnect)
	m.HandleDisconnect(ws.onDisconnect)
	m.HandleClose(ws.onClose)
	m.HandleMessage(ws.onMessage)
	// A binary frame goes through the inbox as nil (a text frame is never
	// nil: gorilla reads it with io.ReadAll), so that its error comes in
	// order with the answers to the frames before it.
	m.HandleMessageBinary(func(s *melody.Session, _ []byte) { ws.onMessage(s, nil) })
	m.HandleError(func(s *melody.Session, err error) {
		if errors.Is(err, melody.ErrMessageBufferFull) {
			// Only close frames go through melody's buffer, once each;
			// should it ever fill, never drop silently.
			if c := ws.clients.get(s); c != nil {
				c.Abort(protocol.CloseTooSlow, "too slow")
			}
		}
	})
	return ws
}

// ServeHTTP authenticates the handshake's token or ticket before the
// upgrade (401 without upgrade when it fails), then hands the connection to
// melody. An origin refused is closed with 1008 after the upgrade, before
// any credential is looked at (a ticket is not spent on it).
func (ws *WebSocket) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !admit(w, r, protocol.WebSocket, ws.opts.Handshakes, ws.hub.Metrics()) {
		return
	}
	c := &wsClient{ws: ws, compress: ws.negotiatesDeflate(r)}
	c.session = ws.sessions.New(protocol.WebSocket, c)
	if !ws.opts.Origins.Allowed(r) {
		c.rejectOrigin = true
	} else if cred, ok := handshakeCredential(r); ok {
		if no := c.session.Authenticate(r.Context(), cred); no != nil {
			refuse(w, protocol.WebSocket, ws.hub.Metrics(), no)
			return
		}
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
			ws.hub.Metrics().Handshakes.WithLabelValues(protocol.WebSocket, "upgrade_failed").Inc()
			c.session.End(0)
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
	f := hub.ShutdownFrame(reconnectAfter)
	for _, c := range ws.clients.all() {
		if c.session.Conn() == nil {
			c.Direct(f.JSON)
			c.Close(protocol.CloseGoingAway, "server shutting down")
		}
	}
}

// CloseAll closes every remaining socket at once: http.Server.Shutdown does
// not track hijacked connections.
func (ws *WebSocket) CloseAll() {
	for _, c := range ws.clients.all() {
		c.Abort(protocol.CloseGoingAway, "server shutting down")
	}
}

// Len counts open WebSocket sessions, authenticated or not.
func (ws *WebSocket) Len() int { return ws.clients.len() }

// Unauthenticated counts the open WebSocket sessions that have no accepted
// token yet (they wait for an auth frame).
func (ws *WebSocket) Unauthenticated() int { return int(ws.unauth.Load()) }

// clientCtxKey carries the client from ServeHTTP to onConnect, through the
// request melody hands over.
type clientCtxKey struct{}

func (ws *WebSocket) onConnect(s *melody.Session) {
	c := s.Request.Context().Value(clientCtxKey{}).(*wsClient)
	s.Request = nil // melody keeps it for the session's life; nothing here needs it
	c.mu.Lock()
	c.sess = s
	if c.conn == nil {
		ws.unauth.Add(1) // until Attach or the disconnect
	}
	c.mu.Unlock()
	ws.clients.put(s, c)
	close(c.upgraded)
	ws.mu.Lock()
	closing := ws.closing
	ws.mu.Unlock()
	ws.hub.Metrics().Handshakes.WithLabelValues(protocol.WebSocket, "ok").Inc()
	switch {
	case c.rejectOrigin:
		c.Close(protocol.ClosePolicy, "origin not allowed")
		return
	case closing:
		c.Close(protocol.CloseGoingAway, "server shutting down")
		return
	}
	c.session.Start()
	// Frames may have been queued between Connect and now.
	c.Wake()
}

// onClose keeps the code of the client's close frame for the log, then
// does what gorilla's own close handler does: answer with the same code.
func (ws *WebSocket) onClose(s *melody.Session, code int, _ string) error {
	if c := ws.clients.get(s); c != nil && code > 0 && code <= 0xffff {
		c.mu.Lock()
		c.clientCode = uint16(code)
		c.mu.Unlock()
	}
	s.WebsocketConnection().WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(time.Second))
	return nil
}

func (ws *WebSocket) onDisconnect(s *melody.Session) {
	c := ws.clients.get(s)
	c.mu.Lock()
	c.gone = true
	if c.conn == nil {
		ws.unauth.Add(-1)
	}
	code := int(c.clientCode)
	c.mu.Unlock()
	ws.clients.remove(s)
	if code == 0 {
		code = protocol.CloseAbnormal // no close frame came
	}
	c.session.End(code)
	c.finish(s.WebsocketConnection().NetConn())
}

// onMessage runs on melody's read loop: the frame goes to the session,
// unless the server is closing the connection: nothing answers it then.
func (ws *WebSocket) onMessage(s *melody.Session, msg []byte) {
	c := ws.clients.get(s)
	if c.touch() {
		c.session.Receive(msg)
	}
}

// wsClient is one WebSocket session: the hub connection's Outlet and the
// state melody does not keep.
type wsClient struct {
	// What a fan-out touches (Wake, pumpLocked, sendLocked) comes first, in
	// one cache line: in a big room a fan-out is bound by cache misses.
	// The size is kept a multiple of 64 bytes (128 on 64-bit platforms;
	// TestClientLayout), so allocations and this line are 64-byte aligned.
	mu               sync.Mutex
	gone             bool
	aborted          bool
	flushing         bool // the socket is full: writes go to pending
	sockClosed       bool
	closeWhenFlushed bool // gorilla closed while the flusher had data
	compress         bool // permessage-deflate was negotiated
	line             atomic.Uint32
	fd               sock.FD // for direct writes; none: the flusher only
	sess             *melody.Session
	conn             *hub.Conn // nil until authenticated (Attach)
	ws               *WebSocket

	// The rest of the socket's state (wire.go), under mu.
	sock       net.Conn // the hijacked connection
	pending    [][]byte // waiting for the flusher, in order
	flusher    bool     // the flusher goroutine runs
	handshaken bool     // gorilla wrote the 101 response
	closeSent  bool     // gorilla wrote a close frame: nothing is written after it
	lingering  bool     // the write side is shut; the client's end is awaited
	finished   bool     // the read loop ended, and finish will not read: closes are full

	rejectOrigin bool
	clientCode   uint16        // the code of the client's close frame, for the log; under mu
	upgraded     chan struct{} // closed once the upgrade succeeded or failed
	session      *session.Session

	_ [16]byte // to a multiple of 64 bytes (TestClientLayout)
}

// touch counts any client frame as a sign of life (docs/protocol.md section 4.5: the timeout is
// "without any client frame or pong"); melody only counts pongs. It runs on
// the read goroutine. It reports false once the server decided to close:
// the frame is dropped, and the close handshake's deadline stays.
func (c *wsClient) touch() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		return false
	}
	c.sock.SetReadDeadline(time.Now().Add(c.ws.opts.PingTimeout))
	return true
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

// Attach takes the hub connection of the authenticated session
// (session.Peer) and writes what already waits in it.
func (c *wsClient) Attach(conn *hub.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess != nil && !c.gone {
		c.ws.unauth.Add(-1) // counted as unauthenticated by onConnect
	}
	c.conn = conn
	c.pumpLocked()
}

// Direct writes a message outside the hub's queue: before authentication
// (session.Peer).
func (c *wsClient) Direct(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == nil || c.gone || c.aborted || c.flushing {
		return // an unauthenticated flood gets no more answers
	}
	c.sendBatchLocked([][]byte{c.wire(&hub.Frame{JSON: b})})
}

// Close closes after what is already in melody's buffer (session.Peer).
func (c *wsClient) Close(code int, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone || c.aborted {
		return
	}
	c.aborted = true
	c.sess.CloseWithMsg(websocket.FormatCloseMessage(code, reason))
}

// Abort closes at once through the websocket connection itself: melody's
// Close would queue behind a full buffer. It never blocks the caller. The
// close frame goes after what is queued, and conn.Close then completes the
// close handshake as any close does (wireConn.Close).
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
