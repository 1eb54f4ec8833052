package e2e

// Server-level Postgres tests (docs/protocol.md sections 3, 4, 6, 8, 9 and 10): real
// databases (store/pgtest: one fresh, migrated database per test), real
// server processes on them and real WebSocket clients (database_test.go,
// server_test.go, wsclient_test.go). Writers are database/sql + lib/pq
// connections changing Saga's tables, as the Saga backend does; the server
// learns of it through its triggers.

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/saga-family/sagapush/auth"
)

// pgInsertConcurrently runs writers goroutines at once, writer w inserting
// perWriter stories (autocommit INSERTs into stories), its i-th into
// project(w, i), and returns the ids inserted per project. during, when not
// nil, runs on the test's goroutine while they write; inserted counts the
// stories committed so far.
func pgInsertConcurrently(t *testing.T, db *sql.DB, tag string, writers, perWriter int, project func(w, i int) string, during func(inserted *atomic.Int64)) map[string][]string {
	t.Helper()
	var inserted atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	start := make(chan struct{})
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := range perWriter {
				id := fmt.Sprintf("%s-w%d-%03d", tag, w, i)
				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				_, err := db.ExecContext(ctx, `INSERT INTO stories (id, project_id, title) VALUES ($1, $2, $3)`, id, project(w, i), "Story "+id)
				cancel()
				if err != nil {
					errs <- fmt.Errorf("writer %d, story %d: %w", w, i, err)
					return
				}
				inserted.Add(1)
			}
		}()
	}
	close(start)
	if during != nil {
		during(&inserted)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the writers did not finish within 60 s")
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	ids := map[string][]string{}
	for w := range writers {
		for i := range perWriter {
			p := project(w, i)
			ids[p] = append(ids[p], fmt.Sprintf("%s-w%d-%03d", tag, w, i))
		}
	}
	return ids
}

// pgExpectStories reads story_uploaded events until want[p] of them came
// for each project p: every message must be one, and each project's seqs
// must go up by exactly one from from[p]+1. It returns the story ids per
// project in the order received.
func pgExpectStories(t testing.TB, c *wsClient, from map[string]int64, want map[string]int) map[string][]string {
	t.Helper()
	last := map[string]int64{}
	total := 0
	for p, n := range want {
		last[p] = from[p]
		total += n
	}
	got := map[string][]string{}
	for k := 0; k < total; k++ {
		m := c.read(t)
		p, _ := m["projectId"].(string)
		seq, _ := m["seq"].(float64)
		if m["event"] != "story_uploaded" {
			t.Fatalf("%s: message %d of %d is %v, want story_uploaded", c.name, k+1, total, m)
		}
		if _, ok := want[p]; !ok {
			t.Fatalf("%s: %v is of project %q, want one of %v", c.name, m, p, want)
		}
		if int64(seq) != last[p]+1 {
			t.Fatalf("%s: %s seq %v after seq %d, want %d (message %d of %d)", c.name, p, m["seq"], last[p], last[p]+1, k+1, total)
		}
		if len(got[p]) >= want[p] {
			t.Fatalf("%s: %v: more than %d events of %s", c.name, m, want[p], p)
		}
		last[p]++
		story, _ := dataOf(t, m)["story"].(map[string]any)
		id, _ := story["id"].(string)
		if story["projectId"] != p || id == "" {
			t.Fatalf("%s: %v: data.story must hold the id and projectId %s", c.name, m, p)
		}
		got[p] = append(got[p], id)
	}
	return got
}

// pgSameIDs checks that got holds each id of want once (in any order).
func pgSameIDs(t testing.TB, who string, got, want map[string][]string) {
	t.Helper()
	for p, w := range want {
		g := slices.Clone(got[p])
		w = slices.Clone(w)
		slices.Sort(g)
		slices.Sort(w)
		if !slices.Equal(g, w) {
			t.Errorf("%s: %s: got %d story ids, want the %d inserted, each once", who, p, len(g), len(w))
		}
	}
}

