package main

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/lib/pq"

	"github.com/saga-family/sagapush/auth"
)

func (s *server) serviceToken() string {
	t, err := auth.Mint([]byte(s.secret), auth.Claims{UserID: "bench-backend", Role: "service"}, 2*time.Hour)
	if err != nil {
		panic(err)
	}
	return t
}

// scale holds the sizes of a run; -smoke shrinks them to prove the harness.
type scale struct {
	idleWS, idleSSE       int
	capWS, capSSE         int
	fanout                int
	fanoutEvents          int
	tput                  []int // room sizes
	tputRates             []float64
	tputSeconds           int
	latConns, latRate     int
	latSeconds            int
	churnRounds, churnN   int
	ingestSeconds, writer int
	presenceConns         int // a multiple of 10: projects of 5, two instances
	scale                 scaleSizes
}

var fullScale = scale{
	idleWS: 10000, idleSSE: 10000,
	capWS: 12000, capSSE: 7000,
	fanout: 15000, fanoutEvents: 20,
	tput: []int{10000, 15000}, tputRates: []float64{10, 20, 40, 80, 120, 160, 240}, tputSeconds: 10,
	latConns: 1000, latRate: 500, latSeconds: 10,
	churnRounds: 10, churnN: 5000,
	ingestSeconds: 10, writer: 8,
	presenceConns: 10000,
	scale:         fullScaleSizes,
}

var smokeScale = scale{
	idleWS: 200, idleSSE: 100,
	capWS: 200, capSSE: 100,
	fanout: 200, fanoutEvents: 5,
	tput: []int{200}, tputRates: []float64{20}, tputSeconds: 2,
	latConns: 50, latRate: 50, latSeconds: 2,
	churnRounds: 2, churnN: 100,
	ingestSeconds: 2, writer: 8,
	presenceConns: 200,
	scale:         smokeScaleSizes,
}

type scenario struct {
	name string
	run  func(ctx context.Context, b *bench) error
}

type bench struct {
	bin   string
	sc    scale
	rep   *report
	admin string // Postgres admin URL for the database scenarios
}

func (b *bench) add(scen, metric string, v float64, unit, note string) {
	b.rep.Results = append(b.rep.Results, result{scen, metric, v, unit, note})
	fmt.Fprintf(os.Stderr, "bench: %-22s %-40s %12.2f %s %s\n", scen, metric, v, unit, note)
}

// cpuNote formats server and generator CPU over a wall time.
func cpuNote(server, gen, wall time.Duration) string {
	return fmt.Sprintf("server CPU %.0f%%, generators %.0f%% of one core", 100*server.Seconds()/wall.Seconds(), 100*gen.Seconds()/wall.Seconds())
}

// capacity holds WS and SSE connections at once on one server process and
// proves each is alive with one event per room.
func capacity(ctx context.Context, b *bench) error {
	s, err := startServer(ctx, b.bin)
	if err != nil {
		return err
	}
	defer s.stop()
	var f fleet
	defer f.stop()
	const rooms = 100
	start := time.Now()
	if _, err := f.spawn(ctx, s, "websocket", b.sc.capWS, 0, rooms); err != nil {
		return err
	}
	if _, err := f.spawn(ctx, s, "sse", b.sc.capSSE, b.sc.capWS, rooms); err != nil {
		return err
	}
	opened := time.Since(start)
	pub := newPublisher(s)
	for r := 0; r < rooms; r++ {
		if err := pub.publish(fmt.Sprintf("room-%d", r), r+1, 0); err != nil {
			return err
		}
	}
	total := b.sc.capWS + b.sc.capSSE
	var t workerReport
	if t, err = f.waitEvents(int64(total), false, 30*time.Second); err != nil {
		return err
	}
	rss, _ := s.rss()
	b.add("capacity", "connections held", float64(t.Opened), "conns", fmt.Sprintf("%d WebSocket + %d SSE, opened in %.1fs", b.sc.capWS, b.sc.capSSE, opened.Seconds()))
	b.add("capacity", "connections that got the probe event", float64(t.Events), "conns", fmt.Sprintf("of %d; server RSS %.0f MiB", total, float64(rss)/(1<<20)))
	if t.Events < int64(total) || t.Failed > 0 {
		return fmt.Errorf("capacity: %d of %d connections alive, %d failed", t.Events, total, t.Failed)
	}
	return nil
}

