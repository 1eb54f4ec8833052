package sock

import (
	"net"
	"sync/atomic"
	"time"
)

// pastDeadline makes a pending or future read fail at once.
var pastDeadline = time.Unix(1, 0)

// watchByRead is the portable hang-up watch: a goroutine of its own per
// socket, blocked in a Read, which returns at the peer's FIN or reset.
// Bytes the peer sends without closing are read and dropped. stop ends the
// goroutine with a read deadline in the past, which leaves the socket open,
// and waits for it, so onHangup has returned, or never runs, once stop has.
func watchByRead(c net.Conn, onHangup func()) (stop func()) {
	var stopped atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Not one byte at a time: a peer that streams bytes would cost a
		// system call each.
		var b [64]byte
		for {
			if _, err := c.Read(b[:]); err != nil {
				if !stopped.Load() {
					onHangup()
				}
				return
			}
		}
	}()
	return func() {
		if stopped.Swap(true) {
			return
		}
		c.SetReadDeadline(pastDeadline)
		<-done
	}
}
