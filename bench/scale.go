package main

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lib/pq"

	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/protocol"
	"github.com/saga-family/sagapush/store"
)

// The scenarios of docs/scaling.md: several instances on one database. What
// an instance pays for notifications of projects it has no member of,
// commit-to-client with 1, 2 and 4 instances, the database's ceiling for
// notifying commits, how much typing the relay carries before domain events
// slow down, and a check of the scale model with 4 instances.

// scaleSizes are the sizes of those scenarios.
type scaleSizes struct {
	instances       int // foreign-notify: instances listening
	stepSeconds     int // each rate step
	foreignRates    foreignRates
	foreignBigRates foreignRates // payloads over the NOTIFY limit
	multi           []int        // multi-instance: instance counts
	listeners       []int        // notify-ceiling: listening connections
	typingRates     []float64    // typing-relay: typing messages/s, rising
	typingEvents    float64      // typing-relay: domain events/s meanwhile
	validate        int          // scale-validate: instances
	validatePer     int          // scale-validate: connections per instance
	validateEvents  float64      // scale-validate: domain events/s
	validateTyping  float64      // scale-validate: typing messages/s
}

var fullScaleSizes = scaleSizes{
	instances: 2, stepSeconds: 10,
	foreignRates:    foreignRates{single: []float64{250, 500, 1000, 2000, 4000}, batched: []float64{4000, 16000, 64000, 128000}},
	foreignBigRates: foreignRates{single: []float64{250, 500, 1000, 2000}, batched: []float64{4000, 16000}},
	multi:           []int{1, 2, 4},
	listeners:       []int{1, 4, 16, 64},
	typingRates:     []float64{0, 500, 1000, 2000, 4000, 8000, 16000},
	typingEvents:    100,
	validate:        4, validatePer: 4000, validateEvents: 100, validateTyping: 200,
}

var smokeScaleSizes = scaleSizes{
	instances: 2, stepSeconds: 1,
	foreignRates:    foreignRates{single: []float64{100}, batched: []float64{1000}},
	foreignBigRates: foreignRates{single: []float64{100}, batched: []float64{500}},
	multi:           []int{1, 2}, listeners: []int{1},
	typingRates: []float64{0, 100}, typingEvents: 50,
	validate: 4, validatePer: 25, validateEvents: 20, validateTyping: 20,
}

// foreignRates are foreign-notify's rising rates, notifications/s: single
// with one event per commit, batched with 1/250 of the rate per commit.
type foreignRates struct{ single, batched []float64 }

// foreignSlots is how many transactions of foreign-notify touch disjoint
// sets of projects: far more than run at once.
const foreignSlots = 64

// sentinelRate is the rate of the probe events whose latency tells whether
// an instance's listener keeps up.
const sentinelRate = 10

// instances starts k servers on one database.
func (b *bench) instances(ctx context.Context, k int, dbURL string) ([]*server, func(), error) {
	var ss []*server
	stop := func() {
		var wg sync.WaitGroup
		for _, s := range ss {
			wg.Add(1)
			go func() { defer wg.Done(); s.stop() }()
		}
		wg.Wait()
	}
	for range k {
		s, err := startServer(ctx, b.bin, "DATABASE_URL="+dbURL)
		if err != nil {
			stop()
			return nil, nil, err
		}
		ss = append(ss, s)
	}
	return ss, stop, nil
}

// openPool opens a pool of n connections that stay open.
func openPool(dbURL string, n int) (*sql.DB, error) {
	db, err := sql.Open("postgres", dbURL)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(n)
	db.SetMaxIdleConns(n)
	return db, nil
}

