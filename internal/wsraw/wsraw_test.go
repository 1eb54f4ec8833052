package wsraw

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

var lengths = []int{0, 1, 4, 125, 126, 127, 65535, 65536, 70000}

// Server frames come back as they were written, at every length form, with
// their FIN, RSV and opcode bits, and nothing read past them.
func TestAppendFrameReadFrame(t *testing.T) {
	for _, b0 := range []byte{FIN | OpText, OpText, OpContinuation, FIN | OpContinuation, FIN | RSV1 | OpText, FIN | OpBinary, FIN | OpClose, FIN | OpPong} {
		for _, n := range lengths {
			payload := bytes.Repeat([]byte("ab"), n)[:n]
			r := bytes.NewReader(append(AppendFrame(nil, b0, payload), "next"...))
			h, got, err := ReadFrame(r)
			if err != nil {
				t.Fatalf("b0 %#x, %d bytes: %v", b0, n, err)
			}
			want := Header{B0: b0, Len: uint64(n)}
			if h != want || !bytes.Equal(got, payload) {
				t.Fatalf("b0 %#x, %d bytes: header %+v, %d bytes back; want %+v", b0, n, h, len(got), want)
			}
			if h.Fin() != (b0&FIN != 0) || h.Op() != b0&0x0f || h.RSV() != b0&RSVBits || h.Compressed() != (b0&RSV1 != 0) {
				t.Fatalf("b0 %#x: Fin %v, Op %#x, RSV %#x, Compressed %v", b0, h.Fin(), h.Op(), h.RSV(), h.Compressed())
			}
			if r.Len() != len("next") {
				t.Fatalf("b0 %#x, %d bytes: %d bytes left, want 4", b0, n, r.Len())
			}
		}
	}
}

// The length takes the shortest form, as RFC 6455 5.2 asks.
func TestAppendFrameLengthForms(t *testing.T) {
	for _, tc := range []struct{ n, hdr int }{{125, 2}, {126, 4}, {65535, 4}, {65536, 10}} {
		f := AppendFrame(nil, FIN|OpText, make([]byte, tc.n))
		if _, got := ParseHeader(f); got != tc.hdr || len(f) != tc.hdr+tc.n {
			t.Fatalf("%d bytes: header of %d, frame of %d; want %d", tc.n, got, len(f), tc.hdr)
		}
	}
}

// Client frames are final, masked with a non-zero key, and unmask back.
func TestAppendMasked(t *testing.T) {
	for _, n := range lengths {
		payload := bytes.Repeat([]byte{'p'}, n)
		f := AppendMasked([]byte("before"), OpText, payload)
		if !bytes.HasPrefix(f, []byte("before")) {
			t.Fatalf("%d bytes: dst not kept", n)
		}
		f = f[len("before"):]
		h, hdr := ParseHeader(f)
		if !h.Masked || h.Key == 0 || h.B0 != FIN|OpText {
			t.Fatalf("%d bytes: header %+v", n, h)
		}
		if n >= 4 && bytes.Equal(f[hdr:], payload) {
			t.Fatalf("%d bytes: payload sent in clear", n)
		}
		h2, got, err := ReadFrame(bytes.NewReader(f))
		if err != nil || h2 != h || !bytes.Equal(got, payload) {
			t.Fatalf("%d bytes: %v, header %+v, %d bytes back", n, err, h2, len(got))
		}
	}
}

// A header that is not all there asks for more, first for two bytes, then
// for the whole header.
func TestParseHeaderPartial(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame []byte
		hdr   int
	}{
		{"7-bit", AppendFrame(nil, FIN|OpText, []byte("hello")), 2},
		{"16-bit", AppendFrame(nil, FIN|OpText, make([]byte, 300)), 4},
		{"64-bit", AppendFrame(nil, FIN|OpText, make([]byte, 70000)), 10},
		{"masked 7-bit", AppendMasked(nil, OpText, []byte("hello")), 6},
		{"masked 64-bit", AppendMasked(nil, OpText, make([]byte, 70000)), 14},
		{"64-bit form of a short length", []byte{0x81, 127, 0, 0, 0, 0, 0, 0, 0, 3, 'a', 'b', 'c'}, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := range tc.hdr {
				h, need := ParseHeader(tc.frame[:i])
				if need <= i || need > tc.hdr || h != (Header{}) {
					t.Fatalf("%d bytes: need %d, header %+v", i, need, h)
				}
				if i >= 2 && need != tc.hdr {
					t.Fatalf("%d bytes: need %d, want the whole header's %d", i, need, tc.hdr)
				}
			}
			if h, n := ParseHeader(tc.frame); n != tc.hdr || int(h.Len) != len(tc.frame)-tc.hdr {
				t.Fatalf("header %d bytes, length %d; want %d, %d", n, h.Len, tc.hdr, len(tc.frame)-tc.hdr)
			}
		})
	}
}