// pgExpectStory reads the next message: story_uploaded of the project with
// that seq and story id.
func pgExpectStory(t testing.TB, c *wsClient, projectID string, seq int64, storyID string) {
	t.Helper()
	m := c.read(t)
	story, _ := dataOf(t, m)["story"].(map[string]any)
	if m["event"] != "story_uploaded" || m["projectId"] != projectID || m["seq"] != float64(seq) || story["id"] != storyID {
		t.Fatalf("%s: got %v, want story_uploaded seq %d of %s (story %s)", c.name, m, seq, projectID, storyID)
	}
	if _, ok := m["ts"].(float64); !ok {
		t.Fatalf("%s: %v has no ts", c.name, m)
	}
}

// pgJoinSince joins with since and returns the joined_project data.
func pgJoinSince(t testing.TB, c *wsClient, projectID string, since int64) map[string]any {
	t.Helper()
	m := c.call(t, "join_project", map[string]any{"projectId": projectID, "since": since})
	if m["event"] != "joined_project" {
		t.Fatalf("%s: join %s since %d: got %v", c.name, projectID, since, m)
	}
	return dataOf(t, m)
}

// pgHealth returns the health endpoint's status and body.
func pgHealth(t testing.TB, s *testServer) (int, map[string]any) {
	t.Helper()
	return s.getJSON(t, "/api/websocket/health", "")
}

// 1. Many writers, one counter: every client gets every story once, seqs
// gap-free in commit order, per project.
func TestPGConcurrentWriters(t *testing.T) {
	t.Parallel()
	e := newPGEnv(t)
	e.exec(t, `INSERT INTO users (id, name) VALUES ('u1', 'User One'), ('u2', 'User Two')`)
	e.exec(t, `INSERT INTO projects (id, name) VALUES ('p1', 'One'), ('p2', 'Two'), ('p3', 'Three'), ('p4', 'Four')`)
	e.exec(t, `INSERT INTO project_roles (project_id, user_id, role) VALUES
		('p1', 'u1', 'storyteller'), ('p1', 'u2', 'facilitator'),
		('p2', 'u1', 'storyteller'), ('p3', 'u1', 'storyteller'), ('p4', 'u1', 'storyteller')`)
	s := e.start(t)
	const writers, perWriter = 8, 100

	t.Run("one project", func(t *testing.T) {
		c1 := dialWS(t, s, s.userToken(t, "u1"), named("u1"))
		c2 := dialWS(t, s, s.userToken(t, "u2"), named("u2"))
		for _, c := range []*wsClient{c1, c2} {
			if j := c.join(t, "p1"); j["seq"] != float64(0) {
				t.Fatalf("%s: joined %v, want seq 0", c.name, j)
			}
		}
		// Two more join while the writers write: one resuming from 0
		// (replayed from the store, then live), one without since (live
		// from the seq its join answers).
		c3 := dialWS(t, s, s.userToken(t, "u1"), named("u1 joining with since 0 mid-stream"))
		c4 := dialWS(t, s, s.userToken(t, "u2"), named("u2 joining mid-stream"))
		var c4From int64
		ids := pgInsertConcurrently(t, e.db, "a", writers, perWriter, func(w, i int) string { return "p1" }, func(inserted *atomic.Int64) {
			eventually(t, 30*time.Second, "300 stories inserted", func() bool { return inserted.Load() >= 300 })
			if j := pgJoinSince(t, c3, "p1", 0); j["recovered"] != true {
				t.Errorf("%s: joined %v, want recovered true", c3.name, j)
			}
			j := c4.join(t, "p1")
			seq, ok := j["seq"].(float64)
			if !ok {
				t.Fatalf("%s: joined %v without a seq", c4.name, j)
			}
			c4From = int64(seq)
			if c4From < 300 {
				t.Errorf("%s: joined at seq %d, want at least the 300 committed", c4.name, c4From)
			}
		})
		const n = writers * perWriter
		for _, c := range []*wsClient{c1, c2, c3} {
			got := pgExpectStories(t, c, nil, map[string]int{"p1": n})
			pgSameIDs(t, c.name, got, ids)
			c.expectNothingQueued(t)
		}
		pgExpectStories(t, c4, map[string]int64{"p1": c4From}, map[string]int{"p1": n - int(c4From)})
		c4.expectNothingQueued(t)
		t.Logf("mid-stream joins at seq %d", c4From)
	})

	t.Run("three projects", func(t *testing.T) {
		c := dialWS(t, s, s.userToken(t, "u1"), named("u1 (p2, p3, p4)"))
		projects := []string{"p2", "p3", "p4"}
		for _, p := range projects {
			c.join(t, p)
		}
		ids := pgInsertConcurrently(t, e.db, "b", writers, perWriter, func(w, i int) string { return projects[(w+i)%3] }, nil)
		want := map[string]int{}
		for p, l := range ids {
			want[p] = len(l)
		}
		got := pgExpectStories(t, c, nil, want)
		pgSameIDs(t, c.name, got, ids)
		c.expectNothingQueued(t)
	})
}