// fanout measures how long one event takes to reach every member of one
// big room: per event, the latest arrival over all members.
func fanoutScenario(ctx context.Context, b *bench) error {
	s, err := startServer(ctx, b.bin)
	if err != nil {
		return err
	}
	defer s.stop()
	var f fleet
	defer f.stop()
	if _, err := f.spawn(ctx, s, "websocket", b.sc.fanout, 0, 1); err != nil {
		return err
	}
	// Start from a settled server, as the rest of a long-running one is: the
	// connection storm's garbage is collected now (the runtime would within
	// two minutes anyway), not by a collection that lands on an event.
	s.saveProfile("heap?gc=1", "heap-fanout.pprof")
	time.Sleep(500 * time.Millisecond)
	pub := newPublisher(s)
	if os.Getenv("BENCH_PROFILE_FANOUT") != "" { // the profiler's signals perturb what is measured
		profiled := make(chan struct{})
		go func() {
			defer close(profiled)
			s.saveProfile(fmt.Sprintf("profile?seconds=%d", b.sc.fanoutEvents/4+1), "cpu-fanout.pprof")
		}()
		defer func() { <-profiled }()
	}
	mallocs0, _ := s.metric("go_memstats_mallocs_total")
	cpu0, gcpu0, t0 := procCPU(s.cmd.Process.Pid), f.cpu(), time.Now()
	n := b.sc.fanoutEvents
	for i := 1; i <= n; i++ {
		if err := pub.publish("room-0", i, 0); err != nil {
			return err
		}
		time.Sleep(250 * time.Millisecond) // one event at a time: its own fan-out
	}
	var t workerReport
	want := int64(n * b.sc.fanout)
	if t, err = f.waitEvents(want, false, 30*time.Second); err != nil {
		return err
	}
	wall := time.Since(t0)
	mallocs1, _ := s.metric("go_memstats_mallocs_total")
	var last []int64
	for i := 1; i < len(t.PerEvent); i++ {
		last = append(last, t.PerEvent[i])
	}
	fmt.Fprintf(os.Stderr, "bench: fanout: per-event last arrival (ms):")
	for _, v := range last {
		fmt.Fprintf(os.Stderr, " %.0f", float64(v)/1000)
	}
	fmt.Fprintln(os.Stderr)
	scen := fmt.Sprintf("fanout-%d", b.sc.fanout)
	gcpu, scpu := f.cpu()-gcpu0, procCPU(s.cmd.Process.Pid)-cpu0
	// The generators share the cores with the server: their cost per
	// delivery is what they take from it. The server's own per delivery
	// shows what waking them costs it.
	perDelivery := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(max(t.Events, 1)) }
	note := fmt.Sprintf("%d events, one at a time; %s; server %.2f µs, generators %.2f µs CPU per delivery; server allocations per delivery %.4f", n,
		cpuNote(scpu, gcpu, wall), perDelivery(scpu), perDelivery(gcpu), (mallocs1-mallocs0)/float64(max(t.Events, 1)))
	b.add(scen, "last member reached p50", pctOf(last, 0.5), "ms", note)
	b.add(scen, "last member reached p99", pctOf(last, 0.99), "ms", "")
	b.add(scen, "last member reached max", pctOf(last, 1), "ms", "")
	b.add(scen, "any member p50", percentile(t.Latency, 0.5), "ms", "")
	if t.Events < want || t.Gaps+t.Dups+t.Closed > 0 {
		return fmt.Errorf("fanout: %d of %d deliveries, gaps %d dups %d closed %d", t.Events, want, t.Gaps, t.Dups, t.Closed)
	}
	return nil
}

