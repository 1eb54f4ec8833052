package transports

import (
	"bufio"
	"bytes"
	"compress/flate"
	"errors"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/gorilla/websocket"
	"golang.org/x/sys/unix"

	"sagapush/hub"
)

// The WebSocket write path. melody gives every connection a goroutine that
// writes its frames one at a time; a fan-out to N members then costs N
// goroutine wake-ups, gorilla frame builds and syscalls. Here, a data
// frame is encoded once per event (hub.Frame.Encoded) and written straight
// from the goroutine that fans out, with a non-blocking write: when the
// kernel takes it whole, a delivery costs one syscall and no goroutine. Only
// a connection whose socket is full gets a flusher goroutine, which writes
// the rest with blocking writes under WriteWait and then takes what queued
// meanwhile, several frames per writev (the write coalescing of nats-server).
// gorilla still reads, and writes the handshake, pings and close frames:
// they come through wireConn.Write and take their turn in the same order.

// Encoding slots of hub.Frame used by this transport.
const (
	slotText    = 0 // a text frame
	slotDeflate = 1 // a text frame compressed with permessage-deflate
)

// maxBatch bounds the frames taken from the hub's queue for one write.
const maxBatch = 64

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
}

// Write is gorilla's: the handshake first, then pings and close frames, each
// in one call. It never waits on the socket.
func (w *wireConn) Write(p []byte) (int, error) {
	c := w.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.handshaken {
		// The 101 response, written with gorilla's deadline before melody
		// starts the session, so before any frame. It says whether
		// compression was negotiated.
		c.handshaken = true
		c.compress = bytes.Contains(p, []byte("permessage-deflate"))
		c.mu.Unlock()
		defer c.mu.Lock()
		return w.Conn.Write(p)
	}
	if c.sockClosed {
		return 0, net.ErrClosed
	}
	c.sendLocked([][]byte{p}, false)
	return len(p), nil
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
	return w.Conn.SetReadDeadline(t)
}

// Close closes the socket once the flusher wrote what it holds (a close
// frame may be among it); it never waits.
func (w *wireConn) Close() error {
	c := w.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flushing {
		c.closeWhenFlushed = true
		return nil
	}
	c.closeSocketLocked()
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
	fd := -1
	if sc, ok := nc.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			raw.Control(func(d uintptr) { fd = int(d) })
		}
	}
	c := h.c
	c.mu.Lock()
	c.sock, c.fd = nc, fd
	c.mu.Unlock()
	return &wireConn{Conn: nc, c: c}, brw, nil
}

// writeNow writes bufs to fd without waiting and returns how many bytes the
// kernel took. The fd is only used while the socket is open: every close
// goes through closeSocketLocked, under the same lock as the writes.
func writeNow(fd int, bufs [][]byte) (int, error) {
	for {
		var n int
		var err error
		if len(bufs) == 1 {
			// send, not write: a shorter way into the socket than the
			// file layer, and no SIGPIPE for a peer that is gone.
			n, err = send(fd, bufs[0])
		} else {
			n, err = writev(fd, bufs)
		}
		switch {
		case err == nil:
			return n, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return 0, nil
		default:
			return 0, err
		}
	}
}

// send is send(2) without waiting: x/sys's Sendto does not return the
// count, which a stream socket's partial write needs. Neither send nor
// writev can block here (MSG_DONTWAIT; the hijacked socket is non-blocking),
// so both are raw system calls, without the runtime's bookkeeping for a
// call that might block.
func send(fd int, b []byte) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// writev writes a batch without waiting (see send).
func writev(fd int, bufs [][]byte) (int, error) {
	var iovs [maxBatch]unix.Iovec
	iov := iovs[:0]
	for _, b := range bufs[:min(len(bufs), maxBatch)] {
		if len(b) == 0 {
			continue
		}
		v := unix.Iovec{Base: &b[0]}
		v.SetLen(len(b))
		iov = append(iov, v)
	}
	if len(iov) == 0 {
		return 0, nil
	}
	r, _, e := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// consume drops the first n bytes of bufs.
func consume(bufs [][]byte, n int) [][]byte {
	for len(bufs) > 0 && n >= len(bufs[0]) {
		n -= len(bufs[0])
		bufs = bufs[1:]
	}
	if n > 0 {
		bufs[0] = bufs[0][n:]
	}
	return bufs
}

// sendLocked writes bufs after everything before them: at once when the
// socket takes them, else through the flusher. stable says the slices stay
// unchanged after the call (encoded frames); others are copied when they
// have to wait.
func (c *wsClient) sendLocked(bufs [][]byte, stable bool) {
	if c.sockClosed {
		return
	}
	if !c.flushing && c.fd >= 0 {
		n, err := writeNow(c.fd, bufs)
		if err != nil {
			c.closeSocketLocked() // the read loop ends and melody disconnects
			return
		}
		if bufs = consume(bufs, n); len(bufs) == 0 {
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

// closeSocketLocked closes the socket now, dropping what waits.
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
				c.closeSocketLocked()
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
				// melody then closes the socket (once flushed).
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
