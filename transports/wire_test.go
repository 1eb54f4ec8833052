package transports

import (
	"bufio"
	"bytes"
	"compress/flate"
	"io"
	"strings"
	"testing"
	"unsafe"
)

// textFrame and deflateFrame write frames that decode back to the payload,
// at every length class (7-bit, 16-bit and 64-bit).
func TestFrameEncodings(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 70000} {
		payload := []byte(strings.Repeat("x", n))
		if n > 3 {
			copy(payload, `{"a`)
		}
		for _, deflate := range []bool{false, true} {
			frame := textFrame(payload)
			if deflate {
				frame = deflateFrame(payload)
			}
			typ, got := readServerFrame(t, frame, deflate)
			if typ != 1 || !bytes.Equal(got, payload) {
				t.Fatalf("n=%d deflate=%v: type %d, %d bytes back", n, deflate, typ, len(got))
			}
		}
	}
}

// readServerFrame parses one server frame by hand, as RFC 6455 and 7692 say.
func readServerFrame(t *testing.T, frame []byte, deflated bool) (int, []byte) {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(frame))
	b0, _ := br.ReadByte()
	b1, _ := br.ReadByte()
	if b0&0x80 == 0 {
		t.Fatal("FIN not set")
	}
	if (b0&0x40 != 0) != deflated {
		t.Fatalf("RSV1 = %v, want %v", b0&0x40 != 0, deflated)
	}
	if b1&0x80 != 0 {
		t.Fatal("a server frame must not be masked")
	}
	n := int(b1 & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		io.ReadFull(br, l[:])
		n = int(l[0])<<8 | int(l[1])
	case 127:
		var l [8]byte
		io.ReadFull(br, l[:])
		n = 0
		for _, b := range l {
			n = n<<8 | int(b)
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		t.Fatal(err)
	}
	if br.Buffered() != 0 {
		t.Fatalf("%d bytes after the frame", br.Buffered())
	}
	if deflated {
		fr := flate.NewReader(io.MultiReader(bytes.NewReader(body), strings.NewReader("\x00\x00\xff\xff\x01\x00\x00\xff\xff")))
		var err error
		if body, err = io.ReadAll(fr); err != nil {
			t.Fatal(err)
		}
	}
	return int(b0 & 0x0f), body
}

// What a fan-out touches in wsClient (Warm, Wake, pumpLocked, sendLocked)
// shares the first cache line, and the line is one only if allocations are
// 64-byte aligned, which a size that is a multiple of 64 gives.
func TestClientLayout(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("the layout is tuned for 64-bit platforms")
	}
	var c wsClient
	if n := unsafe.Sizeof(c); n%64 != 0 {
		t.Fatalf("wsClient is %d bytes, not a multiple of 64", n)
	}
	for _, f := range []struct {
		name      string
		off, size uintptr
	}{
		{"mu", unsafe.Offsetof(c.mu), unsafe.Sizeof(c.mu)},
		{"compress", unsafe.Offsetof(c.compress), unsafe.Sizeof(c.compress)},
		{"line", unsafe.Offsetof(c.line), unsafe.Sizeof(c.line)}, // what Warm loads
		{"fd", unsafe.Offsetof(c.fd), unsafe.Sizeof(c.fd)},
		{"sess", unsafe.Offsetof(c.sess), unsafe.Sizeof(c.sess)},
		{"conn", unsafe.Offsetof(c.conn), unsafe.Sizeof(c.conn)},
		{"ws", unsafe.Offsetof(c.ws), unsafe.Sizeof(c.ws)},
	} {
		if end := f.off + f.size; end > 64 {
			t.Fatalf("the fan-out's field %s ends at byte %d, past the first line", f.name, end)
		}
	}
}
