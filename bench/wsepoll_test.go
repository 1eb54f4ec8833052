//go:build linux

package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/gorilla/websocket"
	"golang.org/x/sys/unix"

	"github.com/saga-family/sagapush/internal/wsraw"
)

// recorder collects what a poller reports.
type recorder struct {
	mu     sync.Mutex
	msgs   []string
	lasts  []*int64
	nows   []time.Time // the arrival times onEvent was given
	calls  []time.Time // when onEvent was called
	closes []int
}

func (r *recorder) onEvent(msg []byte, last *int64, now time.Time) {
	r.mu.Lock()
	r.msgs = append(r.msgs, string(msg))
	r.lasts = append(r.lasts, last)
	r.nows = append(r.nows, now)
	r.calls = append(r.calls, time.Now())
	r.mu.Unlock()
}

func (r *recorder) onClose(code int) {
	r.mu.Lock()
	r.closes = append(r.closes, code)
	r.mu.Unlock()
}

func (r *recorder) snapshot() ([]string, []int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msgs...), append([]int(nil), r.closes...)
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client *net.TCPConn, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = within(t, accepted, "the accept")
	t.Cleanup(func() { c.Close(); server.Close() })
	return c.(*net.TCPConn), server
}

// parserConn is a joined connection that is not registered with epoll: the
// test feeds it; its pongs go to the returned peer.
func parserConn(t *testing.T, r *recorder) (*wsConn, net.Conn) {
	t.Helper()
	client, peer := tcpPair(t)
	p := &wsPoller{onEvent: r.onEvent, onClose: r.onClose}
	c, err := p.newConn(client)
	if err != nil {
		t.Fatal(err)
	}
	c.joined = true
	return c, peer
}

// readPong reads one frame from r, which must be a final, masked pong
// (with a non-zero key: the payload did not go out in clear), and returns
// its payload.
func readPong(t *testing.T, r io.Reader) string {
	t.Helper()
	h, payload, err := wsraw.ReadFrame(r)
	if err != nil {
		t.Fatal(err)
	}
	if h.B0 != wsraw.FIN|wsraw.OpPong || !h.Masked || h.Key == 0 {
		t.Fatalf("got %+v %q, want a final masked pong", h, payload)
	}
	return string(payload)
}

func TestFrameParserSplits(t *testing.T) {
	long := strings.Repeat("0123456789", 30) // 300 bytes: 16-bit length
	var stream []byte
	stream = wsraw.AppendFrame(stream, 0x81, []byte(`{"seq":1}`))
	stream = wsraw.AppendFrame(stream, 0x81, []byte(long))
	stream = append(stream, 0x81, 127, 0, 0, 0, 0, 0, 0, 0, 10) // the 64-bit length form
	stream = append(stream, "sixty-four"...)
	stream = wsraw.AppendFrame(stream, 0x89, []byte("ping-1"))
	// A fragmented message with a ping and a pong between its fragments.
	stream = wsraw.AppendFrame(stream, 0x01, []byte("ab"))
	stream = wsraw.AppendFrame(stream, 0x89, []byte("ping-2"))
	stream = wsraw.AppendFrame(stream, 0x00, []byte("cd"))
	stream = wsraw.AppendFrame(stream, 0x8a, []byte("unasked"))
	stream = wsraw.AppendFrame(stream, 0x80, []byte("ef"))
	stream = wsraw.AppendFrame(stream, 0x81, nil) // an empty message
	stream = wsraw.AppendFrame(stream, 0x88, []byte{0x0f, 0xa1, 'b', 'y', 'e'})
	stream = wsraw.AppendFrame(stream, 0x81, []byte("after close"))
	wantMsgs := []string{`{"seq":1}`, long, "sixty-four", "abcdef", ""}
	wantPongs := []string{"ping-1", "ping-2"}

	check := func(t *testing.T, chunks [][]byte) {
		t.Helper()
		r := &recorder{}
		c, peer := parserConn(t, r)
		var err error
		for _, ch := range chunks {
			if err = c.feed(ch, time.Now()); err != nil {
				break
			}
		}
		ce, ok := err.(*wsCloseError)
		if !ok || ce.code != 4001 {
			t.Fatalf("feed ended with %v, want close 4001", err)
		}
		msgs, _ := r.snapshot()
		if fmt.Sprint(msgs) != fmt.Sprint(wantMsgs) {
			t.Fatalf("messages %q, want %q", msgs, wantMsgs)
		}
		for _, last := range r.lasts {
			if last != &c.last {
				t.Fatal("onEvent not given the connection's last seq")
			}
		}
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		for _, want := range wantPongs {
			if got := readPong(t, peer); got != want {
				t.Fatalf("pong %q, want %q", got, want)
			}
		}
	}
	t.Run("whole", func(t *testing.T) { check(t, [][]byte{stream}) })
	t.Run("every split", func(t *testing.T) {
		for i := 0; i <= len(stream); i++ {
			check(t, [][]byte{stream[:i], stream[i:]})
		}
	})
	t.Run("byte by byte", func(t *testing.T) {
		var chunks [][]byte
		for i := range stream {
			chunks = append(chunks, stream[i:i+1])
		}
		check(t, chunks)
	})
}

