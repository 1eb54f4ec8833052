package transports

import (
	"bufio"
	"bytes"
	"compress/flate"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/gorilla/websocket"
	"github.com/olahol/melody"

	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/wsraw"
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

// readServerFrame parses one server frame (internal/wsraw) and inflates it
// as RFC 7692 says when it is compressed.
func readServerFrame(t *testing.T, frame []byte, deflated bool) (int, []byte) {
	t.Helper()
	r := bytes.NewReader(frame)
	h, body, err := wsraw.ReadFrame(r)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Fin() {
		t.Fatal("FIN not set")
	}
	if h.Compressed() != deflated {
		t.Fatalf("RSV1 = %v, want %v", h.Compressed(), deflated)
	}
	if h.Masked {
		t.Fatal("a server frame must not be masked")
	}
	if r.Len() != 0 {
		t.Fatalf("%d bytes after the frame", r.Len())
	}
	if deflated {
		fr := flate.NewReader(io.MultiReader(bytes.NewReader(body), strings.NewReader("\x00\x00\xff\xff\x01\x00\x00\xff\xff")))
		if body, err = io.ReadAll(fr); err != nil {
			t.Fatal(err)
		}
	}
	return int(h.Op()), body
}

// The hub warms the WebSocket client before waking it only as a Warmer.
var _ hub.Warmer = (*wsClient)(nil)

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

// gorillaNegotiates runs gorilla's own upgrade, with compression enabled, on
// a request with the given Sec-WebSocket-Extensions lines, and reports
// whether its 101 response names permessage-deflate.
func gorillaNegotiates(t testing.TB, exts []string) bool {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, "/ws", nil)
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Sec-Websocket-Version", "13")
	r.Header.Set("Sec-Websocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	if exts != nil {
		r.Header["Sec-Websocket-Extensions"] = exts
	}
	w := &recordingHijacker{ResponseRecorder: httptest.NewRecorder()}
	u := websocket.Upgrader{EnableCompression: true, ReadBufferSize: 256, WriteBufferSize: 256,
		CheckOrigin: func(*http.Request) bool { return true }}
	if _, err := u.Upgrade(w, r, nil); err != nil {
		t.Fatalf("extensions %q: %v", exts, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(&w.conn.out), r)
	if err != nil {
		t.Fatalf("extensions %q: gorilla's response: %v", exts, err)
	}
	return strings.Contains(resp.Header.Get("Sec-Websocket-Extensions"), "permessage-deflate")
}

// recordingHijacker hands gorilla a connection that keeps what is written.
type recordingHijacker struct {
	*httptest.ResponseRecorder
	conn recordingConn
}

func (h *recordingHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return &h.conn, bufio.NewReadWriter(bufio.NewReader(strings.NewReader("")), bufio.NewWriter(&h.conn)), nil
}

type recordingConn struct {
	net.Conn // nil: gorilla's upgrade only writes and sets deadlines
	out      bytes.Buffer
}

func (c *recordingConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *recordingConn) SetDeadline(time.Time) error      { return nil }
func (c *recordingConn) SetWriteDeadline(time.Time) error { return nil }
func (c *recordingConn) SetReadDeadline(time.Time) error  { return nil }
func (c *recordingConn) Close() error                     { return nil }

// Compression is decided from the request by gorilla's rule, so it is on
// exactly when gorilla's upgrade negotiated it.
func TestOffersDeflateAsGorilla(t *testing.T) {
	for _, tc := range []struct {
		exts []string
		want bool
	}{
		{nil, false},
		{[]string{"permessage-deflate"}, true},
		{[]string{"permessage-deflate; client_max_window_bits"}, true}, // browsers
		{[]string{"permessage-deflate; client_max_window_bits=15; server_no_context_takeover"}, true},
		{[]string{`permessage-deflate; a="x\"y", foo`}, true},
		{[]string{"  permessage-deflate  ,  "}, true},
		{[]string{"foo, permessage-deflate"}, true},
		{[]string{`foo; bar="a,b", permessage-deflate`}, true},
		{[]string{"foo bar", "permessage-deflate"}, true},       // a bad line spoils only itself
		{[]string{`permessage-deflate; a="unterminated`}, true}, // gorilla takes it
		{[]string{"x-webkit-deflate-frame"}, false},
		{[]string{"Permessage-Deflate"}, false}, // gorilla compares exactly
		{[]string{"permessage-deflatex"}, false},
		{[]string{"permessage-deflate=1"}, false},
		{[]string{"permessage-deflate;"}, false},
		{[]string{"permessage-deflate; =1"}, false},
		{[]string{"permessage-deflate; a=1 b"}, false},
		{[]string{", permessage-deflate"}, false},
		{[]string{"foo bar, permessage-deflate"}, false},
		{[]string{"no-deflate; permessage-deflate"}, false},
	} {
		h := http.Header{}
		if tc.exts != nil {
			h["Sec-Websocket-Extensions"] = tc.exts
		}
		gorilla := gorillaNegotiates(t, tc.exts)
		if got := offersDeflate(h); got != gorilla || got != tc.want {
			t.Errorf("extensions %q: offersDeflate %v, gorilla %v, want %v", tc.exts, got, gorilla, tc.want)
		}
	}

	// With compression off gorilla negotiates nothing, and neither does the
	// transport.
	r := httptest.NewRequest(http.MethodGet, "/ws", nil)
	r.Header.Set("Sec-WebSocket-Extensions", "permessage-deflate")
	ws := &WebSocket{m: melody.New()}
	ws.m.Upgrader.EnableCompression = false
	if ws.negotiatesDeflate(r) {
		t.Error("compression negotiated with EnableCompression off")
	}
	ws.m.Upgrader.EnableCompression = true
	if !ws.negotiatesDeflate(r) {
		t.Error("compression not negotiated with EnableCompression on")
	}
}

// FuzzOffersDeflate holds offersDeflate to gorilla's answer on any header;
// each line of the input is one Sec-WebSocket-Extensions line.
func FuzzOffersDeflate(f *testing.F) {
	for _, s := range []string{
		"permessage-deflate; client_max_window_bits",
		"foo; bar=\"a\\\"b\", permessage-deflate",
		"foo bar\npermessage-deflate",
		"permessage-deflate; a=\"open",
		"permessage-deflate\t;\tx\t=\ty\t,",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		exts := strings.Split(s, "\n")
		if got, want := offersDeflate(http.Header{"Sec-Websocket-Extensions": exts}), gorillaNegotiates(t, exts); got != want {
			t.Fatalf("extensions %q: offersDeflate %v, gorilla %v", exts, got, want)
		}
	})
}