// spread opens n WebSocket clients over the servers, in contiguous shares:
// connection g is user g in room g % rooms, so with no affinity between a
// family and an instance, every instance has members of most projects.
func (f *fleet) spread(ctx context.Context, servers []*server, n, rooms int) error {
	per := n / len(servers)
	errs := make(chan error, len(servers))
	for j, s := range servers {
		k := per
		if j == len(servers)-1 {
			k = n - j*per
		}
		spec := workerSpec{Addr: s.addr, Secret: s.secret, Transport: "websocket", N: k, Offset: j * per, Rooms: rooms, Users: n, Samples: true}
		go func() { _, err := f.spawnSpec(ctx, spec); errs <- err }()
	}
	var first error
	for range servers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func foreignNotify(ctx context.Context, b *bench) error {
	return b.foreign(ctx, "foreign-notify", 200, b.sc.scale.foreignRates)
}

// foreignNotifyBig: payloads over the NOTIFY limit, so each notification is
// a pointer (e:<project>) and an instance with a room would read the row.
func foreignNotifyBig(ctx context.Context, b *bench) error {
	return b.foreign(ctx, "foreign-notify-big", 8000, b.sc.scale.foreignBigRates)
}

// foreign measures what an instance pays for events of projects it has no
// member of: the database emits events (push_emit, as the triggers do; one
// per commit, then several) into projects nobody joined,
// at rising rates, while each instance's one client, in another project,
// gets sentinelRate probe events a second. Server CPU per notification is
// the instances' CPU above their idle baseline, divided by what they heard;
// a listener falls behind when the probes' commit-to-client p99 passes 1 s
// or some do not arrive.
func (b *bench) foreign(ctx context.Context, scen string, pad int, rates foreignRates) error {
	sz := b.sc.scale
	dbURL, drop, err := b.benchDB(ctx)
	if err != nil {
		return err
	}
	defer drop()
	servers, stop, err := b.instances(ctx, sz.instances, dbURL)
	if err != nil {
		return err
	}
	defer stop()
	db, err := openPool(dbURL, b.sc.writer+4)
	if err != nil {
		return err
	}
	defer db.Close()
	perTxMax := 1
	for _, r := range rates.batched {
		perTxMax = max(perTxMax, int(r/250))
	}
	foreign := foreignSlots * perTxMax
	if err := seedFamilies(ctx, db, "room-", sz.instances, 1); err != nil {
		return err
	}
	if err := seedFamilies(ctx, db, "foreign-", foreign, foreign); err != nil {
		return err
	}
	var f fleet
	defer f.stop()
	for i, s := range servers {
		if _, err := f.spawnSpec(ctx, workerSpec{Addr: s.addr, Secret: s.secret, Transport: "websocket", N: 1, Offset: i, Rooms: 1, Users: sz.instances, Samples: true}); err != nil {
			return err
		}
	}
	step := time.Duration(sz.stepSeconds) * time.Second
	idle0, t0 := cpuEach(servers), time.Now()
	time.Sleep(step)
	idle := perSecond(cpuEach(servers), idle0, time.Since(t0))

	commits := make([]int64, (len(rates.single)+len(rates.batched))*sentinelRate*sz.stepSeconds+1)
	probe := storyInserter(ctx, db, commits)
	next := 1
	// One event per commit first, Saga's shape, up to what the database
	// commits; then many per commit, to find what a listener can take.
	for _, batched := range []bool{false, true} {
		series, best := rates.single, 0.0
		name := "one per commit"
		if batched {
			series, name = rates.batched, "batched"
		}
		for _, rate := range series {
			if _, err := f.all("reset"); err != nil {
				return err
			}
			perTx := 1
			if batched {
				perTx = max(1, int(rate/250))
			}
			nTx := int(rate) * sz.stepSeconds / perTx
			var heard atomic.Int64
			usage := watchQueue(ctx, db)
			if os.Getenv("BENCH_PROFILE_FOREIGN") == fmt.Sprintf("%.0fx%d", rate, perTx) {
				go servers[0].saveProfile(fmt.Sprintf("profile?seconds=%d", sz.stepSeconds-1), fmt.Sprintf("cpu-%s-%.0fx%d.pprof", scen, rate, perTx))
			}
			cpu0, start := cpuEach(servers), time.Now()
			load := make(chan error, 1)
			go func() {
				load <- paced(ctx, b.sc.writer, 0, nTx, rate/float64(perTx), func(i int) error {
					// Transactions running at once touch disjoint projects
					// (push_emit locks each project's seq row to commit).
					_, err := db.ExecContext(ctx, `SELECT count(push_emit('foreign-' || ($1::int + g), 'story_processed',
						jsonb_build_object('storyId', 's' || g, 'status', 'ready', 'pad', repeat('x', $3::int)))) FROM generate_series(0, $2::int - 1) AS g`,
						(i%foreignSlots)*perTx, perTx, pad)
					if err == nil {
						heard.Add(int64(perTx))
					}
					return err
				})
			}()
			nProbe := sentinelRate * sz.stepSeconds
			perr := paced(ctx, 1, next, nProbe, sentinelRate, func(i int) error { return probe(i, "room-0") })
			lerr := <-load
			elapsed := time.Since(start)
			cpu := cpuEach(servers)
			queueMax := usage()
			if err := cmp.Or(perr, lerr); err != nil {
				return err
			}
			next += nProbe
			want := int64(nProbe * len(servers))
			t, c, err := f.arrivals(want, commits)
			if err != nil {
				return err
			}
			n := heard.Load()
			achieved := float64(n) / elapsed.Seconds()
			var per []string
			var total float64
			for i := range servers {
				busy := (cpu[i] - cpu0[i]).Seconds() - idle[i]*elapsed.Seconds()
				total += busy
				per = append(per, fmt.Sprintf("%.2f µs (%.0f%% of a core)", 1e6*busy/float64(n), 100*(cpu[i]-cpu0[i]).Seconds()/elapsed.Seconds()))
			}
			behind := t.Events < want || percentile(c, 0.99) > 1000
			b.add(scen, fmt.Sprintf("%.0f/s, %d per commit: server CPU per notification", rate, perTx), 1e6*total/float64(len(servers))/float64(n), "µs",
				fmt.Sprintf("achieved %.0f notifications/s (payload %d bytes of padding); each instance: %s; probes' commit-to-client p50 %.1f ms p99 %.1f ms, %d/%d arrived; notification queue max %.4f%%; idle CPU subtracted",
					achieved, pad, strings.Join(per, ", "), percentile(c, 0.5), percentile(c, 0.99), t.Events, want, 100*queueMax))
			if behind {
				b.add(scen, name+": listeners fell behind at", achieved, "notifications/s", fmt.Sprintf("probes p99 %.1f ms, %d/%d arrived", percentile(c, 0.99), t.Events, want))
				break
			}
			best = achieved
			if achieved < 0.8*rate {
				b.add(scen, name+": database limited at", achieved, "notifications/s", fmt.Sprintf("asked %.0f/s; the listeners kept up", rate))
				break
			}
		}
		b.add(scen, name+": highest rate every listener kept up with", best, "notifications/s", fmt.Sprintf("%d instances, none with a member of the notified projects", len(servers)))
	}
	return nil
}

// arrivals waits, at most 30 s, for want events in all and returns the
// workers' totals with their histogram of arrival minus commit.
func (f *fleet) arrivals(want int64, commits []int64) (workerReport, []int64, error) {
	t, err := f.waitEvents(want, false, 30*time.Second)
	if err != nil {
		return t, nil, err
	}
	c, err := f.commitHist(commits)
	return t, c, err
}

// cpuEach reads each server's CPU time.
func cpuEach(servers []*server) []time.Duration {
	out := make([]time.Duration, len(servers))
	for i, s := range servers {
		out[i] = procCPU(s.cmd.Process.Pid)
	}
	return out
}

// perSecond turns CPU times between two readings into seconds of CPU per
// second.
func perSecond(now, then []time.Duration, wall time.Duration) []float64 {
	out := make([]float64, len(now))
	for i := range now {
		out[i] = (now[i] - then[i]).Seconds() / wall.Seconds()
	}
	return out
}

// watchQueue samples pg_notification_queue_usage() (the share of the
// notification queue that some listener has not read yet) until the
// returned function is called, which returns the highest sample.
func watchQueue(ctx context.Context, db *sql.DB) func() float64 {
	done := make(chan struct{})
	result := make(chan float64, 1)
	go func() {
		var top float64
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			var u float64
			if db.QueryRowContext(ctx, `SELECT pg_notification_queue_usage()`).Scan(&u) == nil {
				top = max(top, u)
			}
			select {
			case <-done:
				result <- top
				return
			case <-t.C:
			}
		}
	}()
	return func() float64 { close(done); return <-result }
}