// throughput publishes to one room at rising rates and reports the highest
// rate whose every delivery arrived (no gap, no 4001, no backlog).
func throughput(ctx context.Context, b *bench) error {
	for _, members := range b.sc.tput {
		if err := throughputRoom(ctx, b, members); err != nil {
			return err
		}
	}
	return nil
}

func throughputRoom(ctx context.Context, b *bench, members int) error {
	s, err := startServer(ctx, b.bin)
	if err != nil {
		return err
	}
	defer s.stop()
	var f fleet
	defer f.stop()
	if _, err := f.spawn(ctx, s, "websocket", members, 0, 1); err != nil {
		return err
	}
	pub := newPublisher(s)
	scen := fmt.Sprintf("throughput-%d", members)
	best := 0.0
	next := 1
	for _, rate := range b.sc.tputRates {
		if _, err := f.all("reset"); err != nil {
			return err
		}
		n := int(rate * float64(b.sc.tputSeconds))
		if os.Getenv("BENCH_PROFILE_RATE") == fmt.Sprint(rate) {
			go s.saveProfile(fmt.Sprintf("profile?seconds=%d", b.sc.tputSeconds), fmt.Sprintf("cpu-throughput-%d-%v.pprof", members, rate))
		}
		cpu0, gcpu0, t0 := procCPU(s.cmd.Process.Pid), f.cpu(), time.Now()
		if err := pub.publishAt(ctx, "room-0", next, n, rate, 200); err != nil {
			return err
		}
		next += n
		want := int64(n * members)
		var t workerReport
		if t, err = f.waitEvents(want, true, 10*time.Second); err != nil {
			return err
		}
		wall := time.Since(t0)
		lossless := t.Events == want && t.Gaps+t.Dups+t.Closed == 0 && percentile(t.Latency, 0.99) < 1000
		b.add(scen, fmt.Sprintf("%.0f events/s -> deliveries/s", rate), rate*float64(members), "msg/s",
			fmt.Sprintf("lossless=%v; delivered %d/%d, gaps %d, closed %d [%s]; p50 %.1f ms p99 %.1f ms; %s",
				lossless, t.Events, want, t.Gaps, t.Closed, t.Closes, percentile(t.Latency, 0.5), percentile(t.Latency, 0.99),
				cpuNote(procCPU(s.cmd.Process.Pid)-cpu0, f.cpu()-gcpu0, wall)))
		if !lossless {
			break
		}
		best = rate * float64(members)
	}
	b.add(scen, "highest lossless deliveries/s", best, "msg/s", fmt.Sprintf("one room of %d WebSocket members", members))
	return nil
}

// churn connects and disconnects rounds of connections and checks that
// goroutines and memory come back.
func churn(ctx context.Context, b *bench) error {
	s, err := startServer(ctx, b.bin)
	if err != nil {
		return err
	}
	defer s.stop()
	base, _ := s.metric("go_goroutines")
	var firstRSS, lastRSS int64
	var g float64
	for round := 1; round <= b.sc.churnRounds; round++ {
		var f fleet
		if _, err := f.spawn(ctx, s, "websocket", b.sc.churnN, 0, 100); err != nil {
			f.stop()
			return err
		}
		f.all("close")
		f.stop()
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if g, _ = s.metric("go_goroutines"); g <= base+2 {
				break
			}
		}
		s.saveProfile("heap?gc=1", "heap-churn.pprof")
		if !s.settleMemory(10 * time.Second) {
			fmt.Fprintf(os.Stderr, "bench: churn round %d: the freed memory was not released within 10 s\n", round)
		}
		rss, _ := s.rss()
		heap, _ := s.metric("go_memstats_heap_inuse_bytes")
		fmt.Fprintf(os.Stderr, "bench: churn round %d: RSS %.1f MiB, heap in use %.1f MiB\n", round, float64(rss)/(1<<20), heap/(1<<20))
		if round == 1 {
			firstRSS = rss
		}
		lastRSS = rss
	}
	s.saveProfile("goroutine?debug=1", "goroutines-churn.txt") // what is left, by stack
	b.add("churn", "goroutines after the last round", g, "goroutines", fmt.Sprintf("baseline %.0f; %d rounds of %d connects and disconnects", base, b.sc.churnRounds, b.sc.churnN))
	b.add("churn", "RSS after the last round vs the first", 100*float64(lastRSS-firstRSS)/float64(firstRSS), "%", fmt.Sprintf("%.1f MiB -> %.1f MiB", float64(firstRSS)/(1<<20), float64(lastRSS)/(1<<20)))
	if g > base+2 {
		return fmt.Errorf("churn: %v goroutines left, baseline %v", g, base)
	}
	return nil
}

