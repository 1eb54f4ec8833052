// Package sockwrite writes to a stream socket from the calling goroutine
// without ever waiting: its one job. WriteNow hands the kernel what it takes
// at once and says how much that was; the caller keeps the rest for a
// goroutine of its own that may wait (in the WebSocket transport, the
// flusher). Linux has the fast path (sockwrite_linux.go: send(2) and
// writev(2) as raw system calls on the socket's descriptor); elsewhere Take
// reports none (sockwrite_other.go) and every write goes the caller's slow
// way, a plain blocking write under a deadline.
//
// The invariant that makes the raw descriptor safe: WriteNow bypasses
// net.Conn, and with it the runtime's reference count that keeps a
// descriptor from being closed under a write. A descriptor number is reused
// by the next file the process opens once it is closed, so a write that ran
// after the close would land in another connection. The caller therefore
// writes an FD only while its socket is open, and every Close of the socket
// happens under the same lock as the writes: the lock is held across each
// WriteNow, and across Close together with the flag that says the socket is
// closed, which every WriteNow checks first under that lock. No WriteNow
// then runs during or after the Close, and the descriptor is never written
// once another file may have its number. (A Close while another goroutine
// reads the socket defers the close(2) until that read returns: later, never
// sooner, so the invariant still holds.) TestNoWriteOnReusedFD holds the
// invariant under -race with sockets closed and reopened during writes.
package sockwrite

import "errors"

// MaxBufs is the most buffers one WriteNow writes; it leaves the rest.
const MaxBufs = 64

// FD is a socket's descriptor, for WriteNow. The zero FD holds none.
type FD struct {
	v int32 // the descriptor + 1
}

// Ok reports whether fd holds a descriptor.
func (fd FD) Ok() bool { return fd.v > 0 }

// errNoFD is WriteNow's error on an FD that holds no descriptor.
var errNoFD = errors.New("sockwrite: no descriptor")

// Consume drops the first n bytes of bufs, n being what WriteNow took, and
// returns what remains to be written. It may shorten bufs[i] in place.
func Consume(bufs [][]byte, n int) [][]byte {
	for len(bufs) > 0 && n >= len(bufs[0]) {
		n -= len(bufs[0])
		bufs = bufs[1:]
	}
	if n > 0 {
		bufs[0] = bufs[0][n:]
	}
	return bufs
}
