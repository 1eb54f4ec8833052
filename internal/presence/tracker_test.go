package presence

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/protocol"
)

// heard collects the announcements of one tracker.
type heard struct {
	mu   sync.Mutex
	msgs []string // "user_online p u" / "user_offline p u"
	sig  chan struct{}
}

func newHeard() *heard { return &heard{sig: make(chan struct{}, 1)} }

func (h *heard) announce(e hub.Ephemeral) {
	var m struct {
		Event     string `json:"event"`
		ProjectID string `json:"projectId"`
		Data      struct {
			UserID string `json:"userId"`
		} `json:"data"`
	}
	if err := json.Unmarshal(e.JSON, &m); err != nil || m.Event != e.Name || m.ProjectID != e.ProjectID {
		panic(fmt.Sprintf("bad announcement %q", e.JSON))
	}
	h.mu.Lock()
	h.msgs = append(h.msgs, m.Event+" "+m.ProjectID+" "+m.Data.UserID)
	h.mu.Unlock()
	select {
	case h.sig <- struct{}{}:
	default:
	}
}

// wait waits until the announcements are exactly want.
func (h *heard) wait(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		h.mu.Lock()
		got := slices.Clone(h.msgs)
		h.mu.Unlock()
		if slices.Equal(got, want) {
			return
		}
		if len(got) > len(want) {
			t.Fatalf("heard %q, want %q", got, want)
		}
		select {
		case <-h.sig:
		case <-deadline:
			t.Fatalf("heard %q, want %q", got, want)
		}
	}
}

func (h *heard) snapshot() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.msgs)
}

func names(us []protocol.OnlineUser) []string {
	var out []string
	for _, u := range us {
		n := "null"
		if u.UserName != nil {
			n = *u.UserName
		}
		out = append(out, u.UserID+":"+n)
	}
	return out
}

func start(t *testing.T, opts Options) (*Tracker, *heard) {
	h := newHeard()
	opts.Announce = h.announce
	tr := New(opts)
	tr.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tr.Close(ctx)
	})
	return tr, h
}

// Alone (embedded mode): arrivals, a second member, the grace, a return
// within it, the sorted list.
func TestTrackerAlone(t *testing.T) {
	tr, h := start(t, Options{Grace: 200 * time.Millisecond})
	ctx := context.Background()
	tr.Watch(ctx, "p")
	tr.Joined("p", &hub.User{ID: "zoe", Name: "Zoe"})
	tr.Joined("p", &hub.User{ID: "adam"})
	tr.Joined("p", &hub.User{ID: "zoe", Name: "Zoe Two"})
	if got := names(tr.Online("p")); !slices.Equal(got, []string{"adam:null", "zoe:Zoe"}) {
		t.Fatalf("online %v", got)
	}
	h.wait(t, "user_online p zoe", "user_online p adam")
	tr.Left("p", "zoe") // one member of two
	tr.Left("p", "zoe") // the last: grace
	tr.Joined("p", &hub.User{ID: "zoe"})
	tr.Left("p", "adam")
	h.wait(t, "user_online p zoe", "user_online p adam", "user_offline p adam")
	if got := names(tr.Online("p")); !slices.Equal(got, []string{"zoe:Zoe"}) {
		t.Fatalf("online after adam's grace %v", got)
	}
	// Leaving more than joined changes nothing.
	tr.Left("p", "nobody")
	tr.Left("nowhere", "zoe")
	list, err := tr.List(ctx, "p")
	if err != nil || len(list) != 1 || list[0].UserID != "zoe" || list[0].Connections != 1 {
		t.Fatalf("List %+v %v", list, err)
	}
}

// Over MaxUsers a project's members are told nothing one by one and a
// join's list is absent.
func TestTrackerMaxUsers(t *testing.T) {
	tr, h := start(t, Options{MaxUsers: 2})
	tr.Watch(context.Background(), "p")
	for _, u := range []string{"a", "b", "c"} {
		tr.Joined("p", &hub.User{ID: u})
	}
	if tr.Online("p") != nil {
		t.Fatalf("online %v over the limit, want nil", tr.Online("p"))
	}
	tr.Left("p", "c")
	tr.Left("p", "b")
	h.wait(t, "user_online p a", "user_online p b", "user_offline p b")
}

