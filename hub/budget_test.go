package hub_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/protocol"
)

// publishBig publishes n events of about size bytes each.
func (f *fixture) publishBig(t *testing.T, project string, n, size int) {
	t.Helper()
	data := json.RawMessage(`{"transcript":"` + strings.Repeat("x", size) + `"}`)
	for i := 0; i < n; i++ {
		if _, err := f.store.Publish(context.Background(), project, "transcript_updated", data); err != nil {
			t.Fatal(err)
		}
	}
}

// A connection that takes nothing is closed with 4001 once its queue holds
// its byte budget, long before the frame limit; one that reads gets
// everything. An event larger than the whole budget still reaches a
// reader whose queue is empty.
func TestByteBudgetClosesNonReader(t *testing.T) {
	f := newFixture(t, hub.Options{QueueLimitBytes: 64 << 10, QueueLimit: 4096}, 0)
	stuck, reader := f.connect(t, "a", "p"), f.connect(t, "b", "p")
	f.join(t, stuck, "p", nil)
	f.join(t, reader, "p", nil)
	reader.waitFor(t, "joined", func(fs []*hub.Frame) bool { return len(fs) == 1 })
	for i := 0; i < 40; i++ {
		f.publishBig(t, "p", 1, 4<<10)
		reader.waitFor(t, "the event", func(fs []*hub.Frame) bool { return len(seqs(fs)) == i+1 })
	}
	stuck.mu.Lock()
	code := stuck.aborted
	stuck.mu.Unlock()
	if code != protocol.CloseTooSlow {
		t.Fatalf("a connection that read nothing of 160 KiB with a 64 KiB budget: abort code %d, want 4001", code)
	}
	if n := stuck.conn.QueuedBytes(); n != 0 {
		t.Fatalf("the closed connection still holds %d bytes", n)
	}
	f.publishBig(t, "p", 1, 100<<10) // bigger than the budget
	reader.waitFor(t, "the big event", func(fs []*hub.Frame) bool { return len(seqs(fs)) == 41 })
}

// A resume whose replay is many times the byte budget streams from the
// store as the connection drains: every event once, in order, the queue
// never over its budget, and no 4001. Live events published while it
// streams follow without a gap.
func TestBigReplayStreams(t *testing.T) {
	const budget = 64 << 10
	f := newFixture(t, hub.Options{QueueLimitBytes: budget, MaxReplay: 2000, HistorySize: 16}, 0)
	f.publishBig(t, "p", 300, 2<<10) // about 600 KiB
	o := f.connect(t, "u", "p")
	res := f.join(t, o, "p", ptr(0))
	if res.Recovered == nil || !*res.Recovered || res.Seq != 300 {
		t.Fatalf("join result %+v, want recovered at seq 300", res)
	}
	maxQueued := 0
	published := false
	fs := o.waitFor(t, "the replay and live events", func(fs []*hub.Frame) bool {
		maxQueued = max(maxQueued, o.conn.QueuedBytes())
		if !published && len(seqs(fs)) >= 100 {
			f.publishBig(t, "p", 5, 2<<10)
			published = true
		}
		return len(seqs(fs)) == 305
	})
	if fs[0].Name != protocol.JoinedProject {
		t.Fatalf("first frame %s", fs[0].Name)
	}
	wantSeqs(t, seqs(fs), 1, 305)
	if maxQueued > budget {
		t.Fatalf("the queue held %d bytes, over its %d budget", maxQueued, budget)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.aborted != 0 {
		t.Fatalf("aborted with %d", o.aborted)
	}
}

// A join of a joined project with since answers as a fresh join: the
// replay after since follows its joined_project, and nothing the old
// membership queued comes twice.
func TestRejoinWithSinceReplays(t *testing.T) {
	f := newFixture(t, hub.Options{}, 0)
	o := f.connect(t, "u", "p")
	f.join(t, o, "p", nil)
	f.publish(t, "p", 3)
	o.waitFor(t, "three events", func(fs []*hub.Frame) bool { return len(seqs(fs)) == 3 })
	f.publish(t, "p", 2) // queued, not taken yet when the re-join comes
	waitQueued(t, o, 2)
	res := f.join(t, o, "p", ptr(1))
	if res.Recovered == nil || !*res.Recovered || res.Seq != 5 {
		t.Fatalf("re-join result %+v, want recovered at seq 5", res)
	}
	f.publish(t, "p", 1)
	fs := o.waitFor(t, "the replay and a live event", func(fs []*hub.Frame) bool { return len(seqs(fs)) == 3+4+1 })
	var afterRejoin []*hub.Frame
	for i := len(fs) - 1; i >= 0; i-- {
		if fs[i].Name == protocol.JoinedProject {
			afterRejoin = fs[i+1:]
			break
		}
	}
	wantSeqs(t, seqs(afterRejoin), 2, 6)
	wantSeqs(t, seqs(fs[:len(fs)-len(afterRejoin)]), 1, 3)

	res = f.join(t, o, "p", ptr(50))
	if res.Recovered == nil || *res.Recovered {
		t.Fatalf("re-join from a seq never sent: %+v, want recovered false", res)
	}
}

// waitQueued waits until n domain events wait in o's queue.
func waitQueued(t *testing.T, o *outlet, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for o.conn.Pending() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d frames queued, want %d", o.conn.Pending(), n)
		}
		time.Sleep(time.Millisecond)
	}
}
