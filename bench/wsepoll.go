//go:build linux

package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/saga-family/sagapush/internal/wsraw"
)

// The generator's WebSocket reading side. It shares the cores with the
// server, so it must be cheap per received message: a goroutine per
// connection cost a netpoll wakeup, a goroutine switch and gorilla's
// reader per message. Instead one goroutine per wsPoller waits in epoll
// over many connections, reads each into one shared buffer and parses the
// server's frames itself. Only the bytes of a frame that straddles two reads
// are kept per connection, so an idle connection holds no buffer.
//
// WebSocket arrival times are the kernel's receive timestamps
// (SO_TIMESTAMPNS), not the time the loop got around to reading: the
// generator's own scheduling is not counted, as it would not be on a client
// machine of its own. That lets the loop batch its wake-ups: it wakes at
// most once per poll interval (BENCH_POLL_INTERVAL) and then reads every
// connection that became ready meanwhile, so the server's loopback writes
// seldom have a sleeping epoll thread to wake, and the generator pays one
// epoll_wait and one context switch per batch, not per few messages.

// maxFrame bounds a message: the server's are small, and a corrupt length
// must not make the generator allocate gigabytes.
const maxFrame = 16 << 20

// wakeID is the epoll data of the poller's eventfd; connections have ids >= 0.
const wakeID = -1

// defaultPollInterval is the loop's least time between two epoll waits
// (BENCH_POLL_INTERVAL overrides it; 0 waits again at once). Fan-out to
// 2,000 members, 5 runs of 40 or 80 events each, generator and server µs
// CPU per delivery and last member p50: 0: 2.95, 7.63, 11.4 ms; 1 ms:
// 2.87, 7.45, 10.7 ms; 2 ms: 2.95, 7.59, 10.7 ms; 5 ms: 3.31, 7.66,
// 9.9 ms. 5 ms wins the p50 there only because that fan-out lasts two
// intervals and the generator reads after it; a fan-out to 15,000 lasts
// many, and then the generator takes from the server what it costs per
// delivery, which grows with the batch (its reads miss the cache). 1 ms
// also keeps a pong's delay smallest.
const defaultPollInterval = 1 * time.Millisecond

// maxEpollEvents is the most connections one epoll wait reports: enough for a
// whole batch after a poll interval. The rest stay on epoll's ready list
// for the next round.
const maxEpollEvents = 4096

// oobSize holds one SCM_TIMESTAMPNS control message (32 bytes on 64-bit
// Linux) with room to spare.
const oobSize = 64

// wsCloseError is a close frame from the server.
type wsCloseError struct{ code int }

func (e *wsCloseError) Error() string { return fmt.Sprintf("websocket: close %d", e.code) }

var (
	errMasked   = errors.New("websocket: masked frame from the server")
	errRSV      = errors.New("websocket: RSV bit set without a negotiated extension")
	errTooBig   = errors.New("websocket: frame too big")
	errControl  = errors.New("websocket: bad control frame")
	errOpcode   = errors.New("websocket: unknown opcode")
	errFragment = errors.New("websocket: bad fragmentation")
)

// wsPoller reads its connections on one goroutine.
type wsPoller struct {
	epfd     int
	wake     int // eventfd: stop's signal to the loop
	interval time.Duration
	done     chan struct{}
	stopped  sync.Once
	onEvent  func(msg []byte, last *int64, now time.Time)
	onClose  func(code int)
	// onMessage, when set, sees every data message first, the join reply
	// included, with the connection's tag; true means it was consumed.
	onMessage func(tag int, msg []byte) bool

	mu sync.Mutex
	// conns is indexed by connection id, the epoll data: ids are never
	// reused, so an event for a closed connection whose fd number was
	// taken again finds nil, never the new connection.
	conns []*wsConn
}