// 2. The server's connections are killed again and again while a writer
// inserts: the LISTEN reconnect catches up from the table, so the client
// gets every story once, in order.
func TestPGConnectionsKilled(t *testing.T) {
	t.Parallel()
	e := newPGEnv(t)
	e.exec(t, `INSERT INTO users (id, name) VALUES ('u1', 'User One')`)
	e.exec(t, `INSERT INTO projects (id, name, storyteller_id) VALUES ('p1', 'One', 'u1')`)
	s := e.start(t)
	c := dialWS(t, s, s.userToken(t, "u1"), named("u1"))
	c.join(t, "p1")
	e.waitListening(t, 1)

	// Phase 1: a paced writer inserts 150 stories; the connections are
	// killed three times meanwhile, each time once the listener is back.
	// The writer never runs more than 20 stories ahead of a kill, so
	// stories are always committed right after one (during the outage).
	const concurrent, total = 150, 200
	killAt := []int64{30, 75, 120}
	killed := make([]chan struct{}, len(killAt))
	for k := range killed {
		killed[k] = make(chan struct{})
	}
	var inserted atomic.Int64
	writerErr := make(chan error, 1)
	go func() {
		tick := time.NewTicker(4 * time.Millisecond) // pacing, not a wait
		defer tick.Stop()
		for i := int64(1); i <= concurrent; i++ {
			for k, at := range killAt {
				if i == at+20 {
					select {
					case <-killed[k]:
					case <-time.After(waitTimeout):
						writerErr <- fmt.Errorf("kill %d did not come within %v", k+1, waitTimeout)
						return
					}
				}
			}
			<-tick.C
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			_, err := e.db.ExecContext(ctx, `INSERT INTO stories (id, project_id, title) VALUES ($1, 'p1', 'Story')`, fmt.Sprintf("s%03d", i))
			cancel()
			if err != nil {
				writerErr <- fmt.Errorf("story %d: %w", i, err)
				return
			}
			inserted.Store(i)
		}
		writerErr <- nil
	}()
	for k, at := range killAt {
		e.waitListening(t, 1)
		eventually(t, waitTimeout, fmt.Sprintf("the writer at story %d", at), func() bool { return inserted.Load() >= at })
		n, listeners := e.terminate(t)
		close(killed[k])
		if listeners != 1 {
			t.Fatalf("kill %d (at story %d): killed %d connections, %d of them listeners; want the listener among them", k+1, inserted.Load(), n, listeners)
		}
		t.Logf("kill %d: at story %d, %d connections", k+1, inserted.Load(), n)
	}
	select {
	case err := <-writerErr:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the writer did not finish within 30 s")
	}
	got := pgExpectStories(t, c, nil, map[string]int{"p1": concurrent})
	for i, id := range got["p1"] {
		if want := fmt.Sprintf("s%03d", i+1); id != want {
			t.Fatalf("event %d is story %s, want %s (commit order)", i+1, id, want)
		}
	}

	// Phase 2: the room is idle (nothing left to read). Kill again, with
	// the database closed to new connections, and insert the last 50 from
	// a connection of the test's own: their doorbells ring for nobody, and
	// no later insert rings for them. The catch-up once the listener is
	// back (a wake of every room) must bring them.
	e.waitListening(t, 1)
	pinned := e.pin(t)
	e.setConnectable(t, false)
	t.Cleanup(func() { e.setConnectable(t, true) }) // also when failing below
	if n, listeners := e.terminate(t); listeners != 1 {
		t.Fatalf("kill 4: killed %d connections, %d listeners; want the listener", n, listeners)
	}
	for i := concurrent + 1; i <= total; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		_, err := pinned.ExecContext(ctx, `INSERT INTO stories (id, project_id, title) VALUES ($1, 'p1', 'Story')`, fmt.Sprintf("s%03d", i))
		cancel()
		if err != nil {
			t.Fatalf("story %d: %v", i, err)
		}
	}
	c.expectNothingQueued(t) // nothing can have come yet: nobody heard
	e.setConnectable(t, true)
	got = pgExpectStories(t, c, map[string]int64{"p1": concurrent}, map[string]int{"p1": total - concurrent})
	for i, id := range got["p1"] {
		if want := fmt.Sprintf("s%03d", concurrent+i+1); id != want {
			t.Fatalf("event %d is story %s, want %s", concurrent+i+1, id, want)
		}
	}
	c.expectNothingQueued(t)
	// And the feed is live again.
	e.insertStory(t, "s201", "p1")
	pgExpectStory(t, c, "p1", total+1, "s201")
	t.Logf("listener reconnects logged: %d", pgLogCount(s, "listener reconnected"))
}

