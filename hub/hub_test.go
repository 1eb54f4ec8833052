package hub_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/protocol"
	"github.com/saga-family/sagapush/store"
)

// outlet records what the hub asks of a transport, and drains the queue like
// one.
type outlet struct {
	mu      sync.Mutex
	conn    *hub.Conn
	frames  []*hub.Frame
	aborted int // close code, 0 while open
	notify  chan struct{}

	warm      atomic.Bool  // Warm was called since the last Wake
	coldWakes atomic.Int32 // Wakes without a Warm before them
}

func newOutlet() *outlet { return &outlet{notify: make(chan struct{}, 1)} }

func (o *outlet) Wake() {
	if !o.warm.Swap(false) {
		o.coldWakes.Add(1)
	}
	select {
	case o.notify <- struct{}{}:
	default:
	}
}

func (o *outlet) Warm() { o.warm.Store(true) }

func (o *outlet) Abort(code int, _ string) {
	o.mu.Lock()
	o.aborted = code
	o.mu.Unlock()
	o.Wake()
}

// drain pulls everything queued so far.
func (o *outlet) drain() {
	fs := o.conn.Pull(nil, 0)
	o.mu.Lock()
	o.frames = append(o.frames, fs...)
	o.mu.Unlock()
}

// waitFor drains until cond holds on the frames received, or fails after 5 s.
func (o *outlet) waitFor(t *testing.T, what string, cond func([]*hub.Frame) bool) []*hub.Frame {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		o.drain()
		o.mu.Lock()
		fs := append([]*hub.Frame(nil), o.frames...)
		o.mu.Unlock()
		if cond(fs) {
			return fs
		}
		select {
		case <-o.notify:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			o.mu.Lock()
			aborted := o.aborted
			o.mu.Unlock()
			t.Fatalf("timed out waiting for %s; got %d frames (aborted %d, pending %d, joined %v): %s",
				what, len(fs), aborted, o.conn.Pending(), o.conn.Projects(), names(fs))
		}
	}
}

func names(fs []*hub.Frame) string {
	s := ""
	for _, f := range fs {
		s += fmt.Sprintf("%s/%d ", f.Name, f.Seq)
	}
	return s
}

func seqs(fs []*hub.Frame) []int64 {
	var out []int64
	for _, f := range fs {
		if f.Seq > 0 {
			out = append(out, f.Seq)
		}
	}
	return out
}

type fixture struct {
	hub   *hub.Hub
	store *store.Memory
}

func newFixture(t *testing.T, opts hub.Options, history int) *fixture {
	st := store.NewMemory(history)
	opts.Source, opts.Access, opts.Relay = st, st, st
	h := hub.New(opts)
	st.Start(context.Background(), h)
	t.Cleanup(h.Close)
	return &fixture{hub: h, store: st}
}

func (f *fixture) connect(t *testing.T, user string, projects ...string) *outlet {
	t.Helper()
	o := newOutlet()
	c, err := f.hub.Connect(&hub.User{ID: user, Name: "Name " + user, Projects: projects}, "test", o)
	if err != nil {
		t.Fatal(err)
	}
	o.conn = c
	return o
}

func (f *fixture) publish(t *testing.T, project string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := f.store.Publish(context.Background(), project, "story_uploaded", json.RawMessage(`{"i":1}`)); err != nil {
			t.Fatal(err)
		}
	}
}

func (f *fixture) join(t *testing.T, o *outlet, project string, since *int64) protocol.Joined {
	t.Helper()
	res, err := f.hub.Join(context.Background(), o.conn, project, since, nil)
	if err != nil {
		t.Fatalf("join %s: %v", project, err)
	}
	return res
}

func ptr(n int64) *int64 { return &n }

func wantSeqs(t *testing.T, got []int64, from, to int64) {
	t.Helper()
	if int64(len(got)) != to-from+1 {
		t.Fatalf("got %d events %v, want seq %d..%d", len(got), got, from, to)
	}
	for i, s := range got {
		if s != from+int64(i) {
			t.Fatalf("event %d has seq %d, want %d (all: %v)", i, s, from+int64(i), got)
		}
	}
}

