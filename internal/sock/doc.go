// Package sock holds the service's OS-specific socket tricks, each with a
// portable twin, and is the one package that uses unsafe and raw system
// calls on sockets.
//
// # Writes that never wait
//
// WriteNow writes to a stream socket from the calling goroutine without
// ever waiting. It hands the kernel what it takes at once and says how much
// that was; the caller keeps the rest for a goroutine of its own that may
// wait (in the WebSocket transport, the flusher). Linux has the fast path
// (write_linux.go: send(2) and writev(2) as raw system calls on the
// socket's descriptor); elsewhere Take reports none (write_other.go) and
// every write goes the caller's slow way, a plain blocking write under a
// deadline.
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
package sock
