package transports

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"sync"
)

// Write coalescing, as nats-server does for its clients: when a connection
// has several messages queued, melody still writes them one WebSocket frame
// at a time, one syscall each. coalescingConn sits under gorilla and holds a
// frame back while the next data message is already queued in melody's
// buffer, then writes them together with one writev. A frame is held only
// when another is certain to follow at once on the same goroutine, so
// nothing waits; a reader that keeps up sees one syscall per message, one
// that falls behind gets batches, which is when they pay.

// maxHold bounds the bytes held back before a write goes out anyway.
const maxHold = 64 << 10

var holdPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

type coalescingConn struct {
	net.Conn
	more func() bool // true while another data message is queued behind this one

	mu   sync.Mutex
	held *bytes.Buffer // nil when nothing is held (pooled)
}

// Write runs under gorilla's write lock: frames arrive in order, never two
// at once.
func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.more() && (c.held == nil || c.held.Len()+len(p) <= maxHold) {
		if c.held == nil {
			c.held = holdPool.Get().(*bytes.Buffer)
		}
		c.held.Write(p)
		return len(p), nil
	}
	if c.held == nil {
		return c.Conn.Write(p)
	}
	bufs := net.Buffers{c.held.Bytes(), p}
	_, err := bufs.WriteTo(c.Conn)
	c.releaseLocked()
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *coalescingConn) releaseLocked() {
	if c.held.Cap() <= 2*maxHold {
		c.held.Reset()
		holdPool.Put(c.held)
	}
	c.held = nil
}

// Close writes what is held (a close frame may be among it) and closes. It
// never waits: a write blocked on a stalled client holds the lock, and
// closing the socket is what ends that write.
func (c *coalescingConn) Close() error {
	if c.mu.TryLock() {
		if c.held != nil {
			c.Conn.Write(c.held.Bytes()) // best effort, under the deadline in force
			c.releaseLocked()
		}
		c.mu.Unlock()
	}
	return c.Conn.Close()
}

// coalescingWriter hands gorilla a coalescingConn when it hijacks the
// connection.
type coalescingWriter struct {
	http.ResponseWriter
	more func() bool
}

func (w *coalescingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	return &coalescingConn{Conn: nc, more: w.more}, brw, nil
}
