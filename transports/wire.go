package transports

import (
	"bufio"
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/sock"
)

// The WebSocket write path. melody gives every connection a goroutine that
// writes its frames one at a time; a fan-out to a big room then costs a
// goroutine wake-up, a gorilla frame build and a syscall per member. Here, a
// data frame is encoded once per event (hub.Frame.Encoded) and written
// straight from the goroutine that fans out, with a non-blocking write
// (package sock): when the kernel takes it whole, a delivery costs one
// syscall and no goroutine. Only a connection whose socket is full gets a
// flusher goroutine, which writes the rest with blocking writes under
// WriteWait and then takes what queued meanwhile, several frames per writev
// (the write coalescing of nats-server). Where package sock has no fast path
// (not Linux), every write goes through the flusher. gorilla still reads,
// and writes the handshake, pings and close frames: they come through
// wireConn.Write and take their turn in the same order.
//
// A close the server starts completes the close handshake (docs/protocol.md
// 4.6). Closing a socket while client data waits unread in it (or arrives
// after) makes the kernel send a reset instead of a FIN, and a reset can
// destroy the close frame before the client reads it. So once the close
// frame is out nothing more is written, the write side shuts (a FIN follows
// the frame) and the socket goes on being read, the data dropped, until the
// client ends its side, for closeLinger and drainLimit bytes at most; only
// then does the socket close (finish).

// closeLinger bounds the wait for the client's side of a close handshake
// once the server's close frame and FIN are out; drainLimit bounds what is
// read and dropped meanwhile. Past either, the socket closes anyway.
const (
	closeLinger = 3 * time.Second
	drainLimit  = 1 << 20
)

// errDrainLimit ends the reading of a closing connection past drainLimit.
var errDrainLimit = errors.New("transports: client kept sending after the close")

// closeFrameByte is the first byte of a close frame as gorilla writes it (FIN
// and opcode 8; control frames are never compressed).
const closeFrameByte = 0x88

// Encoding slots of hub.Frame used by this transport.
const (
	slotText    = 0 // a text frame
	slotDeflate = 1 // a text frame compressed with permessage-deflate
)

// maxBatch bounds the frames taken from the hub's queue for one write: as
// many as one direct write takes.
const maxBatch = sock.MaxBufs

// textFrame encodes payload as an unmasked, final text frame (server side).
func textFrame(payload []byte) []byte { return appendFrame(nil, 0x81, payload) }