func TestJoinLiveThenPublish(t *testing.T) {
	f := newFixture(t, hub.Options{}, 0)
	f.publish(t, "p", 3)
	o := f.connect(t, "u", "p")
	res := f.join(t, o, "p", nil)
	if res.Seq != 3 || res.Recovered != nil {
		t.Fatalf("join result %+v, want seq 3 and no recovered", res)
	}
	f.publish(t, "p", 2)
	fs := o.waitFor(t, "two live events", func(fs []*hub.Frame) bool { return len(seqs(fs)) == 2 })
	if fs[0].Name != "joined_project" {
		t.Fatalf("first frame %s, want joined_project", fs[0].Name)
	}
	wantSeqs(t, seqs(fs), 4, 5)
}

func TestResumeFromRingAndFromStore(t *testing.T) {
	// With a ring of 4 events, since=7 is served from the room's memory and
	// since=1 or 0 from the store; a live event follows the replay at once.
	for _, since := range []int64{10, 7, 1, 0} {
		t.Run(fmt.Sprint("since=", since), func(t *testing.T) {
			f := newFixture(t, hub.Options{HistorySize: 4}, 0)
			keeper := f.connect(t, "keeper", "p")
			f.join(t, keeper, "p", nil) // keeps the room and its ring alive
			f.publish(t, "p", 10)
			keeper.waitFor(t, "10 events", func(fs []*hub.Frame) bool { return len(seqs(fs)) == 10 })

			o := f.connect(t, "u", "p")
			res := f.join(t, o, "p", ptr(since))
			if res.Recovered == nil || !*res.Recovered || res.Seq != 10 {
				t.Fatalf("%+v, want recovered at seq 10", res)
			}
			f.publish(t, "p", 1)
			fs := o.waitFor(t, "replay then live", func(fs []*hub.Frame) bool {
				s := seqs(fs)
				return len(s) > 0 && s[len(s)-1] == 11
			})
			if fs[0].Name != "joined_project" {
				t.Fatalf("first frame %s", fs[0].Name)
			}
			wantSeqs(t, seqs(fs), since+1, 11)
		})
	}
}

func TestResumeCases(t *testing.T) {
	// The store keeps at most 20 events (trimming to the newest 10 when it
	// overflows): after 30 it holds 12..30.
	f := newFixture(t, hub.Options{HistorySize: 4, MaxReplay: 50}, 20)
	keeper := f.connect(t, "keeper", "p")
	f.join(t, keeper, "p", nil)
	for i := 1; i <= 30; i++ { // one by one, so the room never falls behind
		f.publish(t, "p", 1)
		keeper.waitFor(t, "the event", func(fs []*hub.Frame) bool { return len(seqs(fs)) == i })
	}

	cases := []struct {
		since     int64
		recovered bool
	}{
		{30, true},  // nothing missed
		{28, true},  // from the room's ring
		{20, true},  // from the store
		{11, true},  // the oldest resumable
		{10, false}, // pruned from the store
		{31, false}, // a history that no longer exists
	}
	for _, c := range cases {
		o := f.connect(t, fmt.Sprint("u", c.since), "p")
		res := f.join(t, o, "p", ptr(c.since))
		if res.Recovered == nil || *res.Recovered != c.recovered || res.Seq != 30 {
			t.Fatalf("since %d: %+v, want recovered=%v seq=30", c.since, res, c.recovered)
		}
		fs := o.waitFor(t, "joined", func(fs []*hub.Frame) bool { return len(fs) >= 1 })
		if c.recovered && c.since < 30 {
			fs = o.waitFor(t, "replay", func(fs []*hub.Frame) bool { return len(seqs(fs)) == int(30-c.since) })
			wantSeqs(t, seqs(fs), c.since+1, 30)
		} else if n := len(seqs(fs)); n != 0 {
			t.Fatalf("since %d: %d events replayed, want none", c.since, n)
		}
		f.hub.Disconnect(o.conn)
	}
}