// fakeDB is the Backend of several trackers: leases by a clock of its own,
// rows, and notifications (asynchronous, as NOTIFY is).
type fakeDB struct {
	mu       sync.Mutex
	now      time.Time // advanced by the test
	leases   map[string]time.Time
	rows     map[string]map[Key]Row // by instance
	trackers []*Tracker
	writes   int
}

func newFakeDB() *fakeDB {
	return &fakeDB{now: time.Unix(1000, 0), leases: map[string]time.Time{}, rows: map[string]map[Key]Row{}}
}

func (d *fakeDB) notify(projects ...string) {
	d.mu.Lock()
	ts := slices.Clone(d.trackers)
	d.mu.Unlock()
	go func() {
		for _, t := range ts {
			t.Changed(projects...)
		}
	}()
}

type fakeInstance struct {
	db *fakeDB
	id string
}

func (f *fakeInstance) Register(_ context.Context, lease time.Duration) (bool, error) {
	d := f.db
	d.mu.Lock()
	defer d.mu.Unlock()
	d.writes++
	_, ok := d.leases[f.id]
	d.leases[f.id] = d.now.Add(lease)
	if !ok {
		d.rows[f.id] = map[Key]Row{}
	}
	return !ok, nil
}

func (f *fakeInstance) Write(_ context.Context, lease time.Duration, set []Row, del []Key) error {
	d := f.db
	d.mu.Lock()
	d.writes++
	if _, ok := d.leases[f.id]; !ok {
		d.mu.Unlock()
		return ErrLeaseLost
	}
	d.leases[f.id] = d.now.Add(lease)
	var changed []string
	for _, r := range set {
		k := Key{r.Project, r.User}
		if _, ok := d.rows[f.id][k]; !ok {
			changed = append(changed, r.Project)
		}
		d.rows[f.id][k] = r
	}
	for _, k := range del {
		if _, ok := d.rows[f.id][k]; ok {
			delete(d.rows[f.id], k)
			changed = append(changed, k.Project)
		}
	}
	d.mu.Unlock()
	if len(changed) > 0 {
		d.notify(changed...)
	}
	return nil
}

func (f *fakeInstance) Remote(_ context.Context, projects []string) ([]Row, error) {
	d := f.db
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []Row
	for inst, rows := range d.rows {
		if inst == f.id || !d.leases[inst].After(d.now) {
			continue
		}
		for k, r := range rows {
			if slices.Contains(projects, k.Project) {
				out = append(out, r)
			}
		}
	}
	return out, nil
}

func (f *fakeInstance) Sweep(context.Context) error {
	d := f.db
	d.mu.Lock()
	var changed []string
	for inst, exp := range d.leases {
		if !exp.After(d.now) {
			for k := range d.rows[inst] {
				changed = append(changed, k.Project)
			}
			delete(d.leases, inst)
			delete(d.rows, inst)
		}
	}
	d.mu.Unlock()
	if len(changed) > 0 {
		d.notify(changed...)
	}
	return nil
}

func (f *fakeInstance) Goodbye(context.Context, time.Duration) error { return nil }

func (d *fakeDB) instance(t *testing.T, id string, opts Options) (*Tracker, *heard) {
	opts.Backend = &fakeInstance{db: d, id: id}
	tr, h := start(t, opts)
	d.mu.Lock()
	d.trackers = append(d.trackers, tr)
	d.mu.Unlock()
	return tr, h
}

func (d *fakeDB) advance(by time.Duration) {
	d.mu.Lock()
	d.now = d.now.Add(by)
	d.mu.Unlock()
}

