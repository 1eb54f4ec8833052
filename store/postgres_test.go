package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/store"
	"github.com/saga-family/sagapush/store/pgtest"
)

// waitTimeout bounds every wait of these tests.
const waitTimeout = 15 * time.Second

// recSink records what the store hands over and signals every change, so
// tests wait on events rather than on time.
type recSink struct {
	mu         sync.Mutex
	wakes      map[string]int
	wakeAlls   int
	revokes    []string // "project:user"
	ephemerals []hub.Ephemeral
	offers     []hub.Event
	pointers   map[string]int // Wake calls alone, without Offer
	gone       []string       // UserGone calls
	users      []string       // what UserIDs answers
	order      []string       // "offer:<project>:<seq>" and "gone:<user>", as called
	changed    chan struct{}
}

func newSink() *recSink {
	return &recSink{wakes: make(map[string]int), pointers: make(map[string]int), changed: make(chan struct{}, 1)}
}

func (s *recSink) note() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Wake and Offer both count as a wake of the project.
func (s *recSink) Wake(projectID string) {
	s.mu.Lock()
	s.wakes[projectID]++
	s.pointers[projectID]++
	s.mu.Unlock()
	s.note()
}

func (s *recSink) Offer(e hub.Event) {
	s.mu.Lock()
	s.wakes[e.ProjectID]++
	s.offers = append(s.offers, e)
	s.order = append(s.order, fmt.Sprintf("offer:%s:%d", e.ProjectID, e.Seq))
	s.mu.Unlock()
	s.note()
}

func (s *recSink) WakeAll() {
	s.mu.Lock()
	s.wakeAlls++
	s.mu.Unlock()
	s.note()
}

func (s *recSink) Revoke(projectID, userID string) {
	s.mu.Lock()
	s.revokes = append(s.revokes, projectID+":"+userID)
	s.mu.Unlock()
	s.note()
}

func (s *recSink) DeliverEphemeral(e hub.Ephemeral) {
	s.mu.Lock()
	s.ephemerals = append(s.ephemerals, e)
	s.mu.Unlock()
	s.note()
}

func (s *recSink) UserGone(userID string) {
	s.mu.Lock()
	s.gone = append(s.gone, userID)
	s.order = append(s.order, "gone:"+userID)
	s.mu.Unlock()
	s.note()
}

func (s *recSink) UserIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.users...)
}

// wait blocks until cond (called under the sink's lock) holds, at most
// waitTimeout.
func (s *recSink) wait(t *testing.T, what string, cond func(s *recSink) bool) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ok := cond(s)
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-s.changed:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
	}
}

func (s *recSink) wakeCount(p string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.wakes[p]
}

func (s *recSink) wakeAllCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.wakeAlls
}

// waitWake waits for a Wake(p) beyond the before count.
func (s *recSink) waitWake(t *testing.T, p string, before int) {
	t.Helper()
	s.wait(t, "Wake("+p+")", func(s *recSink) bool { return s.wakes[p] > before })
}