// TestExactlyOnceUnderConcurrency joins clients with random since values
// while four writers publish: every client must see since+1..N once, in order.
func TestExactlyOnceUnderConcurrency(t *testing.T) {
	f := newFixture(t, hub.Options{HistorySize: 16}, 0)
	const total = 400
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < total/4; i++ {
				f.store.Publish(context.Background(), "p", "story_uploaded", json.RawMessage(`{}`))
			}
		}()
	}
	type client struct {
		o     *outlet
		since int64
	}
	var clients []client
	for i := 0; i < 20; i++ {
		head, _ := f.store.Head(context.Background(), "p")
		since := rand.Int64N(head + 1)
		o := f.connect(t, fmt.Sprint("u", i), "p")
		res := f.join(t, o, "p", ptr(since))
		if !*res.Recovered {
			t.Fatalf("client %d since %d not recovered (head %d)", i, since, res.Seq)
		}
		clients = append(clients, client{o, since})
	}
	wg.Wait()
	for i, c := range clients {
		if c.since == total { // joined after the writers were done
			c.o.drain()
			wantSeqs(t, seqs(c.o.frames), total+1, total)
			continue
		}
		fs := c.o.waitFor(t, fmt.Sprint("client ", i, " complete"), func(fs []*hub.Frame) bool {
			s := seqs(fs)
			return len(s) > 0 && s[len(s)-1] == total
		})
		wantSeqs(t, seqs(fs), c.since+1, total)
	}
}

func TestSlowConnectionIsAbortedNotBlocking(t *testing.T) {
	f := newFixture(t, hub.Options{QueueLimit: 100, MaxReplay: 5}, 0)
	slow := f.connect(t, "slow", "p")
	fast := f.connect(t, "fast", "p")
	f.join(t, slow, "p", nil)
	f.join(t, fast, "p", nil)
	// Steps of 20: the fast reader takes each step; the slow one never reads
	// and is closed with 4001 once 100 frames wait. The publisher never waits.
	for step := 1; step <= 8; step++ {
		done := make(chan struct{})
		go func() {
			f.publish(t, "p", 20)
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("publishing blocked on a slow connection")
		}
		fast.waitFor(t, "fast gets the step", func(fs []*hub.Frame) bool { return len(seqs(fs)) == 20*step })
	}
	fast.drain()
	wantSeqs(t, seqs(fast.frames), 1, 160)
	slow.mu.Lock()
	defer slow.mu.Unlock()
	if slow.aborted != protocol.CloseTooSlow {
		t.Fatalf("slow connection: abort code %d, want %d", slow.aborted, protocol.CloseTooSlow)
	}
	if n := slow.conn.Pending(); n != 0 {
		t.Fatalf("an aborted connection still holds %d frames", n)
	}
}