func TestFrameParserBigMessages(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 70000) // 64-bit length
	mid := bytes.Repeat([]byte("y"), 65535) // the largest 16-bit length
	var stream []byte
	for range 3 {
		stream = wsraw.AppendFrame(stream, 0x81, big)
		stream = wsraw.AppendFrame(stream, 0x81, mid)
		stream = wsraw.AppendFrame(stream, 0x81, []byte("small"))
	}
	for _, size := range []int{1000, 4096, 65536, 100000, len(stream)} {
		r := &recorder{}
		c, _ := parserConn(t, r)
		for off := 0; off < len(stream); off += size {
			if err := c.feed(stream[off:min(off+size, len(stream))], time.Now()); err != nil {
				t.Fatal(err)
			}
		}
		msgs, _ := r.snapshot()
		if len(msgs) != 9 {
			t.Fatalf("chunks of %d: %d messages", size, len(msgs))
		}
		for i, m := range msgs {
			want := [][]byte{big, mid, []byte("small")}[i%3]
			if m != string(want) {
				t.Fatalf("chunks of %d: message %d is %d bytes, want %d", size, i, len(m), len(want))
			}
		}
		if len(c.pend) != 0 || cap(c.pend) > 4<<10 {
			t.Fatalf("chunks of %d: %d pending bytes, cap %d kept", size, len(c.pend), cap(c.pend))
		}
	}
}

func TestFrameParserCloseAndErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame []byte
		code  int    // a close frame's code
		err   string // else the error
	}{
		{"close without code", wsraw.AppendFrame(nil, 0x88, nil), 1005, ""},
		{"close 1000", wsraw.AppendFrame(nil, 0x88, []byte{0x03, 0xe8}), 1000, ""},
		{"close 4001 with reason", wsraw.AppendFrame(nil, 0x88, []byte{0x0f, 0xa1, 's', 'l', 'o', 'w'}), 4001, ""},
		{"compressed", wsraw.AppendFrame(nil, 0xc1, []byte("x")), 0, "RSV"},
		{"masked", []byte{0x81, 0x81, 1, 2, 3, 4, 'x'}, 0, "masked"},
		{"fragmented ping", wsraw.AppendFrame(nil, 0x09, []byte("x")), 0, "control"},
		{"long ping", wsraw.AppendFrame(nil, 0x89, make([]byte, 126)), 0, "control"},
		{"continuation first", wsraw.AppendFrame(nil, 0x80, []byte("x")), 0, "fragmentation"},
		{"opcode 3", wsraw.AppendFrame(nil, 0x83, []byte("x")), 0, "opcode"},
		{"huge length", []byte{0x81, 127, 0x7f, 0, 0, 0, 0, 0, 0, 0}, 0, "too big"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{}
			c, _ := parserConn(t, r)
			err := c.feed(tc.frame, time.Now())
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if ce, ok := err.(*wsCloseError); !ok || ce.code != tc.code {
				t.Fatalf("got %v, want close %d", err, tc.code)
			}
		})
	}
	// A text frame inside a fragmented message.
	r := &recorder{}
	c, _ := parserConn(t, r)
	c.feed(wsraw.AppendFrame(nil, 0x01, []byte("a")), time.Now())
	if err := c.feed(wsraw.AppendFrame(nil, 0x81, []byte("b")), time.Now()); err != errFragment {
		t.Fatalf("text inside a fragmented message: %v", err)
	}
}

// wsTestServer is a gorilla server that answers the join, then runs script
// on the connection; errors go to errs.
func wsTestServer(t *testing.T, script func(c *websocket.Conn) error) (addr string, errs chan error) {
	t.Helper()
	errs = make(chan error, 100)
	up := websocket.Upgrader{WriteBufferSize: 256} // NextWriter fragments above 256 bytes
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("token") != "tok" {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			errs <- err
			return
		}
		defer c.Close()
		_, join, err := c.ReadMessage()
		if err != nil || !bytes.Contains(join, []byte(`"join_project"`)) {
			errs <- fmt.Errorf("join: %v %s", err, join)
			return
		}
		if err := script(c); err != nil {
			errs <- err
		}
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), errs
}

func TestDialEndToEnd(t *testing.T) {
	// 0 is the loop without batching; 20 ms is far above the default, so
	// that the pong and the close echo wait out a whole sleep.
	for _, interval := range []time.Duration{0, defaultPollInterval, 20 * time.Millisecond} {
		t.Run(interval.String(), func(t *testing.T) { testDialEndToEnd(t, interval) })
	}
}

