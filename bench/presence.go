package main

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"sync/atomic"
	"time"
)

// presenceSets is what a worker's connections know of who is online in
// their project, built as a client builds it: joined_project's online list,
// then user_online and user_offline applied as state. right counts the
// connections whose set has exactly want users.
type presenceSets struct {
	want  int
	sets  []map[string]struct{} // by the worker's connection index
	ok    []bool
	right atomic.Int64
}

func newPresenceSets(n, want int) *presenceSets {
	return &presenceSets{want: want, sets: make([]map[string]struct{}, n), ok: make([]bool, n)}
}

// message applies a joined_project, user_online or user_offline message
// to connection i's set and reports whether msg was one. Each connection's
// messages come from one reader at a time.
func (p *presenceSets) message(i int, msg []byte) bool {
	switch {
	case bytes.Contains(msg, []byte(`"event":"joined_project"`)):
		set := make(map[string]struct{}, p.want)
		rest := msg
		for {
			k := bytes.Index(rest, []byte(`"userId":"`))
			if k < 0 {
				break
			}
			rest = rest[k+len(`"userId":"`):]
			if e := bytes.IndexByte(rest, '"'); e >= 0 {
				set[string(rest[:e])] = struct{}{}
			}
		}
		p.sets[i] = set
	case bytes.HasPrefix(msg, []byte(`{"event":"user_online"`)):
		if p.sets[i] != nil {
			p.sets[i][userIDOf(msg)] = struct{}{}
		}
	case bytes.HasPrefix(msg, []byte(`{"event":"user_offline"`)):
		if p.sets[i] != nil {
			delete(p.sets[i], userIDOf(msg))
		}
	default:
		return false
	}
	if ok := len(p.sets[i]) == p.want; ok != p.ok[i] {
		p.ok[i] = ok
		if ok {
			p.right.Add(1)
		} else {
			p.right.Add(-1)
		}
	}
	return true
}

func userIDOf(msg []byte) string {
	k := bytes.Index(msg, []byte(`"userId":"`))
	if k < 0 {
		return ""
	}
	rest := msg[k+len(`"userId":"`):]
	e := bytes.IndexByte(rest, '"')
	if e < 0 {
		return ""
	}
	return string(rest[:e])
}