func TestLeaveRevokeAndTyping(t *testing.T) {
	f := newFixture(t, hub.Options{}, 0)
	a := f.connect(t, "a", "p")
	a2 := f.connect(t, "a", "p") // the same user's second tab
	b := f.connect(t, "b", "p")
	for _, o := range []*outlet{a, a2, b} {
		f.join(t, o, "p", nil)
	}
	if err := f.hub.Typing(context.Background(), a.conn, "p", "s1", true); err != nil {
		t.Fatal(err)
	}
	b.waitFor(t, "typing", func(fs []*hub.Frame) bool { return len(fs) == 2 && fs[1].Name == "typing_start" })
	if err := f.hub.Typing(context.Background(), a.conn, "other", "s1", true); err != hub.ErrNotInProject {
		t.Fatalf("typing outside a joined project: %v, want ErrNotInProject", err)
	}

	f.hub.Revoke("p", "b")
	fs := b.waitFor(t, "left_project", func(fs []*hub.Frame) bool { return fs[len(fs)-1].Name == "left_project" })
	var msg struct {
		Data struct{ ProjectID, Reason string }
	}
	json.Unmarshal(fs[len(fs)-1].JSON, &msg)
	if msg.Data.Reason != "access_revoked" || msg.Data.ProjectID != "p" {
		t.Fatalf("left_project %s", fs[len(fs)-1].JSON)
	}
	if err := f.hub.Leave(a2.conn, "p"); err != nil {
		t.Fatal(err)
	}
	if err := f.hub.Leave(a2.conn, "p"); err != hub.ErrNotInProject {
		t.Fatalf("second leave: %v", err)
	}
	f.publish(t, "p", 1)
	a.waitFor(t, "a gets the event", func(fs []*hub.Frame) bool { return len(seqs(fs)) == 1 })
	// a2 and b are out: a later event a reaches proves theirs would have too.
	f.publish(t, "p", 1)
	a.waitFor(t, "a gets the second", func(fs []*hub.Frame) bool { return len(seqs(fs)) == 2 })
	for name, o := range map[string]*outlet{"left": a2, "revoked": b} {
		o.drain()
		if n := len(seqs(o.frames)); n != 0 {
			t.Fatalf("%s connection got %d events", name, n)
		}
	}
	// a's own typing never came back to a or a2.
	for _, f := range append(a.frames, a2.frames...) {
		if f.Name == "typing_start" {
			t.Fatal("the sender's user received its own typing indicator")
		}
	}
}

func TestShutdownSendsMessageThenClose(t *testing.T) {
	f := newFixture(t, hub.Options{}, 0)
	o := f.connect(t, "u", "p")
	f.hub.Shutdown(1500 * time.Millisecond)
	fs := o.waitFor(t, "shutdown", func(fs []*hub.Frame) bool { return len(fs) == 2 })
	if fs[0].Name != "server_shutdown" || fs[1].CloseCode != protocol.CloseGoingAway {
		t.Fatalf("got %s then close %d", fs[0].Name, fs[1].CloseCode)
	}
	if _, err := f.hub.Connect(&hub.User{ID: "late"}, "test", newOutlet()); err != hub.ErrClosed {
		t.Fatalf("connect after shutdown: %v", err)
	}
}

func TestLimits(t *testing.T) {
	f := newFixture(t, hub.Options{MaxConnsPerUser: 2, RateMaxEvents: 3, RateWindow: time.Hour}, 0)
	a := f.connect(t, "u", "p")
	b := f.connect(t, "u", "p")
	if _, err := f.hub.Connect(&hub.User{ID: "u"}, "test", newOutlet()); err != hub.ErrTooManyConns {
		t.Fatalf("third connection: %v", err)
	}
	for i, c := range []*hub.Conn{a.conn, b.conn, a.conn} {
		if ok, _ := f.hub.Allow(c); !ok {
			t.Fatalf("frame %d refused", i)
		}
	}
	ok, retry := f.hub.Allow(b.conn)
	if ok || retry <= 0 {
		t.Fatalf("4th frame across two connections: ok=%v retry=%v", ok, retry)
	}
	if _, err := f.hub.Join(context.Background(), a.conn, "not-mine", nil, nil); err == nil {
		t.Fatal("join of a project outside the token's claim succeeded")
	}
}

// quietSource holds events that were stored without a doorbell, as after a
// lost notification: one Wake must then read them all, batch after batch.
type quietSource struct {
	*store.Memory
	mu     sync.Mutex
	events []hub.Event
}

func (q *quietSource) Head(context.Context, string) (int64, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return int64(len(q.events)), nil
}

func (q *quietSource) After(_ context.Context, _ string, after int64, limit int) ([]hub.Event, bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	evs := q.events[after:]
	if len(evs) > limit {
		evs = evs[:limit]
	}
	return append([]hub.Event(nil), evs...), true, nil
}

