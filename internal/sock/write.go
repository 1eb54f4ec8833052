package sock

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
var errNoFD = errors.New("sock: no descriptor")

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