// benchDB creates a database for one scenario and returns its URL and a
// function that drops it.
func (b *bench) benchDB(ctx context.Context) (string, func(), error) {
	admin, err := sql.Open("postgres", b.admin)
	if err != nil {
		return "", nil, err
	}
	name := fmt.Sprintf("sagapush_bench_%d", time.Now().UnixNano())
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		admin.Close()
		return "", nil, fmt.Errorf("postgres at %s: %w", b.admin, err)
	}
	u, _ := url.Parse(b.admin)
	u.Path = "/" + name
	return u.String(), func() {
		admin.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)")
		admin.Close()
	}, nil
}

// triggers measures the database path: the rate the service ingests trigger
// events from 8 writers, and commit-to-client latency at a fixed rate.
// triggers: 1,000 clients in 10 projects of 100 (a stress shape: 50,000
// deliveries/s at 500 events/s), then the ingest phase.
func triggers(ctx context.Context, b *bench) error { return triggersIn(ctx, b, 10, true) }

// triggersFamilies: the same clients and rate in 200 projects of 5, the shape
// of Saga's families (a facilitator and a few storytellers).
func triggersFamilies(ctx context.Context, b *bench) error { return triggersIn(ctx, b, 200, false) }

func triggersIn(ctx context.Context, b *bench, rooms int, ingest bool) error {
	rooms = min(rooms, b.sc.latConns) // a smoke run has fewer clients than rooms
	dbURL, drop, err := b.benchDB(ctx)
	if err != nil {
		return err
	}
	defer drop()
	s, err := startServer(ctx, b.bin, "DATABASE_URL="+dbURL)
	if err != nil {
		return err
	}
	defer s.stop()
	db, err := sql.Open("postgres", dbURL)
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(b.sc.writer + 2)
	users := 1000
	// The workers' users and rooms, as rows: user u is in room u%rooms.
	tx, _ := db.BeginTx(ctx, nil)
	for r := 0; r < rooms; r++ {
		if _, err := tx.Exec(`INSERT INTO users (id, name) VALUES ($1, 'facilitator')`, fmt.Sprintf("fac-%d", r)); err != nil {
			tx.Rollback()
			return err
		}
		tx.Exec(`INSERT INTO projects (id, name, facilitator_id) VALUES ($1, 'bench', $2)`, fmt.Sprintf("room-%d", r), fmt.Sprintf("fac-%d", r))
	}
	for u := 0; u < users; u++ {
		tx.Exec(`INSERT INTO users (id, name) VALUES ($1, 'u')`, fmt.Sprintf("user-%d", u))
		tx.Exec(`INSERT INTO project_roles (project_id, user_id, role) VALUES ($1, $2, 'storyteller')`, fmt.Sprintf("room-%d", u%rooms), fmt.Sprintf("user-%d", u))
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	var f fleet
	defer f.stop()
	if _, err := f.spawnSpec(ctx, workerSpec{Addr: s.addr, Secret: s.secret, Transport: "websocket", N: b.sc.latConns, Rooms: rooms, Samples: true}); err != nil {
		return err
	}
	commits := make([]int64, b.sc.latRate*b.sc.latSeconds+1)
	insert := storyInserter(ctx, db, commits)

	// The fixed-rate latency first, on a fresh system; then the ingest
	// phase, which saturates it.
	scen := fmt.Sprintf("triggers-%d/s-%dx%d", b.sc.latRate, rooms, b.sc.latConns/rooms)
	if err := b.triggerLatency(ctx, []*server{s}, &f, rooms, insert, commits, scen); err != nil {
		return err
	}
	if !ingest {
		return nil
	}
	return b.triggerIngest(ctx, s, &f, rooms, insert)
}

// storyInserter inserts story i into a room. commits[i] is when event i's
// commit returned to its writer: the notification leaves Postgres at that
// commit, so arrival minus it is commit-to-client. The title also carries
// the time before the insert was sent (insert-to-client, which includes the
// commit's own fsync).
func storyInserter(ctx context.Context, db *sql.DB, commits []int64) func(i int, room string) error {
	return func(i int, room string) error {
		_, err := db.ExecContext(ctx, `INSERT INTO stories (project_id, title, audio_url) VALUES ($1, $2, '')`,
			room, fmt.Sprintf("t=%d i=%d", time.Now().UnixNano(), i))
		if i > 0 && i < len(commits) {
			atomic.StoreInt64(&commits[i], time.Now().UnixNano())
		}
		return err
	}
}

// triggerIngest: 8 writers insert as fast as they can; every event must
// reach every member of its room.
func (b *bench) triggerIngest(ctx context.Context, s *server, f *fleet, rooms int, insert func(int, string) error) error {
	if _, err := f.all("reset"); err != nil {
		return err
	}
	var count atomic.Int64
	cpu0, gcpu0, t0 := procCPU(s.cmd.Process.Pid), f.cpu(), time.Now()
	stop := t0.Add(time.Duration(b.sc.ingestSeconds) * time.Second)
	var wg sync.WaitGroup
	var werr atomic.Value
	for w := 0; w < b.sc.writer; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				if err := insert(0, fmt.Sprintf("room-%d", rand.IntN(rooms))); err != nil {
					werr.Store(err)
					return
				}
				count.Add(1)
			}
		}()
	}
	wg.Wait()
	if e, ok := werr.Load().(error); ok {
		return e
	}
	committed := count.Load()
	members := int64(b.sc.latConns / rooms)
	t, err := f.waitEvents(committed*members, false, 30*time.Second)
	if err != nil {
		return err
	}
	wall := time.Since(t0)
	b.add("triggers-ingest", "trigger events committed per second", float64(committed)/float64(b.sc.ingestSeconds), "events/s",
		fmt.Sprintf("%d writers, %d projects; delivered %d/%d to %d clients, gaps %d dups %d; %s", b.sc.writer, rooms, t.Events, committed*members, b.sc.latConns, t.Gaps, t.Dups,
			cpuNote(procCPU(s.cmd.Process.Pid)-cpu0, f.cpu()-gcpu0, wall)))
	b.add("triggers-ingest", "commit-to-client p50 at full ingest", percentile(t.Latency, 0.5), "ms", fmt.Sprintf("p99 %.1f ms", percentile(t.Latency, 0.99)))
	if t.Events < committed*members || t.Gaps+t.Dups > 0 {
		return fmt.Errorf("ingest: delivered %d of %d, gaps %d dups %d", t.Events, committed*members, t.Gaps, t.Dups)
	}

	return nil
}

