//go:build linux

package sock

import (
	"errors"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// WatchHangup calls onHangup once the peer of c closes its side (FIN) or
// resets the connection, and returns stop, which ends the watch (see the
// package comment for the rules both twins keep). On Linux every watched
// socket sits in one epoll instance, waited on by one goroutine for the
// whole process: a watch costs no goroutine. A socket that exposes no
// descriptor, or that epoll refuses, gets the portable twin.
func WatchHangup(c net.Conn, onHangup func()) (stop func()) {
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			if w := processWatcher(); w != nil {
				if stop, ok := w.watch(raw, onHangup); ok {
					return stop
				}
			}
		}
	}
	return watchByRead(c, onHangup)
}

// hangupEvents are what a watch waits for: the peer's FIN (EPOLLRDHUP; a
// reset and errors come as EPOLLHUP and EPOLLERR, which epoll always
// reports). Not EPOLLIN: bytes a peer sends without closing must not wake
// the watcher, let alone spin it (they stay unread). One-shot: once
// reported the socket is disabled, so a hung-up socket that stays
// readable is reported once, until stop removes it.
const hangupEvents = unix.EPOLLRDHUP | unix.EPOLLONESHOT

// maxHangupEvents is the most events one wait takes; more wait for the
// next round.
const maxHangupEvents = 128

// watcher is one epoll instance and the callbacks of its registrations.
//
// A registration is known by an id of its own, never reused, which is the
// epoll data of its socket: a descriptor number is reused as soon as it is
// closed, so an event the loop took before a stop could otherwise be
// handed to the next socket with that number. An event whose id has no
// callback (stopped, or reported already) does nothing.
type watcher struct {
	epfd int

	// mu guards the ids and callbacks; each onHangup runs under it, so
	// that once stop has forgotten an id, its callback is not running and
	// never will.
	mu   sync.Mutex
	last uint64 // the last id handed out
	regs map[uint64]func()
}

var (
	watcherOnce sync.Once
	theWatcher  *watcher // nil when epoll is not to be had: every watch reads
)

// processWatcher returns the process's watcher, made and started on first
// use.
func processWatcher() *watcher {
	watcherOnce.Do(func() {
		w, err := newWatcher()
		if err != nil {
			return
		}
		theWatcher = w
		go w.run()
	})
	return theWatcher
}

func newWatcher() (*watcher, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	return &watcher{epfd: epfd, regs: make(map[uint64]func())}, nil
}

// watch registers raw's socket. The callback is known before epoll may
// report: a socket hung up already is reported at once.
func (w *watcher) watch(raw syscall.RawConn, onHangup func()) (stop func(), ok bool) {
	w.mu.Lock()
	w.last++
	id := w.last
	w.regs[id] = onHangup
	w.mu.Unlock()
	ev := unix.EpollEvent{Events: hangupEvents}
	setEventID(&ev, id)
	var err error
	// Inside Control the descriptor is c's: it cannot be closed meanwhile.
	if cerr := raw.Control(func(fd uintptr) {
		err = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	}); cerr != nil {
		err = cerr
	}
	if err != nil {
		w.forget(id)
		return nil, false
	}
	return func() { w.stop(raw, id) }, true
}

// stop ends a registration. The descriptor leaves the epoll instance inside
// Control, so the number removed is still this socket's: after a close it
// could be another socket's, watched under another id. Control fails on a
// closed socket, whose descriptor the kernel removed by itself.
func (w *watcher) stop(raw syscall.RawConn, id uint64) {
	w.forget(id)
	raw.Control(func(fd uintptr) {
		unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
}

func (w *watcher) forget(id uint64) {
	w.mu.Lock()
	delete(w.regs, id)
	w.mu.Unlock()
}

// run is the watcher's goroutine: it waits and reports, for the life of the
// process.
func (w *watcher) run() {
	events := make([]unix.EpollEvent, maxHangupEvents)
	for {
		w.dispatch(events[:w.wait(events, -1)])
	}
}

// wait waits up to msec ms (-1: for ever) for events and returns how many
// came.
func (w *watcher) wait(events []unix.EpollEvent, msec int) int {
	for {
		n, err := unix.EpollWait(w.epfd, events, msec)
		if err == nil {
			return n
		}
		if !errors.Is(err, unix.EINTR) {
			// Only a bad epfd or buffer gives another error: a bug.
			panic("sock: epoll_wait: " + err.Error())
		}
	}
}

// dispatch calls the callback of each event's registration, once: the id
// is forgotten as it is reported.
func (w *watcher) dispatch(events []unix.EpollEvent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range events {
		id := eventID(&events[i])
		if f := w.regs[id]; f != nil {
			delete(w.regs, id)
			f()
		}
	}
}

// setEventID and eventID keep a 64-bit id in an event's data. Fd and Pad
// are that 64-bit union on every Linux port of x/sys (amd64 packs the
// struct, arm64 and others pad it before them); the kernel hands the bytes
// back as they were given, whatever the byte order.
func setEventID(ev *unix.EpollEvent, id uint64) {
	ev.Fd, ev.Pad = int32(uint32(id)), int32(uint32(id>>32))
}

func eventID(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}
