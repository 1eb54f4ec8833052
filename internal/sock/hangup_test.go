package sock

import (
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// twins are both ways of watching: WatchHangup (epoll on Linux) and the
// portable twin, which is what WatchHangup is elsewhere.
var twins = []struct {
	name  string
	watch func(net.Conn, func()) func()
}{
	{"WatchHangup", WatchHangup},
	{"read", watchByRead},
}

// reportWithin bounds the wait for a report: a loopback FIN arrives at
// once, the rest is scheduling under -race.
const reportWithin = 2 * time.Second

// quiet is how long a test waits to see that nothing is reported.
const quiet = 300 * time.Millisecond

// watched is one watched socket a, its peer b, and what its watch reported.
type watched struct {
	t          *testing.T
	a, b       net.Conn
	stop       func()
	peerClosed atomic.Bool // set before the peer leaves
	stopped    atomic.Bool // set once stop returned
	fired      atomic.Int32
	reported   chan struct{} // closed at the first report
}

// watchPair opens a pair and watches its first socket with watch; the
// cleanup stops the watch and closes both sockets.
func watchPair(t *testing.T, pair func() (net.Conn, net.Conn), watch func(net.Conn, func()) func()) *watched {
	t.Helper()
	a, b := pair()
	if a == nil {
		t.FailNow()
	}
	w := &watched{t: t, a: a, b: b, reported: make(chan struct{})}
	w.stop = watch(a, w.onHangup)
	t.Cleanup(w.end)
	return w
}

// onHangup checks that the report is true (the peer left) and allowed (the
// watch is not stopped) and comes once.
func (w *watched) onHangup() {
	if !w.peerClosed.Load() {
		w.t.Errorf("socket %v reported a hang-up, but its peer is still there", w.a.LocalAddr())
	}
	if w.stopped.Load() {
		w.t.Errorf("socket %v reported a hang-up after its watch was stopped", w.a.LocalAddr())
	}
	if w.fired.Add(1) == 1 {
		close(w.reported)
	} else {
		w.t.Errorf("socket %v reported a hang-up twice", w.a.LocalAddr())
	}
}

// hangUp makes the peer leave: close, reset or half-close.
func (w *watched) hangUp(how string) {
	w.peerClosed.Store(true)
	switch how {
	case "reset":
		w.b.(*net.TCPConn).SetLinger(0) // close sends a RST
		w.b.Close()
	case "half-close":
		w.b.(*net.TCPConn).CloseWrite()
	default:
		w.b.Close()
	}
}

// end stops the watch, then closes the socket: the order the package asks.
func (w *watched) end() {
	if !w.stopped.Load() {
		w.stop()
		w.stopped.Store(true)
	}
	w.a.Close()
	w.b.Close()
}

func (w *watched) expectReport(t *testing.T) {
	t.Helper()
	select {
	case <-w.reported:
	case <-time.After(reportWithin):
		t.Fatalf("no hang-up reported within %v", reportWithin)
	}
}

func (w *watched) expectNoReport(t *testing.T, what string) {
	t.Helper()
	select {
	case <-w.reported:
		t.Fatalf("a hang-up was reported: %s", what)
	case <-time.After(quiet):
	}
}

// The peer closing, resetting or shutting its write side is reported, once.
func TestHangupReported(t *testing.T) {
	for _, tw := range twins {
		for _, how := range []string{"close", "reset", "half-close"} {
			t.Run(tw.name+"/"+how, func(t *testing.T) {
				w := watchPair(t, listen(t), tw.watch)
				w.hangUp(how)
				w.expectReport(t)
				time.Sleep(quiet / 3) // a second report would come now
				w.end()
				if n := w.fired.Load(); n != 1 {
					t.Fatalf("%d reports, want 1", n)
				}
			})
		}
	}
}

// Bytes from a peer that stays are no hang-up (nor a busy loop): the
// watch goes on, and reports the peer's close later.
func TestHangupNotOnData(t *testing.T) {
	for _, tw := range twins {
		t.Run(tw.name, func(t *testing.T) {
			w := watchPair(t, listen(t), tw.watch)
			chunk := make([]byte, 1024)
			for range 16 {
				if _, err := w.b.Write(chunk); err != nil {
					t.Fatal(err)
				}
			}
			w.expectNoReport(t, "the peer only sent bytes")
			w.hangUp("close")
			w.expectReport(t)
		})
	}
}

// stop leaves the socket open and usable, and nothing is reported after
// it, even when the peer then leaves.
func TestHangupStop(t *testing.T) {
	for _, tw := range twins {
		t.Run(tw.name, func(t *testing.T) {
			w := watchPair(t, listen(t), tw.watch)
			w.stop()
			w.stopped.Store(true)
			w.stop() // a second stop does nothing
			if _, err := w.a.Write([]byte("still open")); err != nil {
				t.Fatalf("write after stop: %v", err)
			}
			got := make([]byte, len("still open"))
			w.b.SetReadDeadline(time.Now().Add(reportWithin))
			if _, err := io.ReadFull(w.b, got); err != nil || string(got) != "still open" {
				t.Fatalf("the peer read %q, %v", got, err)
			}
			w.hangUp("close")
			w.expectNoReport(t, "the watch was stopped")
		})
	}
}

// Many sockets at once: each peer's close is reported for its own socket,
// once, and a stopped one's never. On Linux the watches cost no goroutine.
func TestHangupManySockets(t *testing.T) {
	const n = 300
	for _, tw := range twins {
		t.Run(tw.name, func(t *testing.T) {
			pair := listen(t)
			before := runtime.NumGoroutine()
			ws := make([]*watched, n)
			for i := range ws {
				ws[i] = watchPair(t, pair, tw.watch)
			}
			grown := runtime.NumGoroutine() - before
			if tw.name == "WatchHangup" && runtime.GOOS == "linux" && grown > 5 {
				t.Errorf("%d goroutines more with %d sockets watched: the epoll watch takes a goroutine per socket", grown, n)
			}
			for i := 0; i < n; i += 3 { // a third are stopped first
				ws[i].stop()
				ws[i].stopped.Store(true)
			}
			for _, i := range rand.Perm(n) {
				ws[i].hangUp("close")
			}
			deadline := time.After(reportWithin)
			for i, w := range ws {
				if i%3 == 0 {
					continue
				}
				select {
				case <-w.reported:
				case <-deadline:
					t.Fatalf("socket %d: no hang-up reported within %v of the closes", i, reportWithin)
				}
			}
			time.Sleep(quiet / 3) // late or stray reports would come now
			for i, w := range ws {
				if want := int32(boolInt(i%3 != 0)); w.fired.Load() != want {
					t.Errorf("socket %d: %d reports, want %d", i, w.fired.Load(), want)
				}
			}
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Watches stopped and their sockets closed while peers leave, and new
// sockets, which take the freed descriptor numbers, watched at once: a
// report only ever comes for a socket whose own peer left, never after its
// stop, never twice; and every socket still watched at the end reports its
// peer's close.
func TestHangupStopThenReuse(t *testing.T) {
	for _, tw := range twins {
		t.Run(tw.name, func(t *testing.T) {
			const slots = 32
			budget := time.Second
			if testing.Short() {
				budget = 200 * time.Millisecond
			}
			pair := listen(t)
			var (
				slotMu   [slots]sync.Mutex
				socks    [slots]*watched
				seenMu   sync.Mutex
				seen     = map[int]bool{}
				reused   int
				replaced atomic.Int64
			)
			open := func() *watched {
				w := watchPair(t, pair, tw.watch)
				if fd, ok := Take(w.a); ok {
					seenMu.Lock()
					if seen[int(fd.v)] {
						reused++
					}
					seen[int(fd.v)] = true
					seenMu.Unlock()
				}
				return w
			}
			for i := range socks {
				socks[i] = open()
			}
			stopAt := time.Now().Add(budget)
			var workers sync.WaitGroup
			for range 4 {
				workers.Go(func() {
					for time.Now().Before(stopAt) && !t.Failed() {
						i := rand.IntN(slots)
						slotMu[i].Lock()
						w := socks[i]
						if rand.IntN(2) == 0 && !w.peerClosed.Load() {
							w.hangUp("close") // reported now, or stopped first below
						} else {
							w.end() // stop, then close: the number is free
							socks[i] = open()
							replaced.Add(1)
						}
						slotMu[i].Unlock()
					}
				})
			}
			workers.Wait()
			for _, w := range socks {
				if !w.peerClosed.Load() {
					w.hangUp("close")
				}
			}
			for i, w := range socks {
				select {
				case <-w.reported:
				case <-time.After(reportWithin):
					t.Fatalf("slot %d: no hang-up reported for the last socket within %v", i, reportWithin)
				}
			}
			t.Logf("%d sockets replaced, %d descriptor numbers reused", replaced.Load(), reused)
			if runtime.GOOS == "linux" && reused == 0 {
				t.Fatal("no descriptor number was reused: the test proved nothing")
			}
		})
	}
}