// triggerLatency measures commit-to-client latency at a fixed rate spread
// over the writers, with the clients of f on servers.
func (b *bench) triggerLatency(ctx context.Context, servers []*server, f *fleet, rooms int, insert func(int, string) error, commits []int64, scen string) error {
	if _, err := f.all("reset"); err != nil {
		return err
	}
	n := b.sc.latRate * b.sc.latSeconds
	members := int64(b.sc.latConns / rooms)
	if os.Getenv("BENCH_TRACE") == "1" {
		go servers[0].saveProfile("trace?seconds=4", "trace-triggers.out")
	}
	cpu0, gcpu0, t0 := serversCPU(servers), f.cpu(), time.Now()
	err := paced(ctx, b.sc.writer, 1, n, float64(b.sc.latRate), func(i int) error { return insert(i, fmt.Sprintf("room-%d", i%rooms)) })
	if err != nil {
		return err
	}
	want := int64(n) * members
	t, err := f.waitEvents(want, false, 30*time.Second)
	if err != nil {
		return err
	}
	wall := time.Since(t0)
	servers[0].saveProfile("allocs", "allocs-triggers.pprof")
	c, err := f.commitHist(commits)
	if err != nil {
		return err
	}
	note := fmt.Sprintf("%d clients in %d rooms on %d instance(s), %d writers, %d events; %s", b.sc.latConns, rooms, len(servers), b.sc.writer, n, cpuNote(serversCPU(servers)-cpu0, f.cpu()-gcpu0, wall))
	b.add(scen, "commit-to-client p50", percentile(c, 0.5), "ms", note)
	b.add(scen, "commit-to-client p95", percentile(c, 0.95), "ms", "from the writer's commit returning")
	b.add(scen, "commit-to-client p99", percentile(c, 0.99), "ms", "")
	b.add(scen, "commit-to-client max", histMax(c), "ms", "")
	s := servers[0]
	b.add(scen, "server: creation-to-fan-out p50/p99 bucket", 1000*s.histQuantile("sagapush_commit_to_client_seconds", 0.5), "ms",
		fmt.Sprintf("p99 bucket <= %.1f ms (whole run, first instance, from the trigger's clock_timestamp, before the commit)", 1000*s.histQuantile("sagapush_commit_to_client_seconds", 0.99)))
	b.add(scen, "insert-to-client p50", percentile(t.Latency, 0.5), "ms", fmt.Sprintf("from before the INSERT was sent (includes its commit); p99 %.1f ms", percentile(t.Latency, 0.99)))
	if t.Events < want || t.Gaps+t.Dups > 0 {
		return fmt.Errorf("latency: delivered %d of %d, gaps %d dups %d", t.Events, want, t.Gaps, t.Dups)
	}
	return nil
}