// 3. Two instances on one database: stored, typing and user-targeted
// events and revocations reach the clients of both.
func TestPGMultiInstance(t *testing.T) {
	t.Parallel()
	e := newPGEnv(t)
	e.exec(t, `INSERT INTO users (id, name) VALUES ('alice', 'Alice'), ('bob', 'Bob'), ('carol', 'Carol')`)
	e.exec(t, `INSERT INTO projects (id, name, facilitator_id) VALUES ('p1', 'One', 'carol')`)
	e.exec(t, `INSERT INTO project_roles (project_id, user_id, role) VALUES ('p1', 'alice', 'storyteller'), ('p1', 'bob', 'facilitator')`)
	a := e.start(t)
	b := e.start(t)
	svcA, svcB := a.serviceToken(t), b.serviceToken(t)
	tok := func(s *testServer, id, name string) string {
		return s.token(t, auth.Claims{UserID: id, Name: name}, time.Hour)
	}
	aliceA := dialWS(t, a, tok(a, "alice", "Alice"), named("alice@A"))
	aliceB := dialWS(t, b, tok(b, "alice", "Alice"), named("alice@B"))
	bobA := dialWS(t, a, tok(a, "bob", "Bob"), named("bob@A"))
	bobB := dialWS(t, b, tok(b, "bob", "Bob"), named("bob@B"))
	carolB := dialWS(t, b, tok(b, "carol", "Carol"), named("carol@B (not joined)"))
	all := []*wsClient{aliceA, aliceB, bobA, bobB}
	for _, c := range all {
		c.join(t, "p1")
	}
	e.waitListening(t, 2)

	// A trigger event.
	e.insertStory(t, "s1", "p1")
	for _, c := range all {
		pgExpectStory(t, c, "p1", 1, "s1")
	}

	// An API event posted to A: the same seq line.
	if seq := publish(t, a, svcA, "p1", "story_uploaded", map[string]any{"story": map[string]any{"id": "s2", "projectId": "p1"}}); seq != 2 {
		t.Fatalf("published seq %d, want 2", seq)
	}
	for _, c := range all {
		pgExpectStory(t, c, "p1", 2, "s2")
	}

	// Typing from alice on A: bob's connections on both instances, none of
	// alice's.
	aliceA.sendEvent(t, "typing_start", map[string]any{"projectId": "p1", "storyId": "s1"}, -1)
	for _, c := range []*wsClient{bobA, bobB} {
		m := c.expectNext(t, "typing_start")
		d := dataOf(t, m)
		if m["projectId"] != "p1" || d["storyId"] != "s1" || d["userId"] != "alice" || d["userName"] != "Alice" {
			t.Errorf("%s: got %v, want alice's typing_start on s1 of p1", c.name, m)
		}
	}

	// A user-targeted event posted to B: bob's connections on both.
	status, body := b.doJSON(t, "POST", "/api/events", svcB, map[string]any{"userId": "bob", "event": "notice", "data": map[string]any{"text": "hello bob"}})
	if status != http.StatusAccepted {
		t.Fatalf("POST /api/events to user: %d %v", status, body)
	}
	for _, c := range []*wsClient{bobA, bobB} {
		m := c.expectNext(t, "notice")
		if dataOf(t, m)["text"] != "hello bob" {
			t.Errorf("%s: got %v, want the notice", c.name, m)
		}
	}
	// Both instances have handled both messages (bob's clients on each got
	// them): alice got neither, carol nothing at all.
	for _, c := range []*wsClient{aliceA, aliceB, bobA, bobB, carolB} {
		c.expectNothingQueued(t)
	}

	// Revocation: alice's role row goes; she leaves the room on both
	// instances, bob stays.
	e.exec(t, `DELETE FROM project_roles WHERE project_id = 'p1' AND user_id = 'alice'`)
	for _, c := range []*wsClient{aliceA, aliceB} {
		m := c.expectNext(t, "left_project")
		if d := dataOf(t, m); d["projectId"] != "p1" || d["reason"] != "access_revoked" {
			t.Errorf("%s: got %v, want left_project p1 access_revoked", c.name, m)
		}
		c.expectNothingQueued(t) // alive: a ping is answered
	}
	e.insertStory(t, "s3", "p1")
	for _, c := range []*wsClient{bobA, bobB} {
		pgExpectStory(t, c, "p1", 3, "s3")
	}
	// Both rooms fanned s3 out (bob got it on each instance): not to alice.
	for _, c := range []*wsClient{aliceA, aliceB, bobA, bobB} {
		c.expectNothingQueued(t)
	}
	// Nor may she join again.
	for _, c := range []*wsClient{aliceA, aliceB} {
		c.sendEvent(t, "join_project", map[string]any{"projectId": "p1"}, 77)
		if d := dataOf(t, c.expectError(t, "PROJECT_ACCESS_DENIED")); d["projectId"] != "p1" {
			t.Errorf("%s: access denied %v without projectId", c.name, d)
		}
	}
}