func testDialEndToEnd(t *testing.T, interval time.Duration) {
	const n = 200
	sent := make([]string, 0, n+2)
	for i := 1; i <= n; i++ {
		sent = append(sent, fmt.Sprintf(`{"event":"story_processed","seq":%d,"data":{"i":%d}}`, i, i))
	}
	big := `{"seq":201,"pad":"` + strings.Repeat("z", 70000) + `"}`
	frag := `{"seq":202,"pad":"` + strings.Repeat("f", 1000) + `"}`
	sent = append(sent, big, frag)
	pong := make(chan string, 1)
	closeEcho := make(chan int, 1)
	addr, errs := wsTestServer(t, func(c *websocket.Conn) error {
		// The reply and the first messages in one write, as a busy
		// server's buffered writes arrive: none may be stranded.
		nw, _ := c.NextWriter(websocket.TextMessage)
		io.WriteString(nw, `{"event":"joined_project","ack":1}`)
		nw.Close()
		for _, m := range sent[:n] {
			if err := c.WriteMessage(websocket.TextMessage, []byte(m)); err != nil {
				return err
			}
		}
		c.WriteMessage(websocket.TextMessage, []byte(big)) // one frame, 64-bit length
		nw, _ = c.NextWriter(websocket.TextMessage)        // continuation frames
		io.WriteString(nw, frag)
		nw.Close()
		c.SetPongHandler(func(s string) error { pong <- s; return nil })
		c.SetCloseHandler(func(code int, _ string) error { closeEcho <- code; return nil })
		go func() {
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					return
				}
			}
		}()
		c.WriteControl(websocket.PingMessage, []byte("are you there"), time.Now().Add(time.Second))
		select {
		case s := <-pong:
			if s != "are you there" {
				return fmt.Errorf("pong %q", s)
			}
		case <-time.After(5 * time.Second):
			return fmt.Errorf("no pong")
		}
		c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4001, "too slow"), time.Now().Add(time.Second))
		select {
		case code := <-closeEcho:
			if code != 4001 {
				return fmt.Errorf("close echo %d", code)
			}
		case <-time.After(5 * time.Second):
			return fmt.Errorf("no close echo")
		}
		time.Sleep(100 * time.Millisecond) // let the client close first
		return nil
	})
	r := &recorder{}
	p := startPoller(t, interval, r.onEvent, r.onClose)
	join := []byte(`{"event":"join_project","data":{"projectId":"room-0"},"ack":1}`)
	c, err := p.dial(addr, "/ws?token=tok", localAddr(0), join, 0, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		_, closes := r.snapshot()
		if len(closes) > 0 || time.Now().After(deadline) {
			break
		}
	}
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	msgs, closes := r.snapshot()
	if len(msgs) != len(sent) {
		t.Fatalf("%d messages, want %d", len(msgs), len(sent))
	}
	for i := range sent {
		if msgs[i] != sent[i] {
			t.Fatalf("message %d: %.80q, want %.80q", i, msgs[i], sent[i])
		}
	}
	if fmt.Sprint(closes) != "[4001]" {
		t.Fatalf("closes %v, want [4001]", closes)
	}
	c.mu.Lock()
	dead := c.dead
	c.mu.Unlock()
	p.mu.Lock()
	slot := p.conns[c.id]
	p.mu.Unlock()
	if !dead || slot != nil {
		t.Fatalf("after the close frame: dead %v, table slot %v", dead, slot)
	}
	c.Close() // the worker's "close" on a closed connection is harmless
}

func TestDialRejects(t *testing.T) {
	addr, _ := wsTestServer(t, func(c *websocket.Conn) error {
		return c.WriteMessage(websocket.TextMessage, []byte(`{"event":"error"}`))
	})
	r := &recorder{}
	p := startPoller(t, defaultPollInterval, r.onEvent, r.onClose)
	join := []byte(`{"event":"join_project"}`)
	if _, err := p.dial(addr, "/ws?token=bad", localAddr(1), join, 0, 5*time.Second); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("bad token: %v", err)
	}
	if _, err := p.dial(addr, "/ws?token=tok", localAddr(1), join, 0, 5*time.Second); err == nil || !strings.Contains(err.Error(), "not joined") {
		t.Fatalf("no join reply: %v", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.conns) != 0 {
		t.Fatalf("failed dials registered %d connections", len(p.conns))
	}
}

