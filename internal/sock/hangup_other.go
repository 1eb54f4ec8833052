//go:build !linux

package sock

import "net"

// WatchHangup calls onHangup once the peer of c closes its side or resets
// the connection, and returns stop, which ends the watch (see the package
// comment for the rules both twins keep). This is the portable twin: a
// goroutine per watched socket, reading it (watchByRead).
func WatchHangup(c net.Conn, onHangup func()) (stop func()) {
	return watchByRead(c, onHangup)
}