// 3b. A revocation that lands while a join is under way (access checked,
// the replay being read from the store, the member not yet in the room)
// must not leave the user in the room: either the join is refused or the
// user gets left_project right after it, and no later event.
func TestPGRevokeDuringJoin(t *testing.T) {
	t.Parallel()
	e := newPGEnv(t)
	e.exec(t, `INSERT INTO users (id, name) VALUES ('obs', 'Observer'), ('sus', 'Suspect')`)
	e.exec(t, `INSERT INTO projects (id, name, facilitator_id) VALUES ('p1', 'One', 'obs')`)
	// A history longer than the room's memory: a join with since 0 reads
	// it from the store, which keeps the join under way for a while.
	const history = 1500
	e.exec(t, `INSERT INTO stories (project_id, title) SELECT 'p1', 'Story ' || g FROM generate_series(1, $1::int) g`, history)
	s := e.start(t)
	obs := dialWS(t, s, s.userToken(t, "obs"), named("observer"))
	obs.join(t, "p1")
	seq := int64(history)
	joined := 0
	for k := range 20 {
		e.exec(t, `INSERT INTO project_roles (project_id, user_id, role) VALUES ('p1', 'sus', 'storyteller')`)
		sus := dialWS(t, s, s.userToken(t, "sus"), named(fmt.Sprintf("suspect %d", k)))
		sus.sendEvent(t, "join_project", map[string]any{"projectId": "p1", "since": 0}, 1)
		e.exec(t, `DELETE FROM project_roles WHERE project_id = 'p1' AND user_id = 'sus'`)
		if m := sus.read(t); m["event"] != "joined_project" {
			if code := errorCode(t, m); code != "PROJECT_ACCESS_DENIED" {
				t.Fatalf("%s: got %v, want joined_project or PROJECT_ACCESS_DENIED", sus.name, m)
			}
			sus.Conn.CloseNow()
			continue
		}
		joined++
		// Joined: the revocation must follow (after the replay).
		deadline := time.Now().Add(waitTimeout)
		for {
			m, ok, _ := sus.next(time.Until(deadline))
			if !ok {
				t.Fatalf("%s: joined while its access was being revoked, and not removed within %v", sus.name, waitTimeout)
			}
			var v struct {
				Event string
				Data  struct{ ProjectID, Reason string }
			}
			if json.Unmarshal(m.data, &v) == nil && v.Event == "left_project" {
				if v.Data.ProjectID != "p1" || v.Data.Reason != "access_revoked" {
					t.Fatalf("%s: got %s, want left_project p1 access_revoked", sus.name, m.data)
				}
				break
			}
		}
		// And nothing of p1 after it: the observer gets the next event, the
		// suspect does not.
		seq++
		e.insertStory(t, fmt.Sprintf("m%d", k), "p1")
		for {
			if m := obs.read(t); m["seq"] == float64(seq) {
				break
			}
		}
		for _, m := range sus.sync(t) {
			if m["projectId"] == "p1" {
				t.Fatalf("%s: got %v after left_project", sus.name, m)
			}
		}
		sus.Conn.CloseNow()
	}
	t.Logf("%d of 20 joins won the race against the revocation", joined)
}