// wsConn is one connection's state. Whoever uses fd holds mu: the loop while
// it reads, a handshake, Close.
type wsConn struct {
	p   *wsPoller
	id  int // index in p.conns; -1 until registered
	tag int // the dialer's number for it (onMessage)
	fd  int
	// conn is the dialed connection until the handshake is done, then nil
	// (see detach). Kept referenced while set: its finalizer would close fd.
	conn *net.TCPConn

	mu     sync.Mutex
	dead   bool
	joined bool   // the first message (the join reply) was seen
	last   int64  // onEvent's last seq
	pend   []byte // an incomplete frame, header included
	frag   []byte // a fragmented message's payload so far
	fragOp byte   // its opcode; 0 when none is in progress
}

// newWSPoller starts a poller whose loop passes every data message (text or
// binary, as gorilla's NextReader gave them) to onEvent, with the
// connection's last seq and the message's arrival time, and every close
// frame's code to onClose. msg is only valid during the call: it is the
// loop's read buffer. The loop waits at least interval between two epoll
// waits.
func newWSPoller(interval time.Duration, onEvent func(msg []byte, last *int64, now time.Time), onClose func(code int)) (*wsPoller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: wakeID}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, err
	}
	p := &wsPoller{epfd: epfd, wake: wake, interval: interval, done: make(chan struct{}), onEvent: onEvent, onClose: onClose}
	go p.loop()
	return p, nil
}

// stop ends the loop and closes every connection still open. Once only:
// a second close of epfd could close a reused fd number.
func (p *wsPoller) stop() {
	p.stopped.Do(func() {
		unix.Write(p.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		<-p.done
		p.mu.Lock()
		live := append([]*wsConn(nil), p.conns...)
		p.mu.Unlock()
		for _, c := range live {
			if c != nil {
				c.Close()
			}
		}
		unix.Close(p.epfd)
		unix.Close(p.wake)
	})
}

// loop waits for readable connections and reads each once per round; one
// with more than a buffer waiting is read again in the next round, after
// the others had their turn. After a round it sleeps out the rest of the
// poll interval, so that the next wait finds a batch: the arrival times come
// from the kernel, so the sleep is not measured, and a ping waits for its
// pong at most an interval longer.
//
// Edge-triggered: level-triggered epoll polls every connection it reported
// once more in the next wait, only to find it drained, and in a batch of
// hundreds that poll misses the cache (fan-out to 2,000 with a 5 ms
// interval: a third fewer samples in sock_poll and tcp_poll, 0.2 µs less
// CPU per delivery). So a read that filled the buffer puts the connection
// on more: no new edge would report what it left.
func (p *wsPoller) loop() {
	defer close(p.done)
	events := make([]unix.EpollEvent, maxEpollEvents)
	ready := make([]readyConn, 0, len(events))
	var more []readyConn // read again: see read
	buf := make([]byte, 64<<10)
	oob := make([]byte, oobSize) // a heap block: 8-byte aligned for the cmsghdr
	for {
		wait := -1
		if len(more) > 0 {
			wait = 0
		}
		n, err := unix.EpollWait(p.epfd, events, wait)
		woke := time.Now()
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "worker: epoll_wait:", err)
			return
		}
		// Resolve the ids under one lock for the batch.
		ready = append(ready[:0], more...)
		more = more[:0]
		stop := false
		p.mu.Lock()
		for _, ev := range events[:n] {
			if id := int(ev.Fd); id == wakeID {
				stop = true
			} else if id < len(p.conns) && p.conns[id] != nil {
				hup := ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
				ready = append(ready, readyConn{p.conns[id], hup})
			}
		}
		p.mu.Unlock()
		if stop {
			return
		}
		for _, rc := range ready {
			c := rc.c
			code, again := 0, false
			c.mu.Lock()
			if !c.dead {
				code, again = c.read(buf, oob, rc.hup)
			}
			c.mu.Unlock()
			if again {
				more = append(more, rc)
			}
			if code != 0 {
				p.onClose(code)
			}
		}
		if d := p.interval - time.Since(woke); d > 0 {
			time.Sleep(d)
		}
	}
}

// readyConn is a connection to read in this round; hup: epoll reported
// the peer's FIN, a reset or an error.
type readyConn struct {
	c   *wsConn
	hup bool
}