func (d *fakeDB) rowCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, rows := range d.rows {
		n += len(rows)
	}
	return n
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Two instances: a user who flaps on one (no grace) ends where it really
// is on the other, whatever order the notifications and reads come in;
// an instance that stops renewing is swept and its users go.
func TestTrackerInstances(t *testing.T) {
	db := newFakeDB()
	opts := Options{TTL: time.Hour}
	a, _ := db.instance(t, "A", opts)
	b, hb := db.instance(t, "B", opts)
	ctx := context.Background()
	b.Watch(ctx, "p")
	b.Joined("p", &hub.User{ID: "bob"})
	a.Watch(ctx, "p")
	for i := range 50 {
		a.Joined("p", &hub.User{ID: "alice", Name: "Alice"})
		if i%2 == 0 {
			a.Left("p", "alice")
		}
		a.Left("p", "alice")
	}
	a.Joined("p", &hub.User{ID: "alice", Name: "Alice"})
	eventually(t, "B to list alice", func() bool {
		return slices.Equal(names(b.Online("p")), []string{"alice:Alice", "bob:null"})
	})
	// The last of B's messages says alice is online (they are delivered
	// after the state changed, in the order decided).
	eventually(t, "B's last message to say alice is online", func() bool {
		msgs := hb.snapshot()
		return len(msgs) > 0 && msgs[len(msgs)-1] == "user_online p alice"
	})
	if got := names(a.Online("p")); !slices.Equal(got, []string{"alice:Alice", "bob:null"}) {
		t.Fatalf("A lists %v", got)
	}
	// A falls silent: its lease ends by the database's clock and B sweeps.
	a.cancel() // A's loops stop, as in a killed process
	a.wg.Wait()
	db.advance(time.Hour)
	n := len(hb.snapshot())
	b.opts.Backend.Sweep(ctx)
	eventually(t, "B to drop alice", func() bool { return slices.Equal(names(b.Online("p")), []string{"bob:null"}) })
	eventually(t, "B's user_offline of alice", func() bool { return len(hb.snapshot()) > n })
	if got := hb.snapshot()[n:]; !slices.Equal(got, []string{"user_offline p alice"}) {
		t.Fatalf("after the sweep B heard %q", got)
	}
}

// An instance whose lease was swept (it could not renew) takes a new one
// and writes all its rows again.
func TestTrackerLeaseLost(t *testing.T) {
	db := newFakeDB()
	a, _ := db.instance(t, "A", Options{TTL: 600 * time.Millisecond})
	a.Watch(context.Background(), "p")
	a.Joined("p", &hub.User{ID: "alice"})
	a.Joined("q", &hub.User{ID: "alice"})
	eventually(t, "A's rows", func() bool { return db.rowCount() == 2 })
	db.mu.Lock()
	delete(db.leases, "A")
	delete(db.rows, "A")
	db.mu.Unlock()
	eventually(t, "A's rows again", func() bool { return db.rowCount() == 2 })
}

// Counts that go up and back within a second are never written; a row
// written once stays until its user leaves.
func TestTrackerWritesTransitions(t *testing.T) {
	db := newFakeDB()
	a, _ := db.instance(t, "A", Options{TTL: time.Hour})
	a.Watch(context.Background(), "p")
	a.Joined("p", &hub.User{ID: "alice"})
	eventually(t, "alice's row", func() bool { return db.rowCount() == 1 })
	db.mu.Lock()
	before := db.writes
	db.mu.Unlock()
	for range 100 {
		a.Joined("p", &hub.User{ID: "alice"})
		a.Left("p", "alice")
	}
	time.Sleep(countDelay + 200*time.Millisecond) // a write would be due by now
	db.mu.Lock()
	after := db.writes
	db.mu.Unlock()
	if after != before {
		t.Fatalf("%d writes for counts that came back, want none", after-before)
	}
	a.Joined("p", &hub.User{ID: "alice"}) // 2, and it stays
	eventually(t, "the count written", func() bool {
		db.mu.Lock()
		defer db.mu.Unlock()
		return db.rows["A"][Key{"p", "alice"}].Conns == 2
	})
}

// A project past indexAbove users finds and drops them through its index,
// and goes back to scanning when it empties.
func TestProjectEntries(t *testing.T) {
	p := &project{id: "p"}
	for i := range 40 {
		p.add(fmt.Sprint("u", i), "")
	}
	if p.index == nil {
		t.Fatal("no index past indexAbove users")
	}
	for i := 0; i < 40; i += 3 {
		p.removeIdle(fmt.Sprint("u", i)) // idle: no member, row or remote
	}
	for i := range 40 {
		if got := p.find(fmt.Sprint("u", i)); (got != nil) != (i%3 != 0) || (got != nil && got.user != fmt.Sprint("u", i)) {
			t.Fatalf("find u%d = %+v", i, got)
		}
	}
	busy := p.find("u1")
	busy.n = 1
	for i := range 40 {
		p.removeIdle(fmt.Sprint("u", i))
	}
	if len(p.users) != 1 || p.users[0].user != "u1" || p.index != nil {
		t.Fatalf("after removing the idle: %+v, index %v", p.users, p.index)
	}
}