// 4. SIGKILL, events committed while the server is down, restart: a client
// resuming from its last seq gets exactly what it missed, then live events.
func TestPGRestartResume(t *testing.T) {
	t.Parallel()
	e := newPGEnv(t)
	e.exec(t, `INSERT INTO users (id, name) VALUES ('u1', 'User One')`)
	e.exec(t, `INSERT INTO projects (id, name, facilitator_id) VALUES ('p1', 'One', 'u1')`)
	s1 := e.start(t)
	c1 := dialWS(t, s1, s1.userToken(t, "u1"), named("u1 before the kill"))
	c1.join(t, "p1")
	for i := 1; i <= 5; i++ {
		e.insertStory(t, fmt.Sprintf("s%d", i), "p1")
		pgExpectStory(t, c1, "p1", int64(i), fmt.Sprintf("s%d", i))
	}
	last := int64(5)

	s1.signal(t, syscall.SIGKILL)
	select {
	case <-s1.exited:
	case <-time.After(waitTimeout):
		t.Fatal("the server did not die of SIGKILL")
	}
	c1.expectEnd(t)
	for i := 6; i <= 12; i++ { // committed while no server runs
		e.insertStory(t, fmt.Sprintf("s%d", i), "p1")
	}

	s2 := e.start(t)
	c2 := dialWS(t, s2, s2.userToken(t, "u1"), named("u1 after the restart"))
	j := pgJoinSince(t, c2, "p1", last)
	if j["seq"] != float64(12) || j["recovered"] != true || j["role"] != "facilitator" {
		t.Fatalf("joined %v, want seq 12, recovered true, role facilitator", j)
	}
	for i := 6; i <= 12; i++ {
		pgExpectStory(t, c2, "p1", int64(i), fmt.Sprintf("s%d", i))
	}
	c2.expectNothingQueued(t)
	for i := 13; i <= 15; i++ {
		e.insertStory(t, fmt.Sprintf("s%d", i), "p1")
		pgExpectStory(t, c2, "p1", int64(i), fmt.Sprintf("s%d", i))
	}
	c2.expectNothingQueued(t)
}