// cluster is k instances on a fresh database seeded with n users in
// families of 5 (room-0 ... room-(n/5-1)), and a pool for the bench's
// writers.
type cluster struct {
	servers []*server
	db      *sql.DB
	dbURL   string
	close   func()
}

func (b *bench) families(ctx context.Context, k, n int) (*cluster, error) {
	dbURL, drop, err := b.benchDB(ctx)
	if err != nil {
		return nil, err
	}
	servers, stop, err := b.instances(ctx, k, dbURL)
	if err != nil {
		drop()
		return nil, err
	}
	c := &cluster{servers: servers, dbURL: dbURL, close: func() { stop(); drop() }}
	if c.db, err = openPool(dbURL, b.sc.writer+2); err == nil {
		err = seedFamilies(ctx, c.db, "room-", n, n/5)
	}
	if err != nil {
		c.close()
		return nil, err
	}
	c.close = func() { c.db.Close(); stop(); drop() }
	return c, nil
}

// multiInstance: commit-to-client at the triggers scenario's rate with its
// clients, in families of 5, spread over 1, 2 and 4 instances.
func multiInstance(ctx context.Context, b *bench) error {
	for _, k := range b.sc.scale.multi {
		if err := b.multiInstanceRun(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) multiInstanceRun(ctx context.Context, k int) error {
	n := b.sc.latConns
	rooms := n / 5
	c, err := b.families(ctx, k, n)
	if err != nil {
		return err
	}
	defer c.close()
	servers, db := c.servers, c.db
	var f fleet
	defer f.stop()
	if err := f.spread(ctx, servers, n, rooms); err != nil {
		return err
	}
	commits := make([]int64, b.sc.latRate*b.sc.latSeconds+1)
	scen := fmt.Sprintf("multi-instance-%d-%d/s", k, b.sc.latRate)
	return b.triggerLatency(ctx, servers, &f, rooms, storyInserter(ctx, db, commits), commits, scen)
}

// notifyCeiling drives Postgres directly, with the real schema and
// triggers: writers insert stories, one per commit, as fast as they can for
// a step, while L connections LISTEN and read every notification. The
// same writers then do the same inserts with push_emit's pg_notify taken
// out, so the ratio is what NOTIFY costs; and once more with NOTIFY and
// synchronous_commit off, which shows whether the commits wait on each
// other's WAL flush (the lock NOTIFY holds through its commit).
func notifyCeiling(ctx context.Context, b *bench) error {
	sz := b.sc.scale
	dbURL, drop, err := b.benchDB(ctx)
	if err != nil {
		return err
	}
	defer drop()
	if err := store.Migrate(ctx, dbURL); err != nil {
		return err
	}
	db, err := openPool(dbURL, b.sc.writer+2)
	if err != nil {
		return err
	}
	defer db.Close()
	asyncURL := dbURL + "&synchronous_commit=off"
	if !strings.Contains(dbURL, "?") {
		asyncURL = dbURL + "?synchronous_commit=off"
	}
	async, err := openPool(asyncURL, b.sc.writer)
	if err != nil {
		return err
	}
	defer async.Close()
	const projects = 1000
	if err := seedFamilies(ctx, db, "room-", projects, projects); err != nil {
		return err
	}
	var def string
	if err := db.QueryRowContext(ctx, `SELECT pg_get_functiondef('push_emit(text,text,jsonb)'::regprocedure)`).Scan(&def); err != nil {
		return err
	}
	const notifyCall = "PERFORM pg_notify('saga_push', msg);"
	if !strings.Contains(def, notifyCall) {
		return fmt.Errorf("notify-ceiling: push_emit has no %q to take out", notifyCall)
	}
	silent := strings.Replace(def, notifyCall, "NULL; -- bench: no NOTIFY", 1)
	var syncCommit string
	db.QueryRowContext(ctx, `SHOW synchronous_commit`).Scan(&syncCommit)
	step := time.Duration(sz.stepSeconds) * time.Second
	for _, l := range sz.listeners {
		ls, err := listen(dbURL, l)
		if err != nil {
			return err
		}
		modes := []struct {
			name, def string
			pool      *sql.DB
		}{
			{"with NOTIFY", def, db},
			{"without NOTIFY", silent, db},
			{"with NOTIFY, synchronous_commit off", def, async},
		}
		var rates [3]float64
		for m, mode := range modes {
			if _, err := db.ExecContext(ctx, mode.def); err != nil {
				ls.close()
				return err
			}
			heard0 := ls.total()
			if err := warm(ctx, mode.pool, b.sc.writer); err != nil {
				ls.close()
				return err
			}
			pids, err := backendPids(ctx, db)
			if err != nil {
				ls.close()
				return err
			}
			pg0, me0 := cpuOf(pids), selfCPU()
			n, wall, err := flatOut(ctx, b.sc.writer, step, func() error {
				_, err := mode.pool.ExecContext(ctx, `INSERT INTO stories (project_id, title, audio_url) VALUES ($1, 'ceiling', '')`,
					fmt.Sprintf("room-%d", rand.IntN(projects)))
				return err
			})
			if err != nil {
				ls.close()
				return err
			}
			pg1, me1 := cpuOf(pids), selfCPU()
			note := fmt.Sprintf("%d writers, one story per commit, %v; Postgres backends %.0f µs CPU per commit; bench process (writers and listeners) %.0f%% of a core; synchronous_commit %s",
				b.sc.writer, step, 1e6*(pg1-pg0).Seconds()/float64(n), 100*(me1-me0).Seconds()/wall.Seconds(), map[bool]string{true: "off", false: syncCommit}[m == 2])
			if m != 1 {
				// Every listener must hear every commit.
				drained := time.Now()
				want := heard0 + int64(l)*n
				for ls.total() < want && time.Since(drained) < 30*time.Second {
					time.Sleep(10 * time.Millisecond)
				}
				note += fmt.Sprintf("; listeners heard %d of %d, the last %.0f ms after the writers stopped", ls.total()-heard0, int64(l)*n, float64(time.Since(drained).Milliseconds()))
			}
			rates[m] = float64(n) / wall.Seconds()
			b.add("notify-ceiling", fmt.Sprintf("%d listeners: commits/s %s", l, mode.name), rates[m], "commits/s", note)
		}
		ls.close()
		b.add("notify-ceiling", fmt.Sprintf("%d listeners: with / without NOTIFY", l), rates[0]/rates[1], "ratio", "")
	}
	_, err = db.ExecContext(ctx, def)
	return err
}

// flatOut runs do on writers goroutines as fast as it returns, for d, and
// counts the calls that succeeded.
func flatOut(ctx context.Context, writers int, d time.Duration, do func() error) (int64, time.Duration, error) {
	var count atomic.Int64
	var mu sync.Mutex
	var failed error
	start := time.Now()
	stop := start.Add(d)
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) && ctx.Err() == nil {
				if err := do(); err != nil {
					mu.Lock()
					failed = cmp.Or(failed, err)
					mu.Unlock()
					return
				}
				count.Add(1)
			}
		}()
	}
	wg.Wait()
	return count.Load(), time.Since(start), cmp.Or(failed, ctx.Err())
}