func TestOneWakeReadsEveryBatch(t *testing.T) {
	q := &quietSource{Memory: store.NewMemory(0)}
	h := hub.New(hub.Options{Source: q, Access: q, Relay: q, FetchBatch: 5})
	t.Cleanup(h.Close)
	o := newOutlet()
	c, err := h.Connect(&hub.User{ID: "u", Projects: []string{"p"}}, "test", o)
	if err != nil {
		t.Fatal(err)
	}
	o.conn = c
	if _, err := h.Join(context.Background(), c, "p", nil, nil); err != nil {
		t.Fatal(err)
	}
	q.mu.Lock()
	for i := 1; i <= 23; i++ {
		q.events = append(q.events, hub.Event{ProjectID: "p", Seq: int64(i), Name: "story_uploaded", Time: time.Now()})
	}
	q.mu.Unlock()
	h.Wake("p") // one doorbell for 23 events: 5 batches
	fs := o.waitFor(t, "every batch", func(fs []*hub.Frame) bool { return len(seqs(fs)) == 23 })
	wantSeqs(t, seqs(fs), 1, 23)
}

// listSource is a store that rings no doorbell by itself and counts reads.
type listSource struct {
	mu    sync.Mutex
	evs   []hub.Event
	reads int
}

func (s *listSource) add(project string) hub.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := hub.Event{ProjectID: project, Seq: int64(len(s.evs) + 1), Name: "story_uploaded", Time: time.Now(), Data: json.RawMessage(`{}`)}
	s.evs = append(s.evs, e)
	return e
}

func (s *listSource) Head(context.Context, string) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int64(len(s.evs)), nil
}

func (s *listSource) After(_ context.Context, _ string, after int64, limit int) ([]hub.Event, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads++
	out := append([]hub.Event(nil), s.evs[after:]...)
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, true, nil
}

func (s *listSource) Role(context.Context, *hub.User, string) (string, error) {
	return "storyteller", nil
}

func (s *listSource) readCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads
}

// Offered events that follow on are fanned out without a read; a hole, or a
// plain Wake among offers, makes the room read the store; nothing is lost or
// doubled either way.
func TestOfferSparesReads(t *testing.T) {
	src := &listSource{}
	h := hub.New(hub.Options{Source: src, Access: src})
	t.Cleanup(h.Close)
	o := newOutlet()
	c, err := h.Connect(&hub.User{ID: "u1"}, "test", o)
	if err != nil {
		t.Fatal(err)
	}
	o.conn = c
	if _, err := h.Join(context.Background(), c, "p1", nil, nil); err != nil {
		t.Fatal(err)
	}
	wantSeqs := func(n int) {
		t.Helper()
		fs := o.waitFor(t, fmt.Sprintf("seqs 1..%d", n), func(fs []*hub.Frame) bool { return len(seqs(fs)) >= n })
		for i, s := range seqs(fs) {
			if s != int64(i+1) {
				t.Fatalf("seqs %v", seqs(fs))
			}
		}
	}

	h.Offer(src.add("p1"))
	h.Offer(src.add("p1"))
	wantSeqs(2)
	if n := src.readCount(); n != 0 {
		t.Fatalf("%d store reads for offered events that follow on", n)
	}

	src.add("p1") // 3 is never offered: a hole before 4
	h.Offer(src.add("p1"))
	wantSeqs(4)
	if src.readCount() == 0 {
		t.Fatal("a hole did not make the room read the store")
	}

	h.Offer(src.add("p1")) // 5 comes offered, 6 rings without its event
	src.add("p1")
	h.Wake("p1")
	wantSeqs(6)

	h.Offer(hub.Event{ProjectID: "p1", Seq: 2, Name: "story_uploaded", Data: json.RawMessage(`{}`)}) // stale
	h.Offer(src.add("p1"))
	wantSeqs(7)
	o.drain()
	if got := seqs(o.frames); len(got) != 7 {
		t.Fatalf("seqs %v: an event came twice", got)
	}
}

// plainOutlet is an outlet that is no hub.Warmer.
type plainOutlet struct{ o *outlet }