// 5. Health with a database: ok; still ok, and the feed live, right after
// the server's connections were killed (pg_terminate_backend, as a pooler
// restart or an operator does: no outage); down while the database is
// unreachable; ok again once it is back.
func TestPGHealth(t *testing.T) {
	t.Parallel()
	e := newPGEnv(t)
	e.exec(t, `INSERT INTO users (id, name) VALUES ('u1', 'User One')`)
	e.exec(t, `INSERT INTO projects (id, name, facilitator_id) VALUES ('p1', 'One', 'u1')`)
	s := e.start(t)
	healthy := func() bool {
		code, body := pgHealth(t, s)
		return code == http.StatusOK && body["database"] == "ok" && body["status"] == "healthy"
	}
	if code, body := pgHealth(t, s); code != http.StatusOK || body["database"] != "ok" || body["status"] != "healthy" {
		t.Fatalf("health: %d %v, want 200 with database ok", code, body)
	}
	c := dialWS(t, s, s.userToken(t, "u1"), named("u1"))
	c.join(t, "p1")
	e.waitListening(t, 1)

	seq := int64(0)
	for k := 1; k <= 3; k++ {
		e.waitListening(t, 1)
		// Concurrent checks leave several connections idle in the pool,
		// each of which the kill turns into a dead one.
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if resp, err := http.Get(s.URL + "/api/websocket/health"); err == nil {
					resp.Body.Close()
				}
			}()
		}
		wg.Wait()
		if killed, listeners := e.terminate(t); listeners != 1 || killed < 2 {
			t.Fatalf("kill %d: killed %d connections, %d listeners; want the pool's and the listener", k, killed, listeners)
		}
		for i := 1; i <= 5; i++ {
			if code, body := pgHealth(t, s); code != http.StatusOK {
				t.Errorf("kill %d, check %d: health %d %v, want 200 (killed connections are replaced, not an outage)", k, i, code, body)
			}
		}
		// Green means working: a trigger event reaches the client.
		seq++
		e.insertStory(t, fmt.Sprintf("s%d", seq), "p1")
		pgExpectStory(t, c, "p1", seq, fmt.Sprintf("s%d", seq))
	}

	// While the database refuses connections the health is red.
	e.setConnectable(t, false)
	t.Cleanup(func() { e.setConnectable(t, true) })
	if n, listeners := e.terminate(t); listeners != 1 {
		t.Fatalf("kill 3: killed %d connections, %d listeners; want the listener", n, listeners)
	}
	eventually(t, 15*time.Second, "health 503 with database down", func() bool {
		code, body := pgHealth(t, s)
		return code == http.StatusServiceUnavailable && body["database"] == "down" && body["status"] == "unhealthy"
	})
	e.setConnectable(t, true)
	eventually(t, 20*time.Second, "health ok again once the database takes connections", healthy)
	seq++
	e.insertStory(t, fmt.Sprintf("s%d", seq), "p1")
	pgExpectStory(t, c, "p1", seq, fmt.Sprintf("s%d", seq))
}