func TestReadFrameErrors(t *testing.T) {
	full := AppendFrame(nil, FIN|OpText, []byte("payload"))
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"nothing", nil, io.EOF},
		{"one byte", full[:1], io.ErrUnexpectedEOF},
		{"short length", []byte{0x81, 126, 1}, io.ErrUnexpectedEOF},
		{"short key", []byte{0x81, 0x85, 1, 2}, io.ErrUnexpectedEOF},
		{"short payload", full[:len(full)-1], io.ErrUnexpectedEOF},
		{"huge length", []byte{0x81, 127, 0x7f, 0, 0, 0, 0, 0, 0, 0}, ErrTooBig},
	} {
		if _, _, err := ReadFrame(bytes.NewReader(tc.in)); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestCloseCode(t *testing.T) {
	for _, tc := range []struct {
		payload string
		code    int
	}{{"", 1005}, {"\x03", 1005}, {"\x03\xe8", 1000}, {"\x0f\xa1slow", 4001}} {
		if got := CloseCode([]byte(tc.payload)); got != tc.code {
			t.Errorf("CloseCode(%q) = %d, want %d", tc.payload, got, tc.code)
		}
	}
}

// The bench parses every frame it receives with ParseHeader and writes its
// pongs with AppendMasked into a buffer of its own: neither allocates.
func TestNoAllocations(t *testing.T) {
	frame := AppendFrame(nil, FIN|OpText, []byte(strings.Repeat("x", 300)))
	if n := testing.AllocsPerRun(100, func() { ParseHeader(frame) }); n != 0 {
		t.Errorf("ParseHeader: %v allocations", n)
	}
	buf := make([]byte, 0, MaxHeaderLen+125)
	if n := testing.AllocsPerRun(100, func() { AppendMasked(buf, OpPong, frame[:125]) }); n != 0 {
		t.Errorf("AppendMasked: %v allocations", n)
	}
}

func BenchmarkParseHeader(b *testing.B) {
	frame := AppendFrame(nil, FIN|OpText, []byte(strings.Repeat("x", 200)))
	for range b.N {
		ParseHeader(frame)
	}
}

// Whatever the bytes, ParseHeader asks for at most a whole header's length,
// and a header it parsed parses the same from exactly its own bytes.
func FuzzParseHeader(f *testing.F) {
	f.Add([]byte{0x81, 5, 'h', 'e', 'l', 'l', 'o'})
	f.Add([]byte{0x81, 126, 1, 44})
	f.Add([]byte{0x81, 0xfe, 1, 44, 1, 2, 3, 4})
	f.Add([]byte{0x02, 127, 0, 0, 0, 0, 0, 1, 0, 0})
	f.Add([]byte{0x88, 0xff, 0, 0, 0, 0, 0, 0, 0, 2, 9, 9, 9, 9})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n := ParseHeader(b)
		if n > len(b) {
			if n > MaxHeaderLen || h != (Header{}) {
				t.Fatalf("% x: need %d, header %+v", b, n, h)
			}
			return
		}
		if h2, n2 := ParseHeader(b[:n]); h2 != h || n2 != n {
			t.Fatalf("% x: %+v %d, then from its %d bytes %+v %d", b, h, n, n, h2, n2)
		}
		if h.B0 != b[0] || h.Masked != (b[1]&0x80 != 0) {
			t.Fatalf("% x: header %+v", b, h)
		}
	})
}
