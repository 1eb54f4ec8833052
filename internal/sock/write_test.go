package sock

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestConsume(t *testing.T) {
	bufs := [][]byte{[]byte("abc"), []byte("de"), []byte("f")}
	got := Consume(bufs, 4)
	if len(got) != 2 || string(got[0]) != "e" || string(got[1]) != "f" {
		t.Fatalf("consume 4: %q", got)
	}
	if got := Consume([][]byte{[]byte("ab")}, 2); len(got) != 0 {
		t.Fatalf("consume all: %q", got)
	}
	if got := Consume([][]byte{[]byte("ab")}, 0); len(got) != 1 || string(got[0]) != "ab" {
		t.Fatalf("consume 0: %q", got)
	}
}

// listen returns a loopback listener and a function that opens a connected
// pair of sockets on it.
func listen(t *testing.T) func() (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex // one pair at a time, so Accept returns this Dial's peer
	return func() (net.Conn, net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		a, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Error(err)
			return nil, nil
		}
		b, err := ln.Accept()
		if err != nil {
			a.Close()
			t.Error(err)
			return nil, nil
		}
		return a, b
	}
}

// take is Take that skips the test on a system without the fast path.
func take(t *testing.T, c net.Conn) FD {
	t.Helper()
	fd, ok := Take(c)
	if !ok {
		if runtime.GOOS == "linux" {
			t.Fatal("no descriptor for a TCP socket on Linux")
		}
		t.Skipf("no fast path on %s", runtime.GOOS)
	}
	return fd
}

// WriteNow writes one buffer and several in order, says 0 when the socket
// is full, and fails once the peer is gone.
func TestWriteNow(t *testing.T) {
	if (FD{}).Ok() {
		t.Fatal("the zero FD holds a descriptor")
	}
	if _, err := (FD{}).WriteNow([][]byte{[]byte("x")}); err == nil {
		t.Fatal("the zero FD wrote")
	}
	a, b := listen(t)()
	if a == nil {
		return
	}
	defer a.Close()
	fd := take(t, a)
	want := []byte("onetwothree")
	for _, bufs := range [][][]byte{{want[:3]}, {want[3:6], want[6:6], want[6:]}} {
		n, err := fd.WriteNow(bufs)
		if err != nil || len(Consume(bufs, n)) != 0 {
			t.Fatalf("WriteNow(%q) = %d, %v", bufs, n, err)
		}
	}
	got := make([]byte, len(want))
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(b, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %q, %v; want %q", got, err, want)
	}

	// Nobody reads b: the socket fills, and WriteNow says so without waiting.
	chunk := make([]byte, 64<<10)
	full := false
	for range 1 << 12 {
		n, err := fd.WriteNow([][]byte{chunk, chunk})
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			full = true
			break
		}
	}
	if !full {
		t.Fatal("the socket never filled")
	}

	b.Close() // unread data: the peer resets the connection
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := fd.WriteNow([][]byte{chunk}); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("writes to a closed peer kept succeeding")
		}
		time.Sleep(time.Millisecond)
	}
}

// lockedSock is one socket written as the WebSocket client writes its own
// (transports/wire.go): WriteNow only under mu with closed checked first,
// and Close under mu too.
type lockedSock struct {
	mu     sync.Mutex
	closed bool
	fd     FD
	nc     net.Conn
	tag    uint64
	seq    uint64   // records made so far
	rest   [][]byte // made but not yet taken by the socket, in order
}

// A record is the socket's tag and its sequence number.
const recordSize = 16

// write makes k records and writes what the socket takes of them.
func (s *lockedSock) write(k int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	if len(s.rest) < 8 {
		for range k {
			rec := make([]byte, recordSize)
			binary.LittleEndian.PutUint64(rec, s.tag)
			binary.LittleEndian.PutUint64(rec[8:], s.seq)
			s.seq++
			s.rest = append(s.rest, rec)
		}
	}
	n, err := s.fd.WriteNow(s.rest)
	s.rest = Consume(s.rest, n)
	return err
}

func (s *lockedSock) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.nc.Close()
}

// Descriptors are reused as soon as they are closed. Writers write to
// sockets that closers close meanwhile, and the closers open new sockets,
// which take the freed numbers: a write after a close would land in one of
// them. Each socket's peer checks that it reads only its own records, in
// order, and the writing side (read like gorilla's read loop) that it reads
// nothing at all.
func TestNoWriteOnReusedFD(t *testing.T) {
	const (
		slots   = 32
		writers = 8
		closers = 4
	)
	budget := 2 * time.Second
	if testing.Short() {
		budget = 300 * time.Millisecond
	}
	pair := listen(t)
	var (
		readers sync.WaitGroup
		nextTag atomic.Uint64
		taken   sync.Mutex
		seen    = map[int32]bool{}
		reused  int
		records atomic.Int64
	)
	open := func() *lockedSock {
		a, b := pair()
		if a == nil {
			return nil
		}
		s := &lockedSock{nc: a, tag: nextTag.Add(1)}
		s.fd = take(t, a)
		taken.Lock()
		if seen[s.fd.v] {
			reused++
		}
		seen[s.fd.v] = true
		taken.Unlock()
		readers.Add(2)
		go func() { // the peer: only s's records, in order, then EOF
			defer readers.Done()
			defer b.Close()
			rec := make([]byte, recordSize)
			for want := uint64(0); ; want++ {
				if _, err := io.ReadFull(b, rec); err != nil {
					if !errors.Is(err, io.EOF) {
						t.Errorf("socket %d's peer: %v after %d records", s.tag, err, want)
					}
					return
				}
				tag, seq := binary.LittleEndian.Uint64(rec), binary.LittleEndian.Uint64(rec[8:])
				if tag != s.tag || seq != want {
					t.Errorf("socket %d's peer read record %d of socket %d, want its own record %d: a write landed on a reused descriptor", s.tag, seq, tag, want)
					return
				}
				records.Add(1)
			}
		}()
		go func() { // the writing side's read loop: nothing ever comes
			defer readers.Done()
			var buf [64]byte
			if n, _ := a.Read(buf[:]); n > 0 {
				t.Errorf("socket %d read %d bytes, but its peer never writes: a write landed on a reused descriptor", s.tag, n)
			}
		}()
		return s
	}

	var socks [slots]atomic.Pointer[lockedSock]
	for i := range socks {
		s := open()
		if s == nil {
			return
		}
		socks[i].Store(s)
	}
	stop := make(chan struct{})
	var workers sync.WaitGroup
	// run starts n goroutines that repeat step until stop or a false step.
	run := func(n int, step func() bool) {
		for range n {
			workers.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					if !step() {
						return
					}
				}
			})
		}
	}
	run(writers, func() bool {
		s := socks[rand.IntN(slots)].Load()
		if err := s.write(1 + rand.IntN(4)); err != nil {
			t.Errorf("socket %d: %v", s.tag, err)
			return false
		}
		return true
	})
	var replaced atomic.Int64
	run(closers, func() bool {
		s := open() // takes the lowest free numbers: the last closed
		if s == nil {
			return false
		}
		socks[rand.IntN(slots)].Swap(s).close()
		replaced.Add(1)
		return true
	})
	time.Sleep(budget)
	close(stop)
	workers.Wait()
	for i := range socks {
		socks[i].Load().close()
	}
	readers.Wait()
	t.Logf("%d sockets replaced, %d descriptors reused, %d records read", replaced.Load(), reused, records.Load())
	if reused == 0 || records.Load() == 0 {
		t.Fatalf("the test proved nothing: %d descriptors reused, %d records read", reused, records.Load())
	}
}