// presenceScenario is Saga's family shape across two instances on one
// database: 10,000 connections, one per user, in 2,000 projects of 5, half
// on each instance (WebSocket on one, SSE on the other). It measures how
// long until every connection's list holds its project's five users, the
// join rate, the presence writes per second once steady, and RSS per
// connection with presence on.
func presenceScenario(ctx context.Context, b *bench) error {
	n, rooms := b.sc.presenceConns, b.sc.presenceConns/5
	dbURL, drop, err := b.benchDB(ctx)
	if err != nil {
		return err
	}
	defer drop()
	var servers [2]*server
	for i := range servers {
		if servers[i], err = startServer(ctx, b.bin, "DATABASE_URL="+dbURL); err != nil {
			return err
		}
		defer servers[i].stop()
	}
	db, err := sql.Open("postgres", dbURL)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := seedFamilies(ctx, db, "room-", n, rooms); err != nil {
		return err
	}
	var before [2]int64
	for i, s := range servers {
		if before[i], err = s.collectedRSS(fmt.Sprintf("presence-before-%d", i)); err != nil {
			return err
		}
	}
	var f fleet
	defer f.stop()
	half := n / 2
	start := time.Now()
	opened := make(chan error, 2)
	for i, tr := range []string{"websocket", "sse"} {
		spec := workerSpec{Addr: servers[i].addr, Secret: servers[i].secret, Transport: tr, N: half, Offset: i * half, Rooms: rooms, Users: n, Presence: true}
		go func() { _, err := f.spawnSpec(ctx, spec); opened <- err }()
	}
	for range 2 {
		if err := <-opened; err != nil {
			return err
		}
	}
	joined := time.Since(start)
	var right int64
	deadline := time.Now().Add(2 * time.Minute)
	for {
		reps, err := f.all("report")
		if err != nil {
			return err
		}
		t := sum(reps)
		if right = t.PresenceRight; right == int64(n) {
			break
		}
		if t.Failed > 0 || t.Closed > 0 || time.Now().After(deadline) {
			return fmt.Errorf("presence: %d of %d connections right after %v (%d failed, %d closed: %s)", right, n, time.Since(start).Round(time.Millisecond), t.Failed, t.Closed, t.FirstErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	settled := time.Since(start)
	b.add("presence", "connections", float64(n), "conns", fmt.Sprintf("%d projects of 5 users, 1 connection each; WebSocket on instance A, SSE on B", rooms))
	b.add("presence", "join rate", float64(n)/joined.Seconds(), "joins/s", fmt.Sprintf("all %d opened and joined in %.1fs, both instances at once", n, joined.Seconds()))
	b.add("presence", "time until every list is right", settled.Seconds(), "s", "from the first connection: every connection knows its project's 5 users")

	// Steady: nobody comes or goes; only lease renewals are written.
	const steady = 20 * time.Second
	var w0, w1, r0, r1 float64
	for _, s := range servers {
		w, _ := s.metric("sagapush_presence_db_writes_total")
		r, _ := s.metric("sagapush_presence_db_rows_total")
		w0, r0 = w0+w, r0+r
	}
	time.Sleep(steady)
	for _, s := range servers {
		w, _ := s.metric("sagapush_presence_db_writes_total")
		r, _ := s.metric("sagapush_presence_db_rows_total")
		w1, r1 = w1+w, r1+r
	}
	b.add("presence", "presence writes while steady", (w1-w0)/steady.Seconds(), "writes/s",
		fmt.Sprintf("both instances over %v: lease renewals, each one statement; presence rows written meanwhile: %.0f (%.0f while joining)", steady, r1-r0, r0))

	for i, s := range servers {
		after, err := s.collectedRSS(fmt.Sprintf("presence-%d", i))
		if err != nil {
			return err
		}
		tr := []string{"WebSocket", "SSE"}[i]
		heap, _ := s.metric("go_memstats_heap_inuse_bytes")
		stack, _ := s.metric("go_memstats_stack_inuse_bytes")
		b.add("presence", "RSS per idle "+tr+" with presence", float64(after-before[i])/float64(half)/1024, "KiB",
			fmt.Sprintf("instance %c: RSS %.1f -> %.1f MiB, %d connections; heap in use %.1f KiB, stacks %.1f KiB per connection (whole process)",
				'A'+i, float64(before[i])/(1<<20), float64(after)/(1<<20), half, heap/float64(half)/1024, stack/float64(half)/1024))
	}
	return nil
}

// seedFamilies writes users user-0 ... user-(users-1) and projects
// <prefix>0 ... <prefix>(rooms-1), user u in project u % rooms, as the
// workers assign them.
func seedFamilies(ctx context.Context, db *sql.DB, prefix string, users, rooms int) error {
	for _, q := range []string{
		`INSERT INTO users (id, name) SELECT 'user-' || u, 'User ' || u FROM generate_series(0, $1::int - 1) AS u WHERE $2::int > 0 AND $3 <> '' ON CONFLICT DO NOTHING`,
		`INSERT INTO projects (id, name) SELECT $3 || r, 'Family ' || r FROM generate_series(0, $2::int - 1) AS r WHERE $1::int > 0`,
		`INSERT INTO project_roles (project_id, user_id, role) SELECT $3 || (u % $2::int), 'user-' || u, 'storyteller' FROM generate_series(0, $1::int - 1) AS u`,
	} {
		if _, err := db.ExecContext(ctx, q, users, rooms, prefix); err != nil {
			return err
		}
	}
	return nil
}

// collectedRSS is the server's RSS after two forced collections, as an idle
// server gets from the runtime every 2 minutes (idleMemory).
func (s *server) collectedRSS(name string) (int64, error) {
	for range 2 {
		s.saveProfile("heap?gc=1", "heap-"+name+".pprof")
		time.Sleep(time.Second)
	}
	return s.rss()
}