// paced calls do(first), do(first+1), ... n times at rate per second, spread
// over workers goroutines (a call that takes longer than the interval does
// not hold the next one back while a worker is free); it returns the first
// error once every call is done.
func paced(ctx context.Context, workers, first, n int, rate float64, do func(i int) error) error {
	interval := time.Duration(float64(time.Second) / rate)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed error
	jobs := make(chan int, n)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := do(i); err != nil {
					mu.Lock()
					failed = cmp.Or(failed, err)
					mu.Unlock()
				}
			}
		}()
	}
	t0 := time.Now()
	for k := 0; k < n && ctx.Err() == nil; k++ {
		time.Sleep(time.Until(t0.Add(time.Duration(k) * interval)))
		jobs <- first + k
	}
	close(jobs)
	wg.Wait()
	return cmp.Or(failed, ctx.Err())
}

// commitHist hands the workers the commit time of every event index and
// returns their histogram of arrival minus commit.
func (f *fleet) commitHist(commits []int64) ([]int64, error) {
	path := filepath.Join(os.TempDir(), fmt.Sprintf("sagapush-commits-%d.json", os.Getpid()))
	js, _ := json.Marshal(commits)
	if err := os.WriteFile(path, js, 0o644); err != nil {
		return nil, err
	}
	defer os.Remove(path)
	reps, err := f.all("commits " + path)
	if err != nil {
		return nil, err
	}
	return sum(reps).Commit, nil
}

// serversCPU adds up the CPU time of server processes.
func serversCPU(servers []*server) time.Duration {
	var d time.Duration
	for _, s := range servers {
		d += procCPU(s.cmd.Process.Pid)
	}
	return d
}