// read reads what c has (at most one buffer) and handles its frames; it
// returns the code of a close frame that ended c, else 0, and whether c
// must be read again, as epoll is edge-triggered and will not report it:
// when the read filled buf, or when hup and the read got data (the EOF
// comes with the next read). oob is the loop's control buffer for the
// receive timestamp.
func (c *wsConn) read(buf, oob []byte, hup bool) (code int, again bool) {
	n, at, err := recvStamped(c.fd, buf, oob)
	switch {
	case err == unix.EAGAIN:
		// Nothing after all: the next arrival is a new edge.
	case err == unix.EINTR:
		return 0, true
	case err != nil:
		return c.fail(err), false
	case n == 0:
		return c.fail(io.EOF), false
	default:
		if at.IsZero() {
			at = time.Now()
		}
		if err := c.feed(buf[:n], at); err != nil {
			return c.fail(err), false
		}
	}
	return 0, n == len(buf) || hup
}

// recvStamped reads fd into buf with recvmsg and returns the kernel's
// receive time of the data, or the zero time if none came with it. For TCP
// that is the time the last segment this call consumed arrived, so a
// message completed by this read gets its last byte's arrival. oob is the
// control buffer, 8-byte aligned.
func recvStamped(fd int, buf, oob []byte) (n int, at time.Time, err error) {
	// A raw recvmsg, not unix.Recvmsg, which allocates a sockaddr per call
	// that TCP never fills; and a raw system call, without the runtime's
	// bookkeeping for one that might block: every fd read here is
	// non-blocking.
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	msg := unix.Msghdr{Iov: &iov, Control: &oob[0]}
	msg.SetIovlen(1)
	msg.SetControllen(len(oob))
	r, _, e := unix.RawSyscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), unix.MSG_CMSG_CLOEXEC)
	if e != 0 {
		return 0, time.Time{}, e
	}
	return int(r), rxTime(oob[:msg.Controllen]), nil
}

// rxTime returns the time of the SCM_TIMESTAMPNS message in oob, the
// control data recvmsg filled, or the zero time. It walks the cmsghdrs
// itself: unix.ParseSocketControlMessage allocates on every read.
func rxTime(oob []byte) time.Time {
	hdr := unix.CmsgLen(0) // the header, aligned: where the data starts
	for len(oob) >= hdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < hdr || l > len(oob) {
			return time.Time{} // truncated (MSG_CTRUNC) or corrupt
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_TIMESTAMPNS && l >= unix.CmsgLen(int(unsafe.Sizeof(unix.Timespec{}))) {
			ts := (*unix.Timespec)(unsafe.Pointer(&oob[hdr]))
			return time.Unix(ts.Unix())
		}
		oob = oob[min(unix.CmsgSpace(l-hdr), len(oob)):]
	}
	return time.Time{}
}

// fail ends c after an error. A close frame is answered as gorilla does
// and its code returned, for the caller to pass to onClose once c.mu is
// released: onClose takes the worker's mutex, which the "close" command
// holds while it waits for c.mu. Anything else (EOF, a reset, a protocol
// error) returns 0: nothing is recorded, as with gorilla's non-close errors.
// c.mu is held.
func (c *wsConn) fail(err error) (code int) {
	if ce, ok := err.(*wsCloseError); ok {
		code = ce.code
		var payload []byte
		if ce.code != 1005 { // "no status" is answered with an empty close
			payload = binary.BigEndian.AppendUint16(nil, uint16(ce.code))
		}
		c.write(wsraw.AppendMasked(nil, wsraw.OpClose, payload))
	}
	c.p.closeLocked(c)
	return code
}

// Close closes c; the worker's "close" command calls it from its own
// goroutine, so it waits for the loop to be done with c.
func (c *wsConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.dead {
		c.p.closeLocked(c)
	}
	return nil
}