// appendFrame appends a frame header with first byte b0 and the payload.
func appendFrame(dst []byte, b0 byte, payload []byte) []byte {
	n := len(payload)
	switch {
	case n < 126:
		dst = append(dst, b0, byte(n))
	case n <= 0xffff:
		dst = append(dst, b0, 126, byte(n>>8), byte(n))
	default:
		dst = append(dst, b0, 127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(dst, payload...)
}

var deflaters = sync.Pool{New: func() any {
	w, _ := flate.NewWriter(nil, 1) // gorilla's default level
	return w
}}

// deflateFrame encodes payload as a compressed text frame (RSV1 set). The
// connection negotiated no context takeover (gorilla offers nothing else),
// so every message is compressed on its own and the result can be shared by
// every connection that negotiated compression.
func deflateFrame(payload []byte) []byte {
	var body bytes.Buffer
	body.Grow(len(payload)/2 + 64)
	fw := deflaters.Get().(*flate.Writer)
	fw.Reset(&body)
	fw.Write(payload)
	fw.Flush()
	deflaters.Put(fw)
	b := body.Bytes()
	// RFC 7692 7.2.1: drop the 0x00 0x00 0xff 0xff that ends the flush.
	b = bytes.TrimSuffix(b, []byte{0, 0, 0xff, 0xff})
	return appendFrame(make([]byte, 0, len(b)+10), 0xc1, b)
}

// wireConn is the hijacked socket under gorilla. Its writes go through the
// client, in order with the frames written directly.
type wireConn struct {
	net.Conn
	c *wsClient

	closing atomic.Bool // the close frame is out (c.closeSent), for Read without c.mu
	dropped int         // read since then; only melody's read goroutine reads
}

// Write is gorilla's: the handshake first, then pings and close frames, each
// in one call. It never waits on the socket, and writes nothing after a
// close frame.
func (w *wireConn) Write(p []byte) (int, error) {
	c := w.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.handshaken {
		// The 101 response, written with gorilla's deadline before melody
		// starts the session, so before any frame.
		c.handshaken = true
		c.mu.Unlock()
		defer c.mu.Lock()
		return w.Conn.Write(p)
	}
	if c.sockClosed || c.closeSent {
		return 0, net.ErrClosed
	}
	c.sendLocked([][]byte{p}, false)
	if len(p) > 0 && p[0] == closeFrameByte {
		// aborted stops the hub's frames and Direct: no per-frame check.
		c.closeSent, c.aborted = true, true
		w.closing.Store(true)
	}
	return len(p), nil
}

// Read is gorilla's, then finish's. After the close frame what the client
// sends is only dropped: drainLimit bytes at most.
func (w *wireConn) Read(p []byte) (int, error) {
	if !w.closing.Load() {
		return w.Conn.Read(p)
	}
	if w.dropped >= drainLimit {
		return 0, errDrainLimit
	}
	n, err := w.Conn.Read(p)
	w.dropped += n
	return n, err
}

// SetWriteDeadline only applies to the handshake: later writes never wait
// in gorilla, and the flusher sets its own deadlines.
func (w *wireConn) SetWriteDeadline(t time.Time) error {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	if w.c.handshaken {
		return nil
	}
	return w.Conn.SetWriteDeadline(t)
}

func (w *wireConn) SetDeadline(t time.Time) error {
	w.SetWriteDeadline(t)
	return w.SetReadDeadline(t)
}

// SetReadDeadline is gorilla's and melody's (the read loop's start, pongs):
// it may not postpone the end of a close handshake (closeWriteLocked).
func (w *wireConn) SetReadDeadline(t time.Time) error {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	if w.c.lingering {
		return nil
	}
	return w.Conn.SetReadDeadline(t)
}

// Close is melody's and Abort's: the socket closes, or completes the close
// handshake, once the flusher wrote what it holds (endLocked). It never
// waits.
func (w *wireConn) Close() error {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	w.c.endLocked()
	return nil
}

// hijacker hands gorilla a wireConn when it hijacks the connection.
type hijacker struct {
	http.ResponseWriter
	c *wsClient
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	fd, _ := sock.Take(nc) // none: every write goes through the flusher
	c := h.c
	c.mu.Lock()
	c.sock, c.fd = nc, fd
	c.mu.Unlock()
	return &wireConn{Conn: nc, c: c}, brw, nil
}

// sendLocked writes bufs after everything before them: at once when the
// socket takes them, else through the flusher. stable says the slices stay
// unchanged after the call (encoded frames); others are copied when they
// have to wait.
func (c *wsClient) sendLocked(bufs [][]byte, stable bool) {
	if c.sockClosed {
		return
	}
	if !c.flushing && c.fd.Ok() {
		n, err := c.fd.WriteNow(bufs)
		if err != nil {
			c.closeSocketLocked() // the read loop ends and melody disconnects
			return
		}
		if bufs = sock.Consume(bufs, n); len(bufs) == 0 {
			return
		}
	}
	for _, b := range bufs {
		if !stable {
			b = bytes.Clone(b)
		}
		c.pending = append(c.pending, b)
	}
	c.flushing = true
	if !c.flusher {
		c.flusher = true
		go c.flush()
	}
}

// endLocked ends the socket once the flusher has written what it holds.
// After the server's close frame, while melody's read loop or finish still
// read, only the write side closes (closeWriteLocked) and finish closes the
// socket later; onConnect having run (c.sess), finish is sure to come.
func (c *wsClient) endLocked() {
	switch {
	case c.flushing:
		c.closeWhenFlushed = true
	case c.closeSent && !c.finished && c.sess != nil:
		c.closeWriteLocked()
	default:
		c.closeSocketLocked()
	}
}

// closeWriteLocked shuts the write side once the close frame is out, so a
// FIN follows it, and gives the client closeLinger to end its side; the
// read deadline it sets is final (wireConn.SetReadDeadline). The descriptor
// stays open: finish closes it.
func (c *wsClient) closeWriteLocked() {
	if c.lingering || c.sockClosed {
		return
	}
	c.lingering = true
	if cw, ok := c.sock.(interface{ CloseWrite() error }); ok { // *net.TCPConn
		cw.CloseWrite()
	}
	c.sock.SetReadDeadline(time.Now().Add(closeLinger))
}

// finish closes the socket once melody's read loop has ended
// (onDisconnect). After the server's close frame it first reads and drops
// what the client still sends, until the client ends its side, the
// deadline passes (closeLinger, plus WriteWait while the flusher still
// writes the close frame) or drainLimit bytes were read: then the socket
// holds no unread data and closes with a FIN, not a reset. nc is the
// wireConn, whose Read counts the bytes.
func (c *wsClient) finish(nc net.Conn) {
	c.mu.Lock()
	if !c.closeSent || c.sockClosed {
		c.finished = true
		c.endLocked()
		c.mu.Unlock()
		return
	}
	if !c.lingering {
		c.sock.SetReadDeadline(time.Now().Add(c.ws.m.Config.WriteWait + closeLinger))
	}
	c.mu.Unlock()
	io.Copy(io.Discard, nc)
	c.mu.Lock()
	c.finished = true
	c.closeSocketLocked()
	c.mu.Unlock()
}

// closeSocketLocked closes the socket now, dropping what waits. Every close
// of the socket comes here, under c.mu, which every direct write holds too:
// the invariant that keeps c.fd from being written once its number may
// belong to another file (package sock). (closeWriteLocked only shuts
// the write side; nothing is written after it.)
func (c *wsClient) closeSocketLocked() {
	if c.sockClosed || c.sock == nil {
		return
	}
	c.sockClosed = true
	c.pending = nil
	c.sock.Close()
}

// flush runs while the socket is full: it writes what waits, with blocking
// writes bounded by WriteWait, then goes back to direct writes.
func (c *wsClient) flush() {
	for {
		c.mu.Lock()
		if len(c.pending) == 0 && !c.sockClosed {
			c.flushing = false
			c.pumpLocked() // direct again; sets flushing when the socket fills
		}
		if !c.flushing || c.sockClosed {
			c.flushing, c.flusher, c.pending = false, false, nil
			if c.closeWhenFlushed {
				c.endLocked()
			}
			c.mu.Unlock()
			return
		}
		bufs := net.Buffers(c.pending)
		c.pending = nil
		c.mu.Unlock()
		c.sock.SetWriteDeadline(time.Now().Add(c.ws.m.Config.WriteWait))
		if _, err := bufs.WriteTo(c.sock); err != nil {
			c.mu.Lock()
			c.closeSocketLocked()
			c.mu.Unlock()
		}
	}
}

// pumpLocked writes the hub's queued frames, a batch per write, until the
// queue is empty or the socket is full.
func (c *wsClient) pumpLocked() {
	var frames [maxBatch]*hub.Frame
	var bufs [maxBatch][]byte
	for c.sess != nil && c.conn != nil && !c.gone && !c.aborted && !c.flushing && !c.sockClosed && !c.closeWhenFlushed {
		batch := c.conn.Pull(frames[:0], maxBatch)
		if len(batch) == 0 {
			return
		}
		out := bufs[:0]
		for i, f := range batch {
			batch[i] = nil
			if f.CloseCode > 0 {
				c.sendBatchLocked(out)
				// gorilla writes the close frame after what is sent, and
				// melody then closes (wireConn.Close: the handshake).
				c.sess.CloseWithMsg(websocket.FormatCloseMessage(f.CloseCode, f.CloseReason))
				c.aborted = true
				return
			}
			out = append(out, c.wire(f))
		}
		c.sendBatchLocked(out)
		clear(out)
	}
}

func (c *wsClient) sendBatchLocked(out [][]byte) {
	if len(out) > 0 {
		c.sendLocked(out, true)
		c.ws.sentCounter.Add(float64(len(out)))
	}
}

// wire returns f as this connection writes it: compressed when the client
// negotiated it (gorilla offers it only when CompressAbove > 0) and the
// message is big enough.
func (c *wsClient) wire(f *hub.Frame) []byte {
	if c.compress && len(f.JSON) >= c.ws.opts.CompressAbove {
		return f.Encoded(slotDeflate, deflateFrame)
	}
	return f.Encoded(slotText, textFrame)
}

// negotiatesDeflate reports whether gorilla's upgrade of r negotiates
// permessage-deflate: exactly when its upgrader has EnableCompression and
// the client's Sec-WebSocket-Extensions lists permessage-deflate, whatever
// the parameters (gorilla answers with no context takeover either way;
// server.go, Upgrade). gorilla keeps the outcome to itself, so it is
// decided here from the request, by gorilla's rule.
func (ws *WebSocket) negotiatesDeflate(r *http.Request) bool {
	return ws.m.Upgrader.EnableCompression && offersDeflate(r.Header)
}

// offersDeflate reports whether one of the extensions that gorilla parses
// from h's Sec-WebSocket-Extensions is permessage-deflate. It follows
// gorilla's parseExtensions (util.go) step by step, but keeps no values: an
// extension counts once its parameters parse and a comma or the end follows;
// a malformed one ends its header line. TestOffersDeflateAsGorilla and
// FuzzOffersDeflate hold it to gorilla's own answer.
func offersDeflate(h http.Header) bool {
lines:
	for _, s := range h["Sec-Websocket-Extensions"] {
		for {
			var ext string
			ext, s = nextToken(skipSpace(s))
			if ext == "" {
				continue lines
			}
			for {
				s = skipSpace(s)
				if !strings.HasPrefix(s, ";") {
					break
				}
				var param string
				param, s = nextToken(skipSpace(s[1:]))
				if param == "" {
					continue lines
				}
				s = skipSpace(s)
				if strings.HasPrefix(s, "=") {
					s = skipSpace(skipValue(skipSpace(s[1:])))
				}
				if s != "" && s[0] != ',' && s[0] != ';' {
					continue lines
				}
			}
			if s != "" && s[0] != ',' {
				continue lines
			}
			if ext == "permessage-deflate" {
				return true
			}
			if s == "" {
				continue lines
			}
			s = s[1:]
		}
	}
	return false
}

// skipSpace drops leading spaces and tabs.
func skipSpace(s string) string { return strings.TrimLeft(s, " \t") }

// nextToken splits off s's leading RFC 2616 token.
func nextToken(s string) (token, rest string) {
	i := 0
	for i < len(s) && isTokenOctet(s[i]) {
		i++
	}
	return s[:i], s[i:]
}

// isTokenOctet reports whether b may be part of an RFC 2616 token: a
// visible ASCII character other than a separator.
func isTokenOctet(b byte) bool {
	return b > ' ' && b < 0x7f && !strings.ContainsRune(`()<>@,;:\"/[]?={}`, rune(b))
}

// skipValue drops a parameter's value, a token or a quoted string, from the
// start of s. An unterminated quoted string takes the rest of s, as in
// gorilla's nextTokenOrQuoted.
func skipValue(s string) string {
	if !strings.HasPrefix(s, `"`) {
		_, rest := nextToken(s)
		return rest
	}
	escaped := false
	for i := 1; i < len(s); i++ {
		switch {
		case escaped:
			escaped = false
		case s[i] == '\\':
			escaped = true
		case s[i] == '"':
			return s[i+1:]
		}
	}
	return ""
}
