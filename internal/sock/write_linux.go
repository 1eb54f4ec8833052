//go:build linux

package sock

import (
	"errors"
	"math"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Take returns c's descriptor, when c is a socket that exposes one
// (syscall.Conn). The descriptor stays c's only until c is closed: see the
// package comment for how WriteNow may use it.
func Take(c net.Conn) (FD, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return FD{}, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return FD{}, false
	}
	fd := -1
	if raw.Control(func(d uintptr) { fd = int(d) }) != nil || fd < 0 || fd >= math.MaxInt32 {
		return FD{}, false
	}
	return FD{v: int32(fd) + 1}, true
}

// WriteNow writes up to MaxBufs of bufs without waiting and returns how many
// bytes the kernel took: 0 when the socket is full. It retries when a signal
// interrupts it. The socket must be open, under the package's invariant.
func (fd FD) WriteNow(bufs [][]byte) (int, error) {
	if !fd.Ok() {
		return 0, errNoFD
	}
	d := int(fd.v - 1)
	for {
		var n int
		var err error
		if len(bufs) == 1 {
			// send, not write: a shorter way into the socket than the
			// file layer, and no SIGPIPE for a peer that is gone.
			n, err = send(d, bufs[0])
		} else {
			n, err = writev(d, bufs)
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
// writev can block here (MSG_DONTWAIT; a Go socket is non-blocking), so both
// are raw system calls, without the runtime's bookkeeping for a call that
// might block.
func send(fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// writev writes a batch without waiting (see send).
func writev(fd int, bufs [][]byte) (int, error) {
	var iovs [MaxBufs]unix.Iovec
	iov := iovs[:0]
	for _, b := range bufs[:min(len(bufs), MaxBufs)] {
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