// 6. With a database, users must exist; access comes from project_roles or
// from being the project's facilitator or storyteller.
func TestPGUsersAndAccess(t *testing.T) {
	t.Parallel()
	e := newPGEnv(t)
	e.exec(t, `INSERT INTO users (id, name) VALUES ('fac', 'Facilitator'), ('st', 'Storyteller'), ('mem', 'Member'), ('out', 'Outsider')`)
	e.exec(t, `INSERT INTO projects (id, name, facilitator_id, storyteller_id) VALUES ('p1', 'One', 'fac', 'st')`)
	e.exec(t, `INSERT INTO project_roles (project_id, user_id, role) VALUES ('p1', 'mem', 'facilitator')`)
	s := e.start(t)

	t.Run("unknown user: 401 at the handshake", func(t *testing.T) {
		// A valid signature, but no users row (even with a projects claim).
		ghost := s.userToken(t, "ghost", "p1")
		for _, opts := range [][]dialOpt{nil, {withTokenHeader()}} {
			c, resp, err := tryDialWS(t, s, ghost, opts...)
			if err == nil {
				c.Conn.CloseNow()
				t.Fatal("ghost: the handshake succeeded, want 401")
			}
			if resp == nil || resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("ghost: %v (response %v), want HTTP 401", err, resp)
			}
			b, _ := io.ReadAll(resp.Body)
			var body struct {
				Error struct{ Code, Message string }
			}
			if json.Unmarshal(b, &body) != nil || body.Error.Code != "UNAUTHORIZED" || body.Error.Message == "" {
				t.Errorf("ghost: 401 body %q, want {error:{code:UNAUTHORIZED,message}}", b)
			}
		}
		// The same user, once it exists, connects.
		e.exec(t, `INSERT INTO users (id, name) VALUES ('ghost', 'No longer')`)
		dialWS(t, s, ghost, named("ghost, now a user")).expectNothingQueued(t)
	})

	t.Run("service token needs no row", func(t *testing.T) {
		tok := s.token(t, auth.Claims{UserID: "saga-backend", Role: auth.RoleService}, time.Hour)
		c := dialWS(t, s, tok, named("service"))
		c.expectNothingQueued(t)
	})

	t.Run("roles", func(t *testing.T) {
		clients := map[string]*wsClient{}
		for _, tc := range []struct{ user, role string }{
			{"fac", "facilitator"}, {"st", "storyteller"}, {"mem", "facilitator"},
		} {
			c := dialWS(t, s, s.userToken(t, tc.user), named(tc.user))
			if j := c.join(t, "p1"); j["role"] != tc.role || j["projectId"] != "p1" {
				t.Errorf("%s: joined %v, want role %s", tc.user, j, tc.role)
			}
			clients[tc.user] = c
		}
		// The project changes hands: fac loses access (and the room); mem,
		// the new facilitator, and st keep theirs.
		e.exec(t, `UPDATE projects SET facilitator_id = 'mem' WHERE id = 'p1'`)
		if d := dataOf(t, clients["fac"].expectNext(t, "left_project")); d["projectId"] != "p1" || d["reason"] != "access_revoked" {
			t.Errorf("fac: left_project %v, want p1 access_revoked", d)
		}
		e.insertStory(t, "s1", "p1")
		pgExpectStory(t, clients["mem"], "p1", 1, "s1")
		pgExpectStory(t, clients["st"], "p1", 1, "s1")
		clients["fac"].expectNothingQueued(t)
		// In the database, a token's projects claim grants nothing.
		c := dialWS(t, s, s.userToken(t, "out", "p1"), named("out"))
		c.sendEvent(t, "join_project", map[string]any{"projectId": "p1"}, 5)
		m := c.expectError(t, "PROJECT_ACCESS_DENIED")
		if !ackIs(m, 5) || dataOf(t, m)["projectId"] != "p1" {
			t.Errorf("%v: want ack 5 and projectId p1", m)
		}
		// An unknown project is denied just the same.
		c.sendEvent(t, "join_project", map[string]any{"projectId": "nope"}, 6)
		c.expectError(t, "PROJECT_ACCESS_DENIED")
		c.expectNothingQueued(t)
	})
}

// pgLogCount counts lines of the server's log holding s (for messages).
func pgLogCount(s *testServer, substr string) int {
	return strings.Count(s.stderr.String(), substr)
}
