// Package sock holds the service's OS-specific socket tricks, each with a
// portable twin, and is the service's one package that uses unsafe and raw
// system calls on sockets (the bench's load generator has its own). It has
// two jobs: writes that never wait, and watching sockets for the peer's
// hang-up.
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
//
// # Watching for the peer's hang-up
//
// WatchHangup tells when the peer of a socket that nobody reads closes its
// side or resets the connection: an SSE stream's socket only carries
// writes, and a write to a peer that sent its FIN succeeds, so without a
// watch a stream whose client left would go on until a write fails. On
// Linux (hangup_linux.go) one goroutine per process waits in one epoll
// instance for EPOLLRDHUP, EPOLLHUP and EPOLLERR of every watched socket, so
// a watch costs a map entry and no goroutine; elsewhere, and for a
// connection without a descriptor, the portable twin (hangup.go) reads the
// socket on a goroutine of its own. A half-close by the peer counts as a
// hang-up; bytes it sends without closing do not (epoll leaves them unread,
// the twin drops them).
//
// The rules of a watch, on either twin:
//
//   - onHangup runs at most once, on the watcher's goroutine: it must not
//     block, nor call into this package.
//   - stop must be called before the socket is closed: whatever watches a
//     descriptor must stop before the descriptor is closed, since its
//     number goes to the next file the process opens. On Linux stop removes
//     the descriptor from epoll inside RawConn.Control, where it is still
//     the socket's; the twin's goroutine would read a closed socket's error
//     as a hang-up.
//   - Once stop returns, onHangup is not running and never will.
//   - A watch owns the socket's read side: nothing else reads it or sets
//     its read deadline while it is watched, and it is watched once at a
//     time.
//   - stop is called even after a report: on Linux the socket stays in
//     epoll, disabled, until then.
//
// An event taken by the epoll loop just before a stop, and read after the
// descriptor was closed and its number reused by a newly watched socket, is
// not that socket's: each watch carries an id of its own, never reused, in
// the event's data, and an event whose id was stopped does nothing.
// TestStaleEventForReusedFD holds this with the loop stepped by hand.
package sock