// closeLocked takes c out of epoll before its fd is closed (a closed fd
// number may be reused at once), then out of the table. c.mu is held.
func (p *wsPoller) closeLocked(c *wsConn) {
	if c.id >= 0 {
		unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	}
	c.dead = true
	if c.id >= 0 {
		p.mu.Lock()
		p.conns[c.id] = nil
		p.mu.Unlock()
	}
	if c.conn != nil {
		c.conn.Close()
	} else {
		unix.Close(c.fd)
	}
	c.pend, c.frag = nil, nil
}

// dial opens a WebSocket to addr (HTTP path, query included) from laddr,
// sends join as a text frame and waits for the first message, which must
// contain "joined_project"; then the poller reads the connection. The
// handshake is done here on the raw connection, not by gorilla, so that no
// byte after the join reply can be left in a reader the poller never sees.
func (p *wsPoller) dial(addr, path string, laddr *net.TCPAddr, join []byte, tag int, timeout time.Duration) (*wsConn, error) {
	d := net.Dialer{LocalAddr: laddr, Timeout: timeout}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c, err := p.newConn(nc.(*net.TCPConn))
	if err != nil {
		nc.Close()
		return nil, err
	}
	c.tag = tag
	c.mu.Lock()
	err = c.handshake(addr, path, join, timeout)
	switch {
	case err != nil && !c.joined:
		p.closeLocked(c)
		c.mu.Unlock()
		return nil, err
	case err != nil:
		// The server closed right after the join reply: an opened
		// connection that was then closed, as with a reader goroutine.
		code := c.fail(err)
		c.mu.Unlock()
		if code != 0 {
			p.onClose(code)
		}
		return c, nil
	}
	if err = c.detach(); err == nil {
		err = p.add(c)
	}
	if err != nil {
		p.closeLocked(c)
	}
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return c, nil
}

// newConn wraps a connected socket; the loop reads its fd directly, and
// nobody calls Read on nc once the handshake is done. The kernel stamps
// every segment's arrival from here on (SO_TIMESTAMPNS), before the
// handshake sends a byte. (The first socket to ask turns stamping on for
// the system in deferred work: the few packets that come before it is on
// have no stamp, and their reads fall back to time.Now().)
func (p *wsPoller) newConn(nc *net.TCPConn) (*wsConn, error) {
	c := &wsConn{p: p, id: -1, fd: -1, conn: nc}
	rc, err := nc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		c.fd = int(fd)
		serr = unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, fmt.Errorf("SO_TIMESTAMPNS: %w", serr)
	}
	return c, nil
}

// detach takes c's socket out of the Go runtime's poller, where net put it:
// while the loop sleeps out its poll interval, the runtime waits in its own
// epoll for the sleep's timer, and every arrival on a socket that epoll
// still watched would wake the process, as if there were no batching. A dup
// of the fd keeps the socket open for the loop; closing conn takes the
// original out of the runtime's epoll (the runtime deletes it there before
// it closes it). c.mu is held.
func (c *wsConn) detach() error {
	fd, err := unix.FcntlInt(uintptr(c.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return err
	}
	c.conn.Close()
	c.conn, c.fd = nil, fd
	return nil
}

// add registers c with the loop: in the table first, so that its first
// event finds it.
func (p *wsPoller) add(c *wsConn) error {
	p.mu.Lock()
	c.id = len(p.conns)
	p.conns = append(p.conns, c)
	p.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(c.id)}
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev)
}