func (p plainOutlet) Wake()                      { p.o.Wake() }
func (p plainOutlet) Abort(code int, why string) { p.o.Abort(code, why) }

// A fan-out has every member's outlet that is a hub.Warmer warm up before it
// is woken, in a room big enough for the wakes to run on several goroutines
// and in a small one; the members whose outlet is not are woken all the same.
func TestFanoutWarmsBeforeWaking(t *testing.T) {
	for _, members := range []int{3, 700} {
		f := newFixture(t, hub.Options{}, 0)
		project := fmt.Sprintf("p%d", members)
		var outs []*outlet
		for i := range members {
			o := newOutlet()
			var out hub.Outlet = o
			if i%3 == 1 {
				out = plainOutlet{o}
			}
			c, err := f.hub.Connect(&hub.User{ID: fmt.Sprintf("u%d", i), Projects: []string{project}}, "test", out)
			if err != nil {
				t.Fatal(err)
			}
			o.conn = c
			f.join(t, o, project, nil)
			o.waitFor(t, "joined", func(fs []*hub.Frame) bool { return len(fs) >= 1 })
			o.coldWakes.Store(0) // the join's reply is woken on its own
			outs = append(outs, o)
		}
		f.publish(t, project, 1)
		for i, o := range outs {
			o.waitFor(t, "the event", func(fs []*hub.Frame) bool { return len(seqs(fs)) >= 1 })
			if n := o.coldWakes.Load(); n != 0 && i%3 != 1 {
				t.Fatalf("room of %d: member %d woken %d times without a Warm first", members, i, n)
			}
		}
	}
}

// UserGone closes every connection of the user with 4401, drops what they
// had queued and keeps anything more from reaching them; other users and
// the backend's service connections stay.
func TestUserGone(t *testing.T) {
	f := newFixture(t, hub.Options{}, 100)
	a, b, other := f.connect(t, "u1", "p1"), f.connect(t, "u1", "p1"), f.connect(t, "u2", "p1")
	svc := newOutlet()
	c, err := f.hub.Connect(&hub.User{ID: "u1", Role: "service"}, "test", svc)
	if err != nil {
		t.Fatal(err)
	}
	svc.conn = c
	for _, o := range []*outlet{a, b, other} {
		f.join(t, o, "p1", nil)
		o.drain()
	}
	if ids := f.hub.UserIDs(); len(ids) != 2 {
		t.Errorf("UserIDs %v, want u1 and u2", ids)
	}
	f.publish(t, "p1", 1)
	other.waitFor(t, "the event", func(fs []*hub.Frame) bool { return len(fs) == 2 })

	f.hub.UserGone("u1")
	for _, o := range []*outlet{a, b} {
		o.mu.Lock()
		code := o.aborted
		o.mu.Unlock()
		if code != protocol.CloseUnauthenticated {
			t.Errorf("close code %d, want 4401", code)
		}
		if n := o.conn.Pending(); n != 0 {
			t.Errorf("%d frames still queued for a deleted user", n)
		}
	}
	if err := f.hub.UserEvent(context.Background(), "u1", "notification", json.RawMessage(`{}`)); err != nil {
		t.Fatal(err)
	}
	f.publish(t, "p1", 1)
	other.waitFor(t, "the second event", func(fs []*hub.Frame) bool { return len(fs) == 3 })
	for _, o := range []*outlet{a, b} {
		if n := o.conn.Pending(); n != 0 {
			t.Errorf("%d frames queued for a deleted user after its close", n)
		}
	}
	svc.mu.Lock()
	if svc.aborted != 0 {
		t.Errorf("the service connection was closed (%d)", svc.aborted)
	}
	svc.mu.Unlock()
	other.mu.Lock()
	if other.aborted != 0 {
		t.Errorf("another user's connection was closed (%d)", other.aborted)
	}
	other.mu.Unlock()
	f.hub.UserGone("nobody") // no connection: nothing to do
}
