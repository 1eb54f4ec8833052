//go:build !linux

package sock

import "net"

// Take reports that this system has no fast path: the caller writes through
// c, with its blocking writes and deadlines.
func Take(net.Conn) (FD, bool) { return FD{}, false }

// WriteNow is never reached here: Take gives no descriptor.
func (FD) WriteNow([][]byte) (int, error) { return 0, errNoFD }