// handshake upgrades c (RFC 6455 4.1), sends join and reads until the join
// reply. Everything read goes through feed, so the messages that came with
// the reply are handled in order, before the poller reads the rest.
func (c *wsConn) handshake(addr, path string, join []byte, timeout time.Duration) error {
	nc := c.conn
	nc.SetDeadline(time.Now().Add(timeout))
	var k [16]byte
	rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(nc, req); err != nil {
		return err
	}
	sr, err := newStampedReader(nc)
	if err != nil {
		return err
	}
	br := bufio.NewReaderSize(sr, 1024)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	switch {
	case resp.StatusCode != http.StatusSwitchingProtocols:
		return fmt.Errorf("websocket: bad handshake: HTTP %d", resp.StatusCode)
	case !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket"),
		!strings.Contains(strings.ToLower(resp.Header.Get("Connection")), "upgrade"):
		return errors.New("websocket: bad handshake: no upgrade")
	case resp.Header.Get("Sec-WebSocket-Accept") != wsAccept(key):
		return errors.New("websocket: bad handshake: wrong Sec-WebSocket-Accept")
	case resp.Header.Get("Sec-WebSocket-Extensions") != "":
		return errors.New("websocket: bad handshake: extension not offered")
	}
	if _, err := nc.Write(wsraw.AppendMasked(nil, wsraw.OpText, join)); err != nil {
		return err
	}
	for !c.joined {
		if br.Buffered() == 0 {
			if _, err := br.Peek(1); err != nil {
				return fmt.Errorf("join: %v", err)
			}
		}
		b, _ := br.Peek(br.Buffered())
		// The last read's stamp: the arrival of the newest of b's bytes.
		now := sr.at
		if now.IsZero() {
			now = time.Now()
		}
		err := c.feed(b, now)
		br.Discard(len(b))
		if err != nil {
			if c.joined {
				return err
			}
			return fmt.Errorf("join: %v", err)
		}
	}
	// br is empty: every byte read so far went through feed.
	nc.SetDeadline(time.Time{})
	return nil
}

// stampedReader reads a connection still in the runtime's poller (its
// deadlines hold) with recvmsg, keeping the receive time of the last read,
// so that the messages that come with the join reply are timed as the
// loop times the rest.
type stampedReader struct {
	rc  syscall.RawConn
	oob []byte
	at  time.Time // the last read's receive time; zero if none came
}

func newStampedReader(nc *net.TCPConn) (*stampedReader, error) {
	rc, err := nc.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &stampedReader{rc: rc, oob: make([]byte, oobSize)}, nil
}