// listeners are L connections that LISTEN on the service's channel and read
// every notification, as L instances would.
type listeners struct {
	ls    []*pq.Listener
	heard []atomic.Int64
	wg    sync.WaitGroup
}

func listen(dbURL string, n int) (*listeners, error) {
	s := &listeners{heard: make([]atomic.Int64, n)}
	for i := range n {
		l := pq.NewListener(dbURL, 100*time.Millisecond, time.Second, nil)
		if err := l.Listen("saga_push"); err != nil {
			l.Close()
			s.close()
			return nil, err
		}
		s.ls = append(s.ls, l)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for n := range l.Notify {
				if n != nil {
					s.heard[i].Add(1)
				}
			}
		}()
	}
	return s, nil
}

func (s *listeners) total() int64 {
	var t int64
	for i := range s.heard {
		t += s.heard[i].Load()
	}
	return t
}

func (s *listeners) close() {
	for _, l := range s.ls {
		l.Close()
	}
	s.wg.Wait()
}

// warm opens n connections of the pool at once, so that every writer's
// backend exists before its CPU is read.
func warm(ctx context.Context, db *sql.DB, n int) error {
	var conns []*sql.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := db.Conn(ctx)
		if err != nil {
			return err
		}
		conns = append(conns, c)
	}
	return nil
}