// TestPollerCloseRace closes connections from another goroutine, as the
// worker's "close" command does, while the loop reads them; the server's
// EOFs and the reused fd numbers must not reach a wrong connection.
func TestPollerCloseRace(t *testing.T) {
	stopSending := make(chan struct{})
	addr, _ := wsTestServer(t, func(c *websocket.Conn) error {
		c.WriteMessage(websocket.TextMessage, []byte(`{"event":"joined_project"}`))
		for seq := 1; ; seq++ {
			select {
			case <-stopSending:
				return nil // the handler's Close: an EOF without a close frame
			default:
			}
			if err := c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"seq":%d}`, seq)); err != nil {
				return nil
			}
			time.Sleep(time.Millisecond)
		}
	})
	var mu sync.Mutex
	lastSeq := map[*int64]int64{}
	var bad []string
	onEvent := func(msg []byte, last *int64, _ time.Time) {
		seq := jsonInt(msg, `"seq":`)
		mu.Lock()
		if seq != lastSeq[last]+1 {
			bad = append(bad, fmt.Sprintf("seq %d after %d", seq, lastSeq[last]))
		}
		lastSeq[last] = seq
		mu.Unlock()
		*last = seq
	}
	var closes sync.Map
	p := startPoller(t, defaultPollInterval, onEvent, func(code int) { closes.Store(code, true) })
	join := []byte(`{"event":"join_project"}`)
	open := func(k int) []*wsConn {
		var cs []*wsConn
		for i := range k {
			c, err := p.dial(addr, "/ws?token=tok", localAddr(i), join, 0, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			cs = append(cs, c)
		}
		return cs
	}
	for round := range 3 {
		cs := open(20)
		time.Sleep(30 * time.Millisecond)
		var wg sync.WaitGroup
		for _, c := range cs {
			wg.Add(1)
			go func() { defer wg.Done(); c.Close() }()
		}
		wg.Wait()
		p.mu.Lock()
		for _, c := range cs {
			if !c.dead || p.conns[c.id] != nil {
				t.Fatalf("round %d: connection %d still live", round, c.id)
			}
		}
		p.mu.Unlock()
	}
	// The server ends the rest: EOFs without close frames record nothing.
	cs := open(10)
	time.Sleep(30 * time.Millisecond)
	close(stopSending)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		live := 0
		for _, c := range cs {
			c.mu.Lock()
			if !c.dead {
				live++
			}
			c.mu.Unlock()
		}
		if live == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open after the server's EOF", live)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bad) > 0 {
		t.Fatalf("out of order: %v", bad[:min(len(bad), 5)])
	}
	if len(lastSeq) != 70 {
		t.Fatalf("%d connections got events, want 70", len(lastSeq))
	}
	closes.Range(func(k, _ any) bool { t.Errorf("close %v recorded for an EOF", k); return true })
}

// TestDialOneWrite: the server sends the 101, the join reply, messages and a
// close in one write, so they all arrive in the handshake's first read.
func TestDialOneWrite(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	waitStamping(t)
	var wrote [2]time.Time // before and after the server's write
	written := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		out := []byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Accept: " + wsAccept(req.Header.Get("Sec-WebSocket-Key")) + "\r\n\r\n")
		out = wsraw.AppendFrame(out, 0x81, []byte(`{"event":"joined_project"}`))
		out = wsraw.AppendFrame(out, 0x81, []byte(`{"seq":1}`))
		out = wsraw.AppendFrame(out, 0x89, []byte("p"))
		out = wsraw.AppendFrame(out, 0x81, []byte(`{"seq":2}`))
		out = wsraw.AppendFrame(out, 0x88, []byte{0x0f, 0xa1})
		wrote[0] = time.Now()
		c.Write(out)
		wrote[1] = time.Now()
		close(written)
		io.Copy(io.Discard, c) // until the client closes
	}()
	r := &recorder{}
	p := startPoller(t, defaultPollInterval, r.onEvent, r.onClose)
	c, err := p.dial(ln.Addr().String(), "/ws", localAddr(0), []byte(`{}`), 0, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	msgs, closes := r.snapshot()
	if fmt.Sprint(msgs) != `[{"seq":1} {"seq":2}]` || fmt.Sprint(closes) != "[4001]" {
		t.Fatalf("messages %q closes %v", msgs, closes)
	}
	if !c.dead {
		t.Fatal("connection open after the close frame")
	}
	// Read in the handshake, they are still timed by the kernel.
	within(t, written, "the server's write")
	for _, now := range r.nows {
		if now.Before(wrote[0]) || now.After(wrote[1]) {
			t.Fatalf("arrival %v, not within the server's write %v .. %v", now, wrote[0], wrote[1])
		}
	}
}

// TestCloseWhileOnClose: the worker's "close" command holds the worker's
// mutex while it closes connections, and onClose takes that mutex; a close
// frame handled meanwhile must not hold the connection's lock in onClose.
func TestCloseWhileOnClose(t *testing.T) {
	sendClose := make(chan struct{})
	addr, _ := wsTestServer(t, func(c *websocket.Conn) error {
		c.WriteMessage(websocket.TextMessage, []byte(`{"event":"joined_project"}`))
		select {
		case <-sendClose:
		case <-time.After(10 * time.Second):
			return nil // the test gave up
		}
		c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4001, ""), time.Now().Add(time.Second))
		c.ReadMessage() // the echo
		return nil
	})
	var workerMu sync.Mutex // the worker's w.mu
	closes := map[int]int{} // the worker's w.closes
	inOnClose := make(chan struct{})
	p := startPoller(t, defaultPollInterval, func([]byte, *int64, time.Time) {}, func(code int) {
		close(inOnClose)
		workerMu.Lock()
		closes[code]++
		workerMu.Unlock()
	})
	c, err := p.dial(addr, "/ws?token=tok", localAddr(0), []byte(`{"event":"join_project"}`), 0, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	workerMu.Lock() // "close" begins
	close(sendClose)
	select {
	case <-inOnClose: // the loop now waits for workerMu
	case <-time.After(5 * time.Second):
		t.Fatal("no close frame")
	}
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	select {
	case <-closed:
		workerMu.Unlock()
	case <-time.After(5 * time.Second):
		workerMu.Unlock() // lets the test end
		t.Fatal("Close blocked on the loop, which waits in onClose: deadlock")
	}
	p.stop() // waits for the loop, so onClose has returned
	if closes[4001] != 1 {
		t.Fatalf("closes %v, want 4001 once", closes)
	}
}

// waitStamping returns once the kernel stamps received packets. The first
// socket that asks for timestamps turns them on for the whole system in
// deferred work, so a packet that comes at once may have none; the probe
// socket stays open for the test, keeping them on.
func waitStamping(t *testing.T) {
	t.Helper()
	c, peer := parserConn(t, &recorder{})
	b, oob := make([]byte, 8), make([]byte, oobSize)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		peer.Write([]byte{1})
		time.Sleep(time.Millisecond)
		if _, at, err := recvStamped(c.fd, b, oob); err == nil && !at.IsZero() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no receive timestamps after 5 s")
		}
	}
}

// stampedPair is a loopback pair whose client end is a wsConn, with the
// kernel's receive timestamps on, reporting to r.
func stampedPair(t *testing.T, r *recorder) (*wsConn, net.Conn) {
	t.Helper()
	waitStamping(t)
	c, peer := parserConn(t, r)
	on, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS)
	if err != nil || on != 1 {
		t.Fatalf("SO_TIMESTAMPNS %d, %v after newConn", on, err)
	}
	return c, peer
}

// timedWrite writes b and returns the times around the write.
func timedWrite(t *testing.T, w io.Writer, b []byte) (before, after time.Time) {
	t.Helper()
	before = time.Now()
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	return before, time.Now()
}

// TestReadStamp: the loop's read times a message by the kernel's receive
// time of its last byte, not by when it read it.
func TestReadStamp(t *testing.T) {
	r := &recorder{}
	c, peer := stampedPair(t, r)
	buf, oob := make([]byte, 64<<10), make([]byte, oobSize)
	read := func() (readAt time.Time) {
		t.Helper()
		readAt = time.Now()
		if code, _ := c.read(buf, oob, false); code != 0 || c.dead {
			t.Fatalf("read: close %d, dead %v", code, c.dead)
		}
		return readAt
	}
	check := func(i int, before, after, readAt time.Time) {
		t.Helper()
		_, _ = r.snapshot()
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(r.nows) != i+1 {
			t.Fatalf("%d messages, want %d", len(r.nows), i+1)
		}
		now := r.nows[i]
		if now.Before(before) || now.After(after) {
			t.Fatalf("message %d: arrival %v, not within its write %v .. %v", i, now, before, after)
		}
		if readAt.Sub(now) < 40*time.Millisecond {
			t.Fatalf("message %d: arrival %v only %v before the read: the read's time, not the kernel's", i, now, readAt.Sub(now))
		}
	}

	// One message, read 50 ms after it came.
	before, after := timedWrite(t, peer, wsraw.AppendFrame(nil, 0x81, []byte(`{"seq":1}`)))
	time.Sleep(50 * time.Millisecond)
	check(0, before, after, read())

	// Two segments read at once: the message has the later one's time.
	f := wsraw.AppendFrame(nil, 0x81, []byte(`{"seq":2,"pad":"`+strings.Repeat("x", 100)+`"}`))
	timedWrite(t, peer, f[:50])
	time.Sleep(50 * time.Millisecond)
	before, after = timedWrite(t, peer, f[50:])
	time.Sleep(50 * time.Millisecond)
	check(1, before, after, read())

	// A message straddling two reads: the time of the read that ends it.
	f = wsraw.AppendFrame(nil, 0x81, []byte(`{"seq":3}`))
	timedWrite(t, peer, f[:4])
	time.Sleep(20 * time.Millisecond)
	read()
	before, after = timedWrite(t, peer, f[4:])
	time.Sleep(50 * time.Millisecond)
	check(2, before, after, read())
}

// TestReadWithoutStamp: a socket without SO_TIMESTAMPNS gets no stamp, and
// the read falls back to its own time.
func TestReadWithoutStamp(t *testing.T) {
	r := &recorder{}
	c, peer := parserConn(t, r)
	if err := unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 0); err != nil {
		t.Fatal(err)
	}
	peer.Write(wsraw.AppendFrame(nil, 0x81, []byte(`{"seq":1}`)))
	time.Sleep(50 * time.Millisecond)
	oob := make([]byte, oobSize)
	n, at, err := recvStamped(c.fd, make([]byte, 100), oob)
	if err != nil || n != 11 || !at.IsZero() {
		t.Fatalf("recvStamped: %d bytes, stamp %v, %v", n, at, err)
	}
	peer.Write(wsraw.AppendFrame(nil, 0x81, []byte(`{"seq":2}`)))
	time.Sleep(50 * time.Millisecond)
	readAt := time.Now()
	c.read(make([]byte, 100), oob, false)
	msgs, _ := r.snapshot()
	if len(msgs) != 1 || r.nows[0].Before(readAt) {
		t.Fatalf("messages %q at %v, want one timed at the read, %v or later", msgs, r.nows, readAt)
	}
}

// TestRxTime walks control data as the kernel lays it out: another message
// before the timestamp, and a truncated one.
func TestRxTime(t *testing.T) {
	oob := make([]byte, 128)
	put := func(off int, typ int32, data []byte) int {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[off]))
		h.Level, h.Type = unix.SOL_SOCKET, typ
		h.SetLen(unix.CmsgLen(len(data)))
		copy(oob[off+unix.CmsgLen(0):], data)
		return off + unix.CmsgSpace(len(data))
	}
	ts := unix.NsecToTimespec(1_700_000_000_123_456_789)
	tsBytes := unsafe.Slice((*byte)(unsafe.Pointer(&ts)), unsafe.Sizeof(ts))
	end := put(0, unix.SCM_RIGHTS, []byte{1, 2, 3, 4, 5}) // 5 bytes: padded
	end = put(end, unix.SCM_TIMESTAMPNS, tsBytes)
	if got := rxTime(oob[:end]); got.UnixNano() != 1_700_000_000_123_456_789 {
		t.Fatalf("after another message: %v", got)
	}
	if got := rxTime(oob[:end-1]); !got.IsZero() {
		t.Fatalf("truncated: %v", got)
	}
	if got := rxTime(oob[:put(0, unix.SCM_CREDENTIALS, tsBytes)]); !got.IsZero() {
		t.Fatalf("no timestamp: %v", got)
	}
	if got := rxTime(nil); !got.IsZero() {
		t.Fatalf("empty: %v", got)
	}
}

// TestStampedReader: the handshake's reads are timed by the kernel too.
func TestStampedReader(t *testing.T) {
	c, peer := stampedPair(t, &recorder{})
	sr, err := newStampedReader(c.conn)
	if err != nil {
		t.Fatal(err)
	}
	before, after := timedWrite(t, peer, []byte("HTTP/1.1 101"))
	time.Sleep(50 * time.Millisecond)
	readAt := time.Now()
	b := make([]byte, 100)
	n, err := sr.Read(b)
	if err != nil || string(b[:n]) != "HTTP/1.1 101" {
		t.Fatalf("read %q, %v", b[:n], err)
	}
	if sr.at.Before(before) || sr.at.After(after) || readAt.Sub(sr.at) < 40*time.Millisecond {
		t.Fatalf("stamp %v: write %v .. %v, read %v", sr.at, before, after, readAt)
	}
	// Nothing there: it waits in the runtime's poller, under the deadline.
	c.conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := sr.Read(b); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	c.conn.SetReadDeadline(time.Time{})
	peer.Close()
	if _, err := sr.Read(b); err != io.EOF {
		t.Fatalf("read after the peer closed: %v", err)
	}
}

// TestReadAllocs: reading and handling whole messages allocates nothing.
func TestReadAllocs(t *testing.T) {
	var got int
	var stamped bool
	p := &wsPoller{onEvent: func(_ []byte, _ *int64, now time.Time) {
		got++
		stamped = now.Before(time.Now().Add(-time.Microsecond)) || stamped
	}}
	waitStamping(t)
	client, peer := tcpPair(t)
	c, err := p.newConn(client)
	if err != nil {
		t.Fatal(err)
	}
	c.joined = true
	frame := wsraw.AppendFrame(nil, 0x81, []byte(`{"event":"story_processed","seq":1}`))
	pfd := rawFD(t, peer.(*net.TCPConn))
	buf, oob := make([]byte, 64<<10), make([]byte, oobSize)
	allocs := testing.AllocsPerRun(200, func() {
		unix.Write(pfd, frame) // loopback: there once the write returns
		c.read(buf, oob, false)
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per read", allocs)
	}
	if got < 200 || !stamped {
		t.Fatalf("%d messages read, stamped %v", got, stamped)
	}
}

func rawFD(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// TestPollerBatches: with a long interval, a message that comes while the
// loop sleeps waits for the next round, yet has its arrival time; and the
// sleep holds up neither Close nor stop.
func TestPollerBatches(t *testing.T) {
	waitStamping(t)
	const interval = 200 * time.Millisecond
	second := make(chan [2]time.Time, 1)
	addr, _ := wsTestServer(t, func(c *websocket.Conn) error {
		c.WriteMessage(websocket.TextMessage, []byte(`{"event":"joined_project"}`))
		time.Sleep(50 * time.Millisecond) // the loop has the join's round behind it
		c.WriteMessage(websocket.TextMessage, []byte(`{"seq":1}`))
		time.Sleep(20 * time.Millisecond) // the loop sleeps after seq 1's round
		before := time.Now()
		c.WriteMessage(websocket.TextMessage, []byte(`{"seq":2}`))
		second <- [2]time.Time{before, time.Now()}
		c.ReadMessage() // until the client closes
		return nil
	})
	r := &recorder{}
	p := startPoller(t, interval, r.onEvent, r.onClose)
	c, err := p.dial(addr, "/ws?token=tok", localAddr(0), []byte(`{"event":"join_project"}`), 0, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	w := within(t, second, "the second message's write")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if msgs, _ := r.snapshot(); len(msgs) == 2 || time.Now().After(deadline) {
			break
		}
	}
	r.mu.Lock()
	if len(r.msgs) != 2 {
		r.mu.Unlock()
		t.Fatalf("messages %q", r.msgs)
	}
	now, call := r.nows[1], r.calls[1]
	r.mu.Unlock()
	if now.Before(w[0]) || now.After(w[1]) {
		t.Fatalf("seq 2 arrival %v, not within its write %v .. %v", now, w[0], w[1])
	}
	if call.Sub(now) < interval/2 {
		t.Fatalf("seq 2 handled %v after it came: the loop did not sleep", call.Sub(now))
	}
	// The loop sleeps now; Close and stop do not wait for it.
	start := time.Now()
	c.Close()
	if d := time.Since(start); d > interval/2 {
		t.Fatalf("Close took %v", d)
	}
	start = time.Now()
	p.stop()
	if d := time.Since(start); d > interval+100*time.Millisecond {
		t.Fatalf("stop took %v", d)
	}
}

// TestPollerReadsBacklog: a connection with several read buffers waiting
// and nothing more coming is read to the end, though edge-triggered epoll
// reports it once; if the peer closed after them, the EOF is read too.
func TestPollerReadsBacklog(t *testing.T) {
	t.Run("open", func(t *testing.T) { testPollerReadsBacklog(t, false) })
	t.Run("then FIN", func(t *testing.T) { testPollerReadsBacklog(t, true) })
}

func testPollerReadsBacklog(t *testing.T, fin bool) {
	r := &recorder{}
	p := startPoller(t, defaultPollInterval, r.onEvent, r.onClose)
	client, peer := tcpPair(t)
	c, err := p.newConn(client)
	if err != nil {
		t.Fatal(err)
	}
	c.joined = true
	var stream []byte
	n := 0
	for len(stream) < 300<<10 { // over four of the loop's buffers
		n++
		stream = wsraw.AppendFrame(stream, 0x81, fmt.Appendf(nil, `{"seq":%d,"pad":"%s"}`, n, strings.Repeat("p", 1000)))
	}
	// All of it in the client's receive queue before the loop sees the
	// socket, so that no later arrival makes a new edge.
	if err := unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20); err != nil {
		t.Fatal(err)
	}
	go func() {
		peer.Write(stream)
		if fin {
			peer.Close()
		}
	}()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if q, _ := unix.IoctlGetInt(c.fd, unix.SIOCINQ); q == len(stream) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stream did not arrive")
		}
	}
	time.Sleep(20 * time.Millisecond) // and the FIN
	c.mu.Lock()
	err = c.detach()
	if err == nil {
		err = p.add(c)
	}
	c.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if msgs, _ = r.snapshot(); len(msgs) == n || time.Now().After(deadline) {
			break
		}
	}
	if len(msgs) != n {
		t.Fatalf("%d of %d messages read", len(msgs), n)
	}
	for i, m := range msgs {
		if jsonInt([]byte(m), `"seq":`) != int64(i+1) {
			t.Fatalf("message %d: %.30s", i, m)
		}
	}
	time.Sleep(20 * time.Millisecond) // the loop may read the EOF just after
	c.mu.Lock()
	dead := c.dead
	c.mu.Unlock()
	if dead != fin {
		t.Fatalf("peer closed %v, connection closed %v", fin, dead)
	}
}

// TestDialDetaches: once dialed, the connection's socket is watched by the
// poller's epoll only, not by the Go runtime's, whose wakeups would undo
// the batching.
func TestDialDetaches(t *testing.T) {
	addr, _ := wsTestServer(t, func(c *websocket.Conn) error {
		c.WriteMessage(websocket.TextMessage, []byte(`{"event":"joined_project"}`))
		c.ReadMessage() // until the client closes
		return nil
	})
	p := startPoller(t, defaultPollInterval, func([]byte, *int64, time.Time) {}, func(int) {})
	c, err := p.dial(addr, "/ws?token=tok", localAddr(0), []byte(`{"event":"join_project"}`), 0, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Every epoll instance of the process lists its fds in fdinfo.
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	watchers := 0
	for _, e := range fds {
		if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); l != "anon_inode:[eventpoll]" {
			continue
		}
		info, err := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			continue // closed meanwhile
		}
		for line := range strings.SplitSeq(string(info), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "tfd:" && f[1] == fmt.Sprint(c.fd) {
				if e.Name() != fmt.Sprint(p.epfd) {
					t.Fatalf("fd %d is in epoll %s too, not only the poller's %d", c.fd, e.Name(), p.epfd)
				}
				watchers++
			}
		}
	}
	if watchers != 1 {
		t.Fatalf("fd %d in %d of the poller's epolls, want 1", c.fd, watchers)
	}
}

// TestWriteWaits: a pong to a detached connection whose send buffer is full
// waits for room and goes out whole, after what was queued.
func TestWriteWaits(t *testing.T) {
	c, peer := parserConn(t, &recorder{})
	if err := c.detach(); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(c.fd)
	unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
	unix.SetsockoptInt(rawFD(t, peer.(*net.TCPConn)), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096)
	// Fill the send buffer, and the peer's receive buffer behind it, till
	// no more goes.
	var queued int
	junk := make([]byte, 4096)
	for stalled := false; !stalled; time.Sleep(20 * time.Millisecond) {
		stalled = true
		for {
			n, err := unix.Write(c.fd, junk)
			if err == unix.EAGAIN {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			queued += n
			stalled = false
		}
	}
	pong := wsraw.AppendMasked(nil, wsraw.OpPong, []byte("still here"))
	done := make(chan error, 1)
	go func() { done <- c.write(pong) }()
	select {
	case err := <-done:
		t.Fatalf("write returned %v with the buffers full", err)
	case <-time.After(50 * time.Millisecond):
	}
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.CopyN(io.Discard, peer, int64(queued)); err != nil {
		t.Fatal(err)
	}
	if got := readPong(t, peer); got != "still here" {
		t.Fatalf("pong %q", got)
	}
	if err := within(t, done, "the pong's write"); err != nil {
		t.Fatal(err)
	}
}

// startPoller starts a poller that is stopped when the test ends (stop may
// also be called before: it runs once).
func startPoller(t *testing.T, interval time.Duration, onEvent func([]byte, *int64, time.Time), onClose func(int)) *wsPoller {
	t.Helper()
	p, err := newWSPoller(interval, onEvent, onClose)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	return p
}

// within receives from ch, failing the test after 5 s.
func within[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// BenchmarkFeed is the parser's cost per frame (ns/frame): reads of 64 KiB
// full of event-sized text frames, with 7- and 16-bit lengths, one
// straddling each boundary, as the loop gets them under load.
func BenchmarkFeed(b *testing.B) {
	for _, msg := range []string{ // 7-bit and 16-bit lengths
		`{"event":"typing_start","projectId":"p1","data":{"userId":"u-0123456789"}}`,
		`{"event":"story_processed","projectId":"p1","seq":12345,"ts":1700000000000,"data":{"storyId":"s-0123456789","status":"done","pad":"` + strings.Repeat("x", 60) + `"}}`,
	} {
		b.Run(fmt.Sprintf("%d bytes", len(msg)), func(b *testing.B) {
			var stream []byte
			frames := 0
			for len(stream) < 1<<20 {
				stream = wsraw.AppendFrame(stream, 0x81, []byte(msg))
				frames++
			}
			p := &wsPoller{onEvent: func([]byte, *int64, time.Time) {}, onClose: func(int) {}}
			c := &wsConn{p: p, id: -1, fd: -1, joined: true}
			now := time.Now()
			b.SetBytes(int64(len(stream)))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				for off := 0; off < len(stream); off += 64 << 10 {
					if err := c.feed(stream[off:min(off+64<<10, len(stream))], now); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*frames), "ns/frame")
		})
	}
}