func (r *stampedReader) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n int
	var err error
	rerr := r.rc.Read(func(fd uintptr) bool {
		for {
			n, r.at, err = recvStamped(int(fd), b, r.oob)
			if err != unix.EINTR {
				return err != unix.EAGAIN // else wait for the poller
			}
		}
	})
	switch {
	case rerr != nil:
		return 0, rerr
	case err != nil:
		return 0, err
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// wsAccept is the Sec-WebSocket-Accept the server must answer key with.
func wsAccept(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

// feed handles the frames in data, which follows the bytes fed before; a
// frame that does not end in data is kept in c.pend. It stops at a close
// frame (a *wsCloseError) or any other error. c.mu is held.
func (c *wsConn) feed(data []byte, now time.Time) error {
	// First finish the frame left incomplete by the last read, taking from
	// data only the bytes it needs.
	for len(c.pend) > 0 {
		h, hdr := wsraw.ParseHeader(c.pend)
		n, err := frameLen(h, hdr)
		if err != nil {
			return err
		}
		if len(c.pend) < n {
			if len(data) == 0 {
				return nil
			}
			if hdr <= len(c.pend) && cap(c.pend) < n {
				c.pend = append(make([]byte, 0, n), c.pend...)
			}
			k := min(n-len(c.pend), len(data))
			c.pend = append(c.pend, data[:k]...)
			data = data[k:]
			continue
		}
		err = c.frame(c.pend[0], c.pend[hdr:n], now)
		c.pend = c.pend[:0]
		if cap(c.pend) > 4<<10 { // do not keep a big message's buffer
			c.pend = nil
		}
		if err != nil {
			return err
		}
	}
	// Then the frames of data in place: most reads hold whole frames.
	for len(data) > 0 {
		h, hdr := wsraw.ParseHeader(data)
		n, err := frameLen(h, hdr)
		if err != nil {
			return err
		}
		if len(data) < n {
			if hdr <= len(data) && cap(c.pend) < n {
				c.pend = make([]byte, 0, n)
			}
			c.pend = append(c.pend[:0], data...)
			return nil
		}
		if err := c.frame(data[0], data[hdr:n], now); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// frameLen checks the header that wsraw.ParseHeader found, h of length
// hdr, and returns the whole frame's length; while the header is
// incomplete (h is zero then), the length that header needs so far. Small
// enough to be inlined: feed calls it for every frame.
func frameLen(h wsraw.Header, hdr int) (n int, err error) {
	switch {
	case h.Masked: // a client must fail on a masked frame (RFC 6455 5.1)
		return 0, errMasked
	case h.Len > maxFrame:
		return 0, errTooBig
	}
	return hdr + int(h.Len), nil
}

// frame handles one complete frame whose first byte is b0. c.mu is held.
func (c *wsConn) frame(b0 byte, payload []byte, now time.Time) error {
	if b0&wsraw.RSVBits != 0 { // RSV1 would be permessage-deflate, which was not offered
		return errRSV
	}
	fin := b0&wsraw.FIN != 0
	switch op := b0 & 0x0f; op {
	case wsraw.OpText, wsraw.OpBinary:
		if c.fragOp != 0 {
			return errFragment
		}
		if fin {
			return c.message(payload, now)
		}
		c.fragOp = op
		c.frag = append(c.frag[:0], payload...)
	case wsraw.OpContinuation:
		if c.fragOp == 0 {
			return errFragment
		}
		if len(c.frag)+len(payload) > maxFrame {
			return errTooBig
		}
		c.frag = append(c.frag, payload...)
		if fin {
			msg := c.frag
			c.fragOp, c.frag = 0, nil
			return c.message(msg, now)
		}
	case wsraw.OpClose, wsraw.OpPing, wsraw.OpPong:
		if !fin || len(payload) > 125 {
			return errControl
		}
		switch op {
		case wsraw.OpClose:
			return &wsCloseError{wsraw.CloseCode(payload)}
		case wsraw.OpPing:
			// The server closes a connection silent for 60 s.
			var b [6 + 125]byte
			return c.write(wsraw.AppendMasked(b[:0], wsraw.OpPong, payload))
		}
	default:
		return errOpcode
	}
	return nil
}

// message handles a whole data message: the first is the join reply.
func (c *wsConn) message(msg []byte, now time.Time) error {
	if !c.joined {
		if !bytes.Contains(msg, []byte("joined_project")) {
			return fmt.Errorf("not joined: %.100s", msg)
		}
		c.joined = true
		if c.p.onMessage != nil {
			c.p.onMessage(c.tag, msg)
		}
		return nil
	}
	if c.p.onMessage != nil && c.p.onMessage(c.tag, msg) {
		return nil
	}
	c.p.onEvent(msg, &c.last, now)
	return nil
}

// write sends a small control frame. It tries a non-blocking write so that
// the loop does not wait on one connection; a full socket buffer falls back
// to waiting, at most 5 s. c.mu is held.
func (c *wsConn) write(b []byte) error {
	n, err := unix.Write(c.fd, b)
	if err == nil && n == len(b) {
		return nil
	}
	if err != nil && err != unix.EAGAIN && err != unix.EINTR {
		return err
	}
	b = b[max(n, 0):]
	deadline := time.Now().Add(5 * time.Second)
	if c.conn != nil { // in the handshake: the runtime's poller waits
		c.conn.SetWriteDeadline(deadline)
		_, err = c.conn.Write(b)
		c.conn.SetWriteDeadline(time.Time{})
		return err
	}
	for len(b) > 0 {
		wait := time.Until(deadline)
		if wait <= 0 {
			return os.ErrDeadlineExceeded
		}
		pfd := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLOUT}}
		if _, err := unix.Poll(pfd, int(wait.Milliseconds())+1); err != nil && err != unix.EINTR {
			return err
		}
		n, err := unix.Write(c.fd, b)
		if err != nil && err != unix.EAGAIN && err != unix.EINTR {
			return err
		}
		b = b[max(n, 0):]
	}
	return nil
}