// backendPids lists the Postgres backends connected to this database.
func backendPids(ctx context.Context, db *sql.DB) ([]int, error) {
	rows, err := db.QueryContext(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = current_database()`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var pids []int
	for rows.Next() {
		var p int
		if err := rows.Scan(&p); err != nil {
			return nil, err
		}
		pids = append(pids, p)
	}
	return pids, rows.Err()
}

func cpuOf(pids []int) time.Duration {
	var d time.Duration
	for _, p := range pids {
		d += procCPU(p)
	}
	return d
}

// typingPayload is the notification an instance sends for one typing
// message (store.Postgres.PublishEphemeral): the hub's Ephemeral as JSON
// after "x:", with the frame the members receive.
func typingPayload(room, user string) string {
	frame := hub.Reply(protocol.TypingStart, room, protocol.TypingRelay{StoryID: "story-1", UserID: user}, nil)
	js, _ := json.Marshal(hub.Ephemeral{ProjectID: room, Except: user, Name: protocol.TypingStart, JSON: frame.JSON})
	return "x:" + string(js)
}

// typingRelay: 2 instances, the triggers scenario's clients in families of
// 5 spread over both, domain events at a steady rate, and typing messages
// at rising rates, sent through the database as instances send them (one
// pg_notify per message, from a pool of 8 connections like an instance's).
// It reports domain commit-to-client at each typing rate.
func typingRelay(ctx context.Context, b *bench) error {
	sz := b.sc.scale
	n := b.sc.latConns
	rooms := n / 5
	c, err := b.families(ctx, 2, n)
	if err != nil {
		return err
	}
	defer c.close()
	servers, db := c.servers, c.db
	pub, err := openPool(c.dbURL, 8)
	if err != nil {
		return err
	}
	defer pub.Close()
	var f fleet
	defer f.stop()
	if err := f.spread(ctx, servers, n, rooms); err != nil {
		return err
	}
	payloads := make([]string, n)
	for u := range payloads {
		payloads[u] = typingPayload(fmt.Sprintf("room-%d", u%rooms), fmt.Sprintf("user-%d", u))
	}
	perStep := int(sz.typingEvents) * sz.stepSeconds
	commits := make([]int64, len(sz.typingRates)*perStep+1)
	insert := storyInserter(ctx, db, commits)
	next := 1
	base, best := -1.0, 0.0
	for _, rate := range sz.typingRates {
		if _, err := f.all("reset"); err != nil {
			return err
		}
		var sent atomic.Int64
		typed := make(chan error, 1)
		cpu0, gcpu0, start := serversCPU(servers), f.cpu(), time.Now()
		var typingWall time.Duration
		go func() {
			if rate == 0 {
				typed <- nil
				return
			}
			err := paced(ctx, 8, 0, int(rate)*sz.stepSeconds, rate, func(i int) error {
				_, err := pub.ExecContext(ctx, `SELECT pg_notify('saga_push', $1)`, payloads[i%len(payloads)])
				if err == nil {
					sent.Add(1)
				}
				return err
			})
			typingWall = time.Since(start)
			typed <- err
		}()
		err := paced(ctx, b.sc.writer, next, perStep, sz.typingEvents, func(i int) error { return insert(i, fmt.Sprintf("room-%d", i%rooms)) })
		if err := cmp.Or(<-typed, err); err != nil {
			return err
		}
		wall := time.Since(start)
		next += perStep
		want := int64(perStep) * 5
		t, c, err := f.arrivals(want, commits)
		if err != nil {
			return err
		}
		achieved := 0.0
		if rate > 0 {
			achieved = float64(sent.Load()) / typingWall.Seconds()
		}
		p50, p99 := percentile(c, 0.5), percentile(c, 0.99)
		b.add("typing-relay", fmt.Sprintf("typing %.0f/s: domain commit-to-client p50", rate), p50, "ms",
			fmt.Sprintf("p99 %.1f ms; typing achieved %.0f/s; %.0f domain events/s to %d clients in %d families on 2 instances, %d/%d delivered; %s",
				p99, achieved, sz.typingEvents, n, rooms, t.Events, want, cpuNote(serversCPU(servers)-cpu0, f.cpu()-gcpu0, wall)))
		if t.Events < want || t.Gaps+t.Dups > 0 {
			return fmt.Errorf("typing-relay: delivered %d of %d, gaps %d dups %d", t.Events, want, t.Gaps, t.Dups)
		}
		if base < 0 {
			base = p99
			continue
		}
		// "Moved": the p99 more than doubled and grew by over 5 ms.
		if (p99 > 2*base && p99 > base+5) || achieved < 0.8*rate {
			b.add("typing-relay", "domain p99 moved at", achieved, "typing/s", fmt.Sprintf("p99 %.1f ms against %.1f ms without typing; asked %.0f/s", p99, base, rate))
			break
		}
		best = achieved
	}
	b.add("typing-relay", "highest typing rate with domain p99 unmoved", best, "typing/s", "across 2 instances, one pg_notify per message")
	return nil
}

// scaleValidate checks the scale model where this host can: 4 instances
// with validatePer connections each, families of 5 spread over them, domain
// events and typing at fixed rates. It reports each instance's memory per
// connection, the database connections the instances hold, the
// notifications each instance hears per second, its CPU, and
// commit-to-client.
func scaleValidate(ctx context.Context, b *bench) error {
	sz := b.sc.scale
	k := sz.validate
	n := k * sz.validatePer
	rooms := n / 5
	c, err := b.families(ctx, k, n)
	if err != nil {
		return err
	}
	defer c.close()
	servers, db := c.servers, c.db
	before := make([]int64, k)
	for i, s := range servers {
		if before[i], err = s.collectedRSS(fmt.Sprintf("scale-before-%d", i)); err != nil {
			return err
		}
	}
	var f fleet
	defer f.stop()
	start := time.Now()
	if err := f.spread(ctx, servers, n, rooms); err != nil {
		return err
	}
	joined := time.Since(start)
	scen := fmt.Sprintf("scale-validate-%dx%d", k, sz.validatePer)
	b.add(scen, "connections", float64(n), "conns", fmt.Sprintf("%d instances, %d families of 5, no affinity; opened and joined in %.1f s", k, rooms, joined.Seconds()))
	var rss []string
	var perConn float64
	for i, s := range servers {
		after, err := s.collectedRSS(fmt.Sprintf("scale-%d", i))
		if err != nil {
			return err
		}
		rss = append(rss, fmt.Sprintf("%.0f MiB", float64(after)/(1<<20)))
		perConn += float64(after-before[i]) / float64(sz.validatePer) / 1024 / float64(k)
	}
	b.add(scen, "RSS per idle WebSocket, mean of the instances", perConn, "KiB", "RSS after forced collections: "+strings.Join(rss, ", "))
	var conns, listening int
	db.QueryRowContext(ctx, `SELECT count(*), count(*) FILTER (WHERE query ILIKE 'LISTEN%') FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'sagapush%'`).Scan(&conns, &listening)
	b.add(scen, "database connections held by the instances", float64(conns), "conns", fmt.Sprintf("%d listening; each instance's pool opens up to 16 under load", listening))

	payloads := make([]string, n)
	for u := range payloads {
		payloads[u] = typingPayload(fmt.Sprintf("room-%d", u%rooms), fmt.Sprintf("user-%d", u))
	}
	if _, err := f.all("reset"); err != nil {
		return err
	}
	nEv := int(sz.validateEvents) * sz.stepSeconds
	commits := make([]int64, nEv+1)
	insert := storyInserter(ctx, db, commits)
	cpu0, t0 := cpuEach(servers), time.Now()
	typed := make(chan error, 1)
	go func() {
		typed <- paced(ctx, 4, 0, int(sz.validateTyping)*sz.stepSeconds, sz.validateTyping, func(i int) error {
			_, err := db.ExecContext(ctx, `SELECT pg_notify('saga_push', $1)`, payloads[rand.IntN(n)])
			return err
		})
	}()
	err = paced(ctx, b.sc.writer, 1, nEv, sz.validateEvents, func(i int) error { return insert(i, fmt.Sprintf("room-%d", rand.IntN(rooms))) })
	if err := cmp.Or(<-typed, err); err != nil {
		return err
	}
	wall := time.Since(t0)
	cpu := perSecond(cpuEach(servers), cpu0, wall)
	want := int64(nEv) * 5
	t, hist, err := f.arrivals(want, commits)
	if err != nil {
		return err
	}
	var each []string
	for _, v := range cpu {
		each = append(each, fmt.Sprintf("%.1f%%", 100*v))
	}
	heard := (float64(nEv) + sz.validateTyping*float64(sz.stepSeconds)) / wall.Seconds()
	b.add(scen, "notifications each instance hears", heard, "notifications/s", fmt.Sprintf("%.0f domain events/s + %.0f typing/s, every instance hears all", sz.validateEvents, sz.validateTyping))
	b.add(scen, "server CPU per instance", 100*mean(cpu), "% of a core", "each: "+strings.Join(each, ", "))
	b.add(scen, "commit-to-client p50", percentile(hist, 0.5), "ms", fmt.Sprintf("p99 %.1f ms, max %.1f ms; %d/%d delivered", percentile(hist, 0.99), histMax(hist), t.Events, want))
	if t.Events < want || t.Gaps+t.Dups > 0 {
		return fmt.Errorf("scale-validate: delivered %d of %d, gaps %d dups %d", t.Events, want, t.Gaps, t.Dups)
	}
	return nil
}

func mean(v []float64) float64 {
	var s float64
	for _, x := range v {
		s += x
	}
	return s / float64(max(len(v), 1))
}
