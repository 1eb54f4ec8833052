//go:build linux

package sock

import (
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func rawOf(t *testing.T, c net.Conn) syscall.RawConn {
	t.Helper()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// The race the ids exist for, stepped by hand on a watcher of the test's
// own (no loop goroutine): the loop takes socket A's hang-up event; before
// it reports, A's watch is stopped, A is closed and a new socket B, which
// gets A's descriptor number, is watched. The event must not reach B (nor
// A, stopped); B's own hang-up still must.
func TestStaleEventForReusedFD(t *testing.T) {
	w, err := newWatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(w.epfd)
	pair := listen(t)
	events := make([]unix.EpollEvent, 8)
	reports := map[string]int{}
	report := func(name string) func() { return func() { reports[name]++ } }

	a, aPeer := pair()
	defer aPeer.Close()
	fdA, _ := Take(a)
	stopA, ok := w.watch(rawOf(t, a), report("A"))
	if !ok {
		t.Fatal("epoll refused a TCP socket")
	}
	aPeer.Close()
	n := w.wait(events, 5000)
	if n != 1 {
		t.Fatalf("%d events for A's hang-up, want 1", n)
	}
	stopA()
	a.Close()

	b, bPeer := pair() // the dialed side takes the lowest free number: A's
	defer b.Close()
	defer bPeer.Close()
	if fdB, _ := Take(b); fdB != fdA {
		t.Fatalf("B has descriptor %d, A had %d: the number was not reused, the test proves nothing", fdB.v-1, fdA.v-1)
	}
	stopB, ok := w.watch(rawOf(t, b), report("B"))
	if !ok {
		t.Fatal("epoll refused a TCP socket")
	}
	defer stopB()

	w.dispatch(events[:n]) // A's stale event
	if len(reports) != 0 {
		t.Fatalf("A's stale event reported %v: it reached a stopped watch or the socket that reused the number", reports)
	}
	if n := w.wait(events, 0); n != 0 {
		t.Fatalf("%d events with B's peer still there", n)
	}

	bPeer.Close()
	n = w.wait(events, 5000)
	w.dispatch(events[:n])
	if reports["B"] != 1 || reports["A"] != 0 {
		t.Fatalf("after B's peer left: reports %v, want B once", reports)
	}
	// One-shot: the hung-up socket, readable (EOF) for ever, is not
	// reported again, so the loop does not spin on it before stop.
	if n := w.wait(events, 50); n != 0 {
		t.Fatalf("%d more events for B after its report, want none", n)
	}
}