// eventually retries check until it returns nil, at most waitTimeout. For
// state that has no event to wait on (health, a background prune).
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", waitTimeout, what, err)
		}
		<-tick.C
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openDB(t *testing.T, dbURL string) *sqlx.DB {
	t.Helper()
	db, err := sqlx.Open("postgres", dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func mustExec(t *testing.T, db *sqlx.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.ExecContext(ctxT(t), q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func openStore(t *testing.T, dbURL string, opts store.PostgresOptions) *store.Postgres {
	t.Helper()
	p, err := store.OpenPostgres(ctxT(t), dbURL, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return p
}

// startStore opens and starts a store, and waits for the WakeAll that its
// first LISTEN rings, so later wakes are not folded into it.
func startStore(t *testing.T, dbURL string, opts store.PostgresOptions) (*store.Postgres, *recSink) {
	t.Helper()
	p := openStore(t, dbURL, opts)
	sink := newSink()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := p.Start(ctx, sink); err != nil {
		t.Fatal(err)
	}
	sink.wait(t, "the first WakeAll", func(s *recSink) bool { return s.wakeAlls > 0 })
	return p, sink
}

// fixture: users u1..u4, project p1 (facilitator u1, storyteller u4) where
// u2 has a storyteller row and u1 a facilitator row; projects p2 and p3.
func fixture(t *testing.T, db *sqlx.DB) {
	t.Helper()
	mustExec(t, db, `INSERT INTO users (id, name, email) VALUES
		('u1', 'Una', 'u1@example.com'), ('u2', 'Dos', NULL), ('u3', 'Tres', NULL), ('u4', 'Cuatro', NULL)`)
	mustExec(t, db, `INSERT INTO projects (id, name, facilitator_id, storyteller_id) VALUES
		('p1', 'One', 'u1', 'u4'), ('p2', 'Two', 'u3', NULL), ('p3', 'Three', 'u3', NULL)`)
	mustExec(t, db, `INSERT INTO project_roles (project_id, user_id, role) VALUES
		('p1', 'u2', 'storyteller'), ('p1', 'u1', 'facilitator')`)
}

func dataOf(t *testing.T, e hub.Event) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(e.Data, &m); err != nil {
		t.Fatalf("event %d %s: data %s: %v", e.Seq, e.Name, e.Data, err)
	}
	return m
}

// checkFields asserts that got holds every key of want with an equal value
// (JSON numbers as float64); a want value of anyValue only needs the key.
func checkFields(t *testing.T, where string, got, want map[string]any) {
	t.Helper()
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("%s: field %q missing in %v", where, k, got)
			continue
		}
		if sub, isMap := w.(map[string]any); isMap {
			gm, ok := g.(map[string]any)
			if !ok {
				t.Errorf("%s: field %q = %v, want an object", where, k, g)
				continue
			}
			checkFields(t, where+"."+k, gm, sub)
			continue
		}
		if w == anyValue {
			continue
		}
		if fmt.Sprint(g) != fmt.Sprint(w) {
			t.Errorf("%s: field %q = %v, want %v", where, k, g, w)
		}
	}
}

type anyT struct{}

var anyValue = anyT{}

func TestTriggersFireEveryEvent(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	db := openDB(t, dbURL)
	fixture(t, db)
	p, sink := startStore(t, dbURL, store.PostgresOptions{})
	ctx := ctxT(t)

	type want struct {
		name   string
		fields map[string]any
	}
	steps := []struct {
		what  string
		sql   string
		wants []want
	}{
		{"insert story", `INSERT INTO stories (id, project_id, title, audio_url) VALUES ('s1', 'p1', 'Grandpa', 'https://a/1.mp3')`,
			[]want{{"story_uploaded", map[string]any{"story": map[string]any{
				"id": "s1", "projectId": "p1", "title": "Grandpa", "status": "processing",
				"audioUrl": "https://a/1.mp3", "createdAt": anyValue}}}}},
		{"status to completed", `UPDATE stories SET status = 'completed' WHERE id = 's1'`,
			[]want{{"story_processed", map[string]any{"storyId": "s1", "status": "completed"}}}},
		{"status back to processing", `UPDATE stories SET status = 'processing' WHERE id = 's1'`,
			[]want{{"story_processing", map[string]any{"storyId": "s1", "status": "processing"}}}},
		{"transcript set", `UPDATE stories SET transcript = 'Once upon a time' WHERE id = 's1'`,
			[]want{{"transcript_updated", map[string]any{"storyId": "s1", "transcript": "Once upon a time"}}}},
		{"unrelated update and same transcript fire nothing, then status and transcript together fire two",
			`UPDATE stories SET title = 'Grandpa Joe', transcript = 'Once upon a time' WHERE id = 's1';
			 UPDATE stories SET status = 'ready', transcript = 'Twice upon a time' WHERE id = 's1'`,
			[]want{
				{"transcript_updated", map[string]any{"storyId": "s1", "transcript": "Twice upon a time"}},
				{"story_processed", map[string]any{"storyId": "s1", "status": "ready"}},
			}},
		{"insert interaction", `INSERT INTO interactions (id, story_id, facilitator_id, type, content) VALUES ('i1', 's1', 'u1', 'comment', 'Lovely')`,
			[]want{{"interaction_added", map[string]any{"storyId": "s1", "interaction": map[string]any{
				"id": "i1", "storyId": "s1", "facilitatorId": "u1", "type": "comment", "content": "Lovely"}}}}},
		{"update interaction", `UPDATE interactions SET type = 'followup', content = 'Tell me more' WHERE id = 'i1'`,
			[]want{{"interaction_updated", map[string]any{"storyId": "s1", "interaction": map[string]any{
				"id": "i1", "storyId": "s1", "facilitatorId": "u1", "type": "followup", "content": "Tell me more"}}}}},
		{"insert export", `INSERT INTO export_requests (id, project_id, facilitator_id) VALUES ('x1', 'p1', 'u1')`,
			[]want{{"export_started", map[string]any{"exportId": "x1", "status": "pending"}}}},
		{"export progress", `UPDATE export_requests SET progress = 40, status = 'processing' WHERE id = 'x1'`,
			[]want{{"export_progress", map[string]any{"exportId": "x1", "progress": 40}}}},
		{"export ready", `UPDATE export_requests SET progress = 100, status = 'ready', download_url = 'https://d/x1.zip',
			expires_at = '2030-01-02T03:04:05Z' WHERE id = 'x1'`,
			[]want{
				{"export_progress", map[string]any{"exportId": "x1", "progress": 100}},
				{"export_ready", map[string]any{"exportId": "x1", "downloadUrl": "https://d/x1.zip", "expiresAt": anyValue}},
			}},
		{"export completed", `INSERT INTO export_requests (id, project_id, status) VALUES ('x2', 'p1', 'processing');
			UPDATE export_requests SET status = 'completed', download_url = 'https://d/x2.zip' WHERE id = 'x2'`,
			[]want{
				{"export_started", map[string]any{"exportId": "x2", "status": "processing"}},
				{"export_ready", map[string]any{"exportId": "x2", "downloadUrl": "https://d/x2.zip", "expiresAt": nil}},
			}},
		{"export failed", `UPDATE export_requests SET status = 'failed', error = 'disk full' WHERE id = 'x2'`,
			[]want{{"export_failed", map[string]any{"exportId": "x2", "error": "disk full"}}}},
	}

	var last int64
	for _, st := range steps {
		before := sink.wakeCount("p1")
		mustExec(t, db, st.sql)
		sink.waitWake(t, "p1", before)
		evs, complete, err := p.After(ctx, "p1", last, 0)
		if err != nil || !complete {
			t.Fatalf("%s: After: complete=%v err=%v", st.what, complete, err)
		}
		if len(evs) != len(st.wants) {
			names := []string{}
			for _, e := range evs {
				names = append(names, e.Name)
			}
			t.Fatalf("%s: got events %v, want %d", st.what, names, len(st.wants))
		}
		for i, w := range st.wants {
			e := evs[i]
			if e.Name != w.name || e.Seq != last+1 || e.ProjectID != "p1" {
				t.Fatalf("%s: event %d = %s seq %d project %s, want %s seq %d", st.what, i, e.Name, e.Seq, e.ProjectID, w.name, last+1)
			}
			if e.Time.IsZero() || time.Since(e.Time) > time.Minute {
				t.Errorf("%s: event time %v", st.what, e.Time)
			}
			checkFields(t, st.what+": "+e.Name, dataOf(t, e), w.fields)
			last = e.Seq
		}
	}
	if head, err := p.Head(ctx, "p1"); err != nil || head != last {
		t.Fatalf("Head = %d, %v; want %d", head, err, last)
	}

	// The story's createdAt is the row's created_at, in epoch ms.
	evs, _, _ := p.After(ctx, "p1", 0, 1)
	story := dataOf(t, evs[0])["story"].(map[string]any)
	created, _ := story["createdAt"].(float64)
	var rowMs float64
	if err := openDB(t, dbURL).GetContext(ctx, &rowMs, `SELECT floor(extract(epoch FROM created_at) * 1000) FROM stories WHERE id = $1`, story["id"]); err != nil {
		t.Fatal(err)
	}
	if created != rowMs {
		t.Errorf("createdAt %v, want the row's created_at in epoch ms, %v", created, rowMs)
	}
}

func TestRolledBackChangeFiresNothing(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	db := openDB(t, dbURL)
	fixture(t, db)
	p, sink := startStore(t, dbURL, store.PostgresOptions{})
	ctx := ctxT(t)

	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO stories (id, project_id, title) VALUES ('s1', 'p1', 'Never')`,
		`UPDATE stories SET transcript = 'never' WHERE id = 's1'`,
		`INSERT INTO export_requests (id, project_id) VALUES ('x1', 'p1')`,
	} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}

	// Notifications arrive in commit order: once p2's doorbell is heard, a
	// doorbell of p1 from before would have been heard too.
	before2 := sink.wakeCount("p2")
	mustExec(t, db, `INSERT INTO stories (project_id, title) VALUES ('p2', 'Barrier')`)
	sink.waitWake(t, "p2", before2)

	if n := sink.wakeCount("p1"); n != 0 {
		t.Errorf("Wake(p1) called %d times for a rolled-back change", n)
	}
	if head, err := p.Head(ctx, "p1"); err != nil || head != 0 {
		t.Errorf("Head(p1) = %d, %v; want 0", head, err)
	}
	if evs, complete, err := p.After(ctx, "p1", 0, 0); err != nil || !complete || len(evs) != 0 {
		t.Errorf("After(p1) = %d events, %v, %v; want none", len(evs), complete, err)
	}
	// The seq of p2 is not disturbed either, and p1 starts at 1 later.
	mustExec(t, db, `INSERT INTO stories (project_id, title) VALUES ('p1', 'Now')`)
	if head, err := p.Head(ctx, "p1"); err != nil || head != 1 {
		t.Errorf("Head(p1) after a committed insert = %d, %v; want 1", head, err)
	}
}

// A notification carries its event when it fits, exactly as After returns
// it; a big one is a pointer, and the rows are read.
func TestNotificationCarriesEvent(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	p, sink := startStore(t, dbURL, store.PostgresOptions{})
	ctx := ctxT(t)

	project := "p:with:colons ü"
	data := json.RawMessage(`{"storyId": "s1", "text": "a \"quoted\" line\n", "n": [1, 2.50, {"z": null}]}`)
	seq, err := p.Publish(ctx, project, "transcript_updated", data)
	if err != nil || seq != 1 {
		t.Fatalf("Publish = %d, %v", seq, err)
	}
	sink.wait(t, "the offered event", func(s *recSink) bool { return len(s.offers) == 1 })
	evs, _, err := p.After(ctx, project, 0, 0)
	if err != nil || len(evs) != 1 {
		t.Fatalf("After = %v, %v", evs, err)
	}
	sink.mu.Lock()
	got, want := sink.offers[0], evs[0]
	sink.mu.Unlock()
	if got.ProjectID != want.ProjectID || got.Seq != want.Seq || got.Name != want.Name ||
		string(got.Data) != string(want.Data) || !got.Time.Equal(want.Time) {
		t.Fatalf("offered %+v (data %s)\nstored  %+v (data %s)", got, got.Data, want, want.Data)
	}

	big, _ := json.Marshal(map[string]string{"storyId": "s1", "transcript": strings.Repeat("x", 9000)})
	if _, err := p.Publish(ctx, project, "transcript_updated", big); err != nil {
		t.Fatal(err)
	}
	sink.wait(t, "a pointer for the big event", func(s *recSink) bool { return s.pointers[project] == 1 })
	if n := p.ListenerStats().Notifications; n["event"] != 1 || n["event_pointer"] != 1 {
		t.Errorf("notifications counted %v, want 1 event and 1 event_pointer", n)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if n := len(sink.offers); n != 1 {
		t.Fatalf("%d offers; the big event must come as a pointer", n)
	}
}

func TestLargeTranscriptArrivesWhole(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	db := openDB(t, dbURL)
	fixture(t, db)
	p, sink := startStore(t, dbURL, store.PostgresOptions{})
	ctx := ctxT(t)

	var b strings.Builder
	for i := 0; b.Len() < 20*1024; i++ {
		fmt.Fprintf(&b, "line %d: \"quoted\" ünïcödé \\ tab\t.\n", i)
	}
	transcript := b.String()
	mustExec(t, db, `INSERT INTO stories (id, project_id, title) VALUES ('s1', 'p1', 'Long')`)
	before := sink.wakeCount("p1")
	mustExec(t, db, `UPDATE stories SET transcript = $1 WHERE id = 's1'`, transcript)
	sink.waitWake(t, "p1", before)

	evs, complete, err := p.After(ctx, "p1", 1, 10)
	if err != nil || !complete || len(evs) != 1 || evs[0].Name != "transcript_updated" {
		t.Fatalf("After = %v, %v, %v", evs, complete, err)
	}
	if got := dataOf(t, evs[0])["transcript"]; got != transcript {
		t.Fatalf("transcript came back with %d bytes, want %d", len(fmt.Sprint(got)), len(transcript))
	}

	// The same through Publish: the doorbell stays tiny whatever the data.
	big, _ := json.Marshal(map[string]string{"storyId": "s1", "transcript": transcript})
	before = sink.wakeCount("p1")
	seq, err := p.Publish(ctx, "p1", "transcript_updated", big)
	if err != nil || seq != 3 {
		t.Fatalf("Publish = %d, %v; want seq 3", seq, err)
	}
	sink.waitWake(t, "p1", before)
	evs, _, err = p.After(ctx, "p1", 2, 10)
	if err != nil || len(evs) != 1 || dataOf(t, evs[0])["transcript"] != transcript {
		t.Fatalf("published transcript did not come back whole: %v", err)
	}
}

func TestConcurrentWritersGetGapFreeSeqs(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	db := openDB(t, dbURL)
	db.SetMaxOpenConns(8)
	fixture(t, db)
	p, sink := startStore(t, dbURL, store.PostgresOptions{})
	ctx := ctxT(t)

	const writers, perWriter = 8, 100
	run := func(project func(w, i int) string) map[string][]string {
		var mu sync.Mutex
		inserted := map[string][]string{}
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perWriter {
					pid := project(w, i)
					var id string
					if err := db.GetContext(ctx, &id, `INSERT INTO stories (project_id, title) VALUES ($1, $2) RETURNING id`,
						pid, fmt.Sprintf("w%d-%d", w, i)); err != nil {
						errs <- err
						return
					}
					mu.Lock()
					inserted[pid] = append(inserted[pid], id)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		return inserted
	}
	check := func(what, project string, offset int64, ids []string) {
		t.Helper()
		evs, complete, err := p.After(ctx, project, offset, 0)
		if err != nil || !complete {
			t.Fatalf("%s: After(%s): %v %v", what, project, complete, err)
		}
		if len(evs) != len(ids) {
			t.Fatalf("%s: %s has %d events, want %d", what, project, len(evs), len(ids))
		}
		want := map[string]bool{}
		for _, id := range ids {
			want[id] = true
		}
		for i, e := range evs {
			if e.Seq != offset+int64(i)+1 {
				t.Fatalf("%s: %s event %d has seq %d, want %d (gap or disorder)", what, project, i, e.Seq, offset+int64(i)+1)
			}
			id, _ := dataOf(t, e)["story"].(map[string]any)["id"].(string)
			if !want[id] {
				t.Fatalf("%s: %s seq %d is story %q: unknown or duplicate", what, project, e.Seq, id)
			}
			delete(want, id)
		}
		if head, err := p.Head(ctx, project); err != nil || head != offset+int64(len(ids)) {
			t.Fatalf("%s: Head(%s) = %d, %v", what, project, head, err)
		}
	}

	// One project, 8 writers.
	one := run(func(int, int) string { return "p1" })
	check("one project", "p1", 0, one["p1"])
	sink.wait(t, "Wake(p1)", func(s *recSink) bool { return s.wakes["p1"] > 0 })

	// Three projects, every writer writing to all of them.
	projects := []string{"p1", "p2", "p3"}
	three := run(func(w, i int) string { return projects[(w+i)%3] })
	check("three projects", "p1", writers*perWriter, three["p1"])
	check("three projects", "p2", 0, three["p2"])
	check("three projects", "p3", 0, three["p3"])
	sink.wait(t, "Wake of p2 and p3", func(s *recSink) bool { return s.wakes["p2"] > 0 && s.wakes["p3"] > 0 })

	// Limits page in order.
	evs, _, err := p.After(ctx, "p2", 10, 5)
	if err != nil || len(evs) != 5 || evs[0].Seq != 11 || evs[4].Seq != 15 {
		t.Fatalf("After(p2, 10, 5) = %d events, %v", len(evs), err)
	}
}

// listenerPID finds the backend of the store's LISTEN connection by its
// application_name.
func listenerPID(t *testing.T, db *sqlx.DB) int {
	t.Helper()
	var pids []int
	err := db.SelectContext(ctxT(t), &pids, `SELECT pid FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = 'sagapush-listener'`)
	if err != nil {
		t.Fatal(err)
	}
	if len(pids) != 1 {
		t.Fatalf("found %d listener backends, want 1", len(pids))
	}
	return pids[0]
}

func TestListenerSurvivesTerminatedBackend(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	db := openDB(t, dbURL)
	fixture(t, db)
	p, sink := startStore(t, dbURL, store.PostgresOptions{})
	ctx := ctxT(t)
	if err := p.Healthy(ctx); err != nil {
		t.Fatalf("Healthy before: %v", err)
	}

	pid := listenerPID(t, db)
	alls := sink.wakeAllCount()
	var ok bool
	if err := db.GetContext(ctx, &ok, `SELECT pg_terminate_backend($1)`, pid); err != nil || !ok {
		t.Fatalf("pg_terminate_backend: %v %v", ok, err)
	}
	// Everything notified during the outage is lost: every room must catch up.
	sink.wait(t, "WakeAll after the reconnect", func(s *recSink) bool { return s.wakeAlls > alls })
	// pq reports the reconnect before the notification that woke every room.
	if st := p.ListenerStats(); st.Reconnects != 1 || st.Replaced != 0 {
		t.Errorf("listener counted %d reconnects and %d replacements, want 1 and 0", st.Reconnects, st.Replaced)
	}
	if newPID := listenerPID(t, db); newPID == pid {
		t.Fatalf("listener backend still %d", pid)
	}
	eventually(t, "Healthy after the reconnect", func() error { return p.Healthy(ctx) })

	before := sink.wakeCount("p1")
	mustExec(t, db, `INSERT INTO stories (project_id, title) VALUES ('p1', 'After')`)
	sink.waitWake(t, "p1", before)
}

func TestStuckListenerIsReplaced(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	db := openDB(t, dbURL)
	fixture(t, db)
	p, sink := startStore(t, dbURL, store.PostgresOptions{HealthInterval: 100 * time.Millisecond})
	ctx := ctxT(t)
	eventually(t, "Healthy at start", func() error { return p.Healthy(ctx) })

	oldPID := listenerPID(t, db)
	alls := sink.wakeAllCount()
	p.SetDropNotifications(true) // connected, yet hearing nothing
	sink.wait(t, "WakeAll after replacing the stuck listener", func(s *recSink) bool { return s.wakeAlls > alls })
	if st := p.ListenerStats(); st.Replaced < 1 {
		t.Errorf("listener counted %d replacements after it was replaced", st.Replaced)
	}
	if err := p.Healthy(ctx); err == nil {
		t.Fatal("Healthy = nil while notifications do not arrive")
	}
	if newPID := listenerPID(t, db); newPID == oldPID {
		t.Fatalf("listener backend still %d: not replaced", oldPID)
	}

	p.SetDropNotifications(false)
	eventually(t, "Healthy once notifications flow", func() error { return p.Healthy(ctx) })
	before := sink.wakeCount("p1")
	mustExec(t, db, `INSERT INTO stories (project_id, title) VALUES ('p1', 'After')`)
	sink.waitWake(t, "p1", before)
}

func TestRevocation(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	db := openDB(t, dbURL)
	fixture(t, db)
	_, sink := startStore(t, dbURL, store.PostgresOptions{})

	revoked := func(s *recSink, pair string) bool {
		for _, r := range s.revokes {
			if r == pair {
				return true
			}
		}
		return false
	}
	// u1 loses its role row but is still p1's facilitator; u2 loses its
	// only access. Checks run in order, so once u2's revocation is seen,
	// u1's check is over.
	mustExec(t, db, `DELETE FROM project_roles WHERE project_id = 'p1' AND user_id = 'u1'`)
	mustExec(t, db, `DELETE FROM project_roles WHERE project_id = 'p1' AND user_id = 'u2'`)
	sink.wait(t, "Revoke(p1, u2)", func(s *recSink) bool { return revoked(s, "p1:u2") })
	sink.mu.Lock()
	got := append([]string(nil), sink.revokes...)
	sink.mu.Unlock()
	if len(got) != 1 {
		t.Fatalf("revocations %v, want only p1:u2 (u1 is still the facilitator)", got)
	}

	// Replacing the facilitator revokes u1; the storyteller u4 loses p1 when
	// the project is deleted.
	mustExec(t, db, `UPDATE projects SET facilitator_id = 'u3' WHERE id = 'p1'`)
	sink.wait(t, "Revoke(p1, u1)", func(s *recSink) bool { return revoked(s, "p1:u1") })
	mustExec(t, db, `DELETE FROM projects WHERE id = 'p1'`)
	sink.wait(t, "Revoke(p1, u4) and Revoke(p1, u3)", func(s *recSink) bool {
		return revoked(s, "p1:u4") && revoked(s, "p1:u3")
	})
}

// A deleted users row reaches the sink at once by its notification; after
// a listener reconnect, the connected users are checked against the table.
func TestUserDeleted(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	db := openDB(t, dbURL)
	mustExec(t, db, `INSERT INTO users (id, name) VALUES ('u1', 'One'), ('u3', 'Three')`)
	_, sink := startStore(t, dbURL, store.PostgresOptions{})
	goneList := func() []string {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		return append([]string(nil), sink.gone...)
	}

	mustExec(t, db, `DELETE FROM users WHERE id = 'u3'`)
	sink.wait(t, "UserGone(u3)", func(s *recSink) bool { return len(s.gone) > 0 })
	if got := goneList(); len(got) != 1 || got[0] != "u3" {
		t.Fatalf("UserGone calls %v, want [u3]", got)
	}

	// Deleted while nobody listened (the check at the reconnect finds it;
	// the periodic one is 30 s away). u1 exists and stays.
	sink.mu.Lock()
	sink.users = []string{"u1", "ghost"}
	sink.mu.Unlock()
	var ok bool
	if err := db.GetContext(ctxT(t), &ok, `SELECT pg_terminate_backend($1)`, listenerPID(t, db)); err != nil || !ok {
		t.Fatalf("pg_terminate_backend: %v %v", ok, err)
	}
	sink.wait(t, "UserGone(ghost)", func(s *recSink) bool { return len(s.gone) > 1 })
	if got := goneList(); len(got) != 2 || got[1] != "ghost" {
		t.Fatalf("UserGone calls %v, want [u3 ghost]", got)
	}
}

// One commit's events arrive together and are queued together; a user
// deleted among them keeps its place: no event notified after the deletion
// is handed over before it.
func TestBurstKeepsOrderAroundDeletion(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	db := openDB(t, dbURL)
	mustExec(t, db, `INSERT INTO users (id, name) VALUES ('u9', 'Nine')`)
	_, sink := startStore(t, dbURL, store.PostgresOptions{})
	tx, err := db.BeginTx(ctxT(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`SELECT count(push_emit('p' || (g % 2), 'story_processed', jsonb_build_object('n', g))) FROM generate_series(1, 100) AS g`,
		`DELETE FROM users WHERE id = 'u9'`,
		`SELECT count(push_emit('p' || (g % 2), 'story_processed', jsonb_build_object('n', g))) FROM generate_series(101, 200) AS g`,
	} {
		if _, err := tx.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	sink.wait(t, "200 offers and the deletion", func(s *recSink) bool { return len(s.offers) == 200 && len(s.gone) == 1 })
	sink.mu.Lock()
	defer sink.mu.Unlock()
	next := map[string]int64{"p0": 1, "p1": 1}
	goneAt := -1
	for i, o := range sink.order {
		if o == "gone:u9" {
			goneAt = i
			continue
		}
		var p string
		var seq int64
		fmt.Sscanf(strings.Replace(o, ":", " ", -1), "offer %s %d", &p, &seq)
		if seq != next[p] {
			t.Fatalf("offer %d is %s, want seq %d of %s: %v", i, o, next[p], p, sink.order)
		}
		next[p]++
		// Events 101-200 (seqs 51-100 of each project) came after the deletion.
		if seq > 50 && goneAt < 0 {
			t.Fatalf("%s handed over before the deletion notified ahead of it: %v", o, sink.order)
		}
	}
}

func TestRoleAndUserExists(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	db := openDB(t, dbURL)
	fixture(t, db)
	p := openStore(t, dbURL, store.PostgresOptions{})
	ctx := ctxT(t)

	for _, c := range []struct{ user, project, role string }{
		{"u1", "p1", "facilitator"}, // a row and facilitator_id
		{"u2", "p1", "storyteller"}, // a row
		{"u4", "p1", "storyteller"}, // storyteller_id
		{"u3", "p2", "facilitator"}, // facilitator_id
		{"u3", "p1", ""},
		{"u2", "p2", ""},
		{"nobody", "p1", ""},
		{"u1", "missing", ""},
	} {
		role, err := p.Role(ctx, &hub.User{ID: c.user}, c.project)
		if c.role == "" {
			if !errors.Is(err, hub.ErrAccessDenied) {
				t.Errorf("Role(%s, %s) = %q, %v; want access denied", c.user, c.project, role, err)
			}
			continue
		}
		if err != nil || role != c.role {
			t.Errorf("Role(%s, %s) = %q, %v; want %q", c.user, c.project, role, err, c.role)
		}
	}
	// Roles decides several projects in one query, as Role does each.
	for user, want := range map[string]map[string]string{
		"u1":     {"p1": "facilitator"},
		"u3":     {"p2": "facilitator"},
		"u4":     {"p1": "storyteller"},
		"nobody": {},
	} {
		got, err := p.Roles(ctx, &hub.User{ID: user}, []string{"p1", "p2", "missing"})
		if err != nil || !maps.Equal(got, want) {
			t.Errorf("Roles(%s) = %v, %v; want %v", user, got, err, want)
		}
	}
	for user, want := range map[string]bool{"u1": true, "u4": true, "nobody": false, "": false} {
		if _, got, err := p.LookupUser(ctx, user); err != nil || got != want {
			t.Errorf("LookupUser(%q) = %v, %v", user, got, err)
		}
	}
}

func TestPublish(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	db := openDB(t, dbURL)
	fixture(t, db)
	p, sink := startStore(t, dbURL, store.PostgresOptions{})
	ctx := ctxT(t)

	if p.Mode() != "postgres" {
		t.Errorf("Mode = %q", p.Mode())
	}
	if _, err := p.Publish(ctx, "p1", "story_deleted", nil); !errors.Is(err, store.ErrUnknownEvent) {
		t.Errorf("unknown event: %v", err)
	}
	if _, err := p.Publish(ctx, "p1", "story_processed", json.RawMessage(`{bad`)); err == nil {
		t.Error("bad JSON accepted")
	}
	if _, err := p.Publish(ctx, strings.Repeat("p", 300), "story_processed", nil); err == nil {
		t.Error("a 300-byte project id accepted")
	}
	// Triggers and Publish share one seq.
	mustExec(t, db, `INSERT INTO stories (id, project_id) VALUES ('s1', 'p1')`)
	before := sink.wakeCount("p1")
	seq, err := p.Publish(ctx, "p1", "story_processed", json.RawMessage(`{"storyId":"s1","status":"done"}`))
	if err != nil || seq != 2 {
		t.Fatalf("Publish = %d, %v; want 2", seq, err)
	}
	sink.waitWake(t, "p1", before)
	if seq, err := p.Publish(ctx, "fresh", "export_failed", nil); err != nil || seq != 1 {
		t.Fatalf("Publish to a new project = %d, %v; want 1", seq, err)
	}
	evs, complete, err := p.After(ctx, "p1", 1, 0)
	if err != nil || !complete || len(evs) != 1 || evs[0].Seq != 2 || evs[0].Name != "story_processed" {
		t.Fatalf("After = %+v, %v, %v", evs, complete, err)
	}
	checkFields(t, "published", dataOf(t, evs[0]), map[string]any{"storyId": "s1", "status": "done"})
	if evs, complete, err := p.After(ctx, "nothing-here", 0, 0); err != nil || !complete || len(evs) != 0 {
		t.Errorf("After of an unknown project = %v, %v, %v", evs, complete, err)
	}
	if head, err := p.Head(ctx, "nothing-here"); err != nil || head != 0 {
		t.Errorf("Head of an unknown project = %d, %v", head, err)
	}
}

func TestEphemeralCrossesInstances(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	db := openDB(t, dbURL)
	a, sinkA := startStore(t, dbURL, store.PostgresOptions{})
	_, sinkB := startStore(t, dbURL, store.PostgresOptions{})
	ctx := ctxT(t)

	small := hub.Ephemeral{ProjectID: "p1", Except: "u1", Name: "typing_start",
		JSON: []byte(`{"event":"typing_start","projectId":"p1","data":{"storyId":"s1","userId":"u1","userName":"Una"}}`)}
	bigText := strings.Repeat("0123456789abcdef", 600) // 9.6 KB, more with the JSON around it
	bigJSON, _ := json.Marshal(map[string]any{"event": "export_note", "data": map[string]string{"text": bigText}})
	big := hub.Ephemeral{UserID: "u2", Name: "export_note", JSON: bigJSON}
	if n, _ := json.Marshal(big); len(n) <= 8000 {
		t.Fatalf("big message is only %d bytes", len(n))
	}

	has := func(s *recSink, want hub.Ephemeral) bool {
		for _, e := range s.ephemerals {
			if e.ProjectID == want.ProjectID && e.UserID == want.UserID && e.Except == want.Except &&
				e.Name == want.Name && string(e.JSON) == string(want.JSON) {
				return true
			}
		}
		return false
	}
	for _, c := range []struct {
		what   string
		e      hub.Ephemeral
		stored int
	}{{"small", small, 0}, {"large", big, 1}} {
		if err := a.PublishEphemeral(ctx, c.e); err != nil {
			t.Fatalf("%s: %v", c.what, err)
		}
		sinkA.wait(t, c.what+" message on the sending instance", func(s *recSink) bool { return has(s, c.e) })
		sinkB.wait(t, c.what+" message on the other instance", func(s *recSink) bool { return has(s, c.e) })
		var stored int
		if err := db.GetContext(ctx, &stored, `SELECT count(*) FROM push_ephemeral`); err != nil || stored != c.stored {
			t.Errorf("%s: push_ephemeral holds %d rows (%v), want %d", c.what, stored, err, c.stored)
		}
	}
}

func TestPruning(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	db := openDB(t, dbURL)
	ctx := ctxT(t)
	p := openStore(t, dbURL, store.PostgresOptions{Retention: time.Hour, PruneInterval: -1})

	for range 5 {
		if _, err := p.Publish(ctx, "p1", "export_progress", json.RawMessage(`{"progress":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.Publish(ctx, "p2", "export_progress", nil); err != nil {
		t.Fatal(err)
	}
	mustExec(t, db, `UPDATE push_events SET created_at = now() - interval '2 hours' WHERE project_id = 'p1' AND seq <= 3`)
	n, err := p.Prune(ctx)
	if err != nil || n != 3 {
		t.Fatalf("Prune = %d, %v; want 3", n, err)
	}
	if n, err := p.Prune(ctx); err != nil || n != 0 {
		t.Fatalf("second Prune = %d, %v; want 0", n, err)
	}
	for _, after := range []int64{0, 2} {
		if evs, complete, err := p.After(ctx, "p1", after, 0); err != nil || complete || len(evs) != 0 {
			t.Errorf("After(p1, %d) = %d events, complete %v, %v; want complete=false", after, len(evs), complete, err)
		}
	}
	evs, complete, err := p.After(ctx, "p1", 3, 0)
	if err != nil || !complete || len(evs) != 2 || evs[0].Seq != 4 {
		t.Errorf("After(p1, 3) = %d events, complete %v, %v; want 4 and 5", len(evs), complete, err)
	}
	if head, err := p.Head(ctx, "p1"); err != nil || head != 5 {
		t.Errorf("Head(p1) = %d, %v; want 5", head, err)
	}
	if _, complete, err := p.After(ctx, "p2", 0, 0); err != nil || !complete {
		t.Errorf("p2 was pruned: %v %v", complete, err)
	}
	// Seqs go on after pruning.
	if seq, err := p.Publish(ctx, "p1", "export_progress", nil); err != nil || seq != 6 {
		t.Errorf("Publish after pruning = %d, %v; want 6", seq, err)
	}

	// The background pruner does the same on its own.
	bg := openStore(t, dbURL, store.PostgresOptions{Retention: time.Hour, PruneInterval: 20 * time.Millisecond})
	mustExec(t, db, `UPDATE push_events SET created_at = now() - interval '2 hours' WHERE project_id = 'p2'`)
	eventually(t, "the background prune of p2", func() error {
		_, complete, err := bg.After(ctx, "p2", 0, 0)
		if err == nil && complete {
			err = errors.New("still complete")
		}
		return err
	})
}

func TestHealthyBeforeStartAndAfterClose(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	p, err := store.OpenPostgres(ctxT(t), dbURL, store.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	if err := p.Healthy(ctx); err == nil {
		t.Error("Healthy = nil before Start")
	}
	if err := p.Start(ctx, newSink()); err != nil {
		t.Fatal(err)
	}
	if err := p.Healthy(ctx); err != nil {
		t.Errorf("Healthy after Start: %v", err)
	}
	if err := p.Start(ctx, newSink()); err == nil {
		t.Error("a second Start succeeded")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Healthy(ctx); err == nil {
		t.Error("Healthy = nil after Close")
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestOpenPostgresKeyValueDSN(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Skip("TEST_DATABASE_URL is not a URL")
	}
	kv := fmt.Sprintf("host=%s port=%s user=%s dbname=%s", u.Hostname(), u.Port(), u.User.Username(), strings.TrimPrefix(u.Path, "/"))
	if pw, ok := u.User.Password(); ok {
		kv += " password='" + pw + "'"
	}
	if m := u.Query().Get("sslmode"); m != "" {
		kv += " sslmode=" + m
	}
	p, sink := startStore(t, kv, store.PostgresOptions{})
	db := openDB(t, dbURL)
	listenerPID(t, db) // the application_name was set in key=value form too
	if _, err := p.Publish(ctxT(t), "p9", "export_failed", nil); err != nil {
		t.Fatal(err)
	}
	sink.waitWake(t, "p9", 0)
}

// TestTriggersNeedNoRightsOnEventTables: the Saga backend may write with a
// role that has rights on its own tables only; its changes must still fire
// events (push_emit runs as its owner).
func TestTriggersNeedNoRightsOnEventTables(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.New(t)
	db := openDB(t, dbURL)
	fixture(t, db)
	p := openStore(t, dbURL, store.PostgresOptions{})
	ctx := ctxT(t)

	role := fmt.Sprintf("sagapush_test_writer_%d", time.Now().UnixNano())
	mustExec(t, db, `CREATE ROLE `+role+` NOLOGIN`)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Roles are cluster-wide: drop it, and what it was granted, here.
		if _, err := db.ExecContext(ctx, `DROP OWNED BY `+role); err != nil {
			t.Errorf("drop owned: %v", err)
		}
		if _, err := db.ExecContext(ctx, `DROP ROLE `+role); err != nil {
			t.Errorf("drop role: %v", err)
		}
	})
	mustExec(t, db, `GRANT SELECT, INSERT, UPDATE ON stories TO `+role)

	// SET LOCAL: the role ends with the transaction, so no pooled
	// connection keeps it.
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	for _, q := range []string{
		`SET LOCAL ROLE ` + role,
		`INSERT INTO stories (id, project_id, title) VALUES ('s1', 'p1', 'As Saga')`,
		`UPDATE stories SET transcript = 'hi' WHERE id = 's1'`,
	} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s, as a role without rights on the push_ tables: %v", q, err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if head, err := p.Head(ctx, "p1"); err != nil || head != 2 {
		t.Fatalf("Head = %d, %v; want 2", head, err)
	}
}
