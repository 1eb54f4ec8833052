package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A worker is one generator process: it holds connections (up to the
// per-process file limit) and measures at the clients. The coordinator
// drives it over stdin ("report", "close", "quit") and reads JSON lines
// from its stdout.

type workerSpec struct {
	Addr      string `json:"addr"`
	Secret    string `json:"secret"`
	Transport string `json:"transport"` // websocket | sse
	N         int    `json:"n"`
	Offset    int    `json:"offset"`  // global index of the first connection
	Rooms     int    `json:"rooms"`   // connection i joins room (offset+i) % rooms
	Users     int    `json:"users"`   // distinct users (default 1000)
	Samples   bool   `json:"samples"` // keep (event index, arrival) of every event
	// Presence: track each connection's online list (Users/Rooms users
	// per project) and report how many are right.
	Presence bool `json:"presence,omitempty"`
}

// workerReport is what a worker tells the coordinator.
type workerReport struct {
	Opened    int     `json:"opened"`
	Failed    int     `json:"failed"`
	FirstErr  string  `json:"firstErr,omitempty"`
	Events    int64   `json:"events"`    // domain events received, all connections
	Gaps      int64   `json:"gaps"`      // an event whose seq was not last+1
	Dups      int64   `json:"dups"`      // an event at or below last
	Closed    int64   `json:"closed"`    // connections the server closed
	Closes    string  `json:"closes"`    // close codes seen
	Latency   []int64 `json:"latency"`   // histogram counts, see bucketOf
	PerEvent  []int64 `json:"perEvent"`  // max latency (µs) per event index, for fan-out
	OpenMs    int64   `json:"openMs"`    // time to open all connections
	Commit    []int64 `json:"commit"`    // histogram from each event's commit, after "commits"
	CPUms     int64   `json:"cpuMs"`     // this process's CPU time
	Goroutine int     `json:"goroutine"` // this process's goroutines
	// PresenceRight counts connections whose online list holds exactly
	// their project's users (spec.Presence).
	PresenceRight int64 `json:"presenceRight,omitempty"`
}

// maxEvents bounds the event indexes ("i") tracked per event.
const maxEvents = 4096

func loadAll(a []int64) []int64 {
	out := make([]int64, len(a))
	for i := range a {
		out[i] = atomic.LoadInt64(&a[i])
	}
	return out
}

func trimZeros(a []int64) []int64 {
	n := len(a)
	for n > 0 && a[n-1] == 0 {
		n--
	}
	return a[:n]
}

// Latency histogram: 1 µs resolution up to 1 ms, then 5% wide buckets up to
// about 30 s; cheap enough to update per message.
const histBuckets = 1000 + 360

func bucketOf(us int64) int {
	if us < 0 {
		us = 0
	}
	if us < 1000 {
		return int(us)
	}
	b := 1000 + int(math.Log(float64(us)/1000)/math.Log(1.05))
	if b >= histBuckets {
		b = histBuckets - 1
	}
	return b
}

func bucketValue(b int) int64 {
	if b < 1000 {
		return int64(b)
	}
	return int64(1000 * math.Pow(1.05, float64(b-1000+1)))
}

type worker struct {
	spec    workerSpec
	tokens  []string
	events  atomic.Int64
	gaps    atomic.Int64
	dups    atomic.Int64
	closed  atomic.Int64
	mu      sync.Mutex
	hist    []int64
	perEv   []int64 // by event index (data "i")
	closes  map[int]int
	conns   []io.Closer
	ws      []*wsPoller // WebSocket readers, connection g on ws[g%len(ws)]
	opened  int
	failed  int
	firstEr string
	openDur time.Duration

	presence *presenceSets // nil unless spec.Presence

	sampleMu sync.Mutex
	samples  []sample
	commit   []int64 // histogram against commit times
}

// sample is one event's arrival at one connection.
type sample struct {
	i    int32
	recv int64 // ns
}

func runWorker() {
	var spec workerSpec
	if err := json.Unmarshal([]byte(os.Getenv("BENCH_WORKER")), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "worker: bad spec:", err)
		os.Exit(2)
	}
	if spec.Users <= 0 {
		spec.Users = 1000
	}
	// Users are a multiple of rooms, so connection g (user g%users, room
	// g%rooms) always has a user whose one room is g%rooms.
	if spec.Users%spec.Rooms != 0 {
		spec.Users += spec.Rooms - spec.Users%spec.Rooms
	}
	w := &worker{spec: spec, hist: make([]int64, histBuckets), perEv: make([]int64, maxEvents), closes: map[int]int{}}
	if spec.Presence {
		w.presence = newPresenceSets(spec.N, spec.Users/spec.Rooms)
	}
	s := &server{secret: spec.Secret}
	w.tokens = make([]string, spec.Users)
	for u := range w.tokens {
		w.tokens[u] = s.token(fmt.Sprintf("user-%d", u), fmt.Sprintf("room-%d", u%spec.Rooms))
	}
	w.open()
	if dir := os.Getenv("BENCH_WORKER_PROFILE"); dir != "" { // for experiments
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("worker-%d.pprof", spec.Offset)))
		if err == nil {
			pprof.StartCPUProfile(f)
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	out := json.NewEncoder(os.Stdout)
	out.Encode(w.report())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch strings.TrimSpace(sc.Text()) {
		case "report":
			out.Encode(w.report())
		case "reset":
			for i := range w.hist {
				atomic.StoreInt64(&w.hist[i], 0)
			}
			for i := range w.perEv {
				atomic.StoreInt64(&w.perEv[i], 0)
			}
			w.events.Store(0)
			out.Encode(w.report())
		case "close":
			w.mu.Lock()
			for _, c := range w.conns {
				c.Close()
			}
			w.conns = nil
			w.mu.Unlock()
			out.Encode(w.report())
		case "quit":
			return
		default:
			if path, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "commits "); ok {
				w.commitLatency(path)
				out.Encode(w.report())
			}
		}
	}
}

// assign gives global connection g its user's token and its room.
func (w *worker) assign(i int) (token, room string) {
	g := w.spec.Offset + i
	return w.tokens[g%w.spec.Users], fmt.Sprintf("room-%d", g%w.spec.Rooms)
}

func (w *worker) open() {
	start := time.Now()
	if w.spec.Transport != "sse" {
		// One loop per process: each worker has one P, and a second loop
		// only adds wakeups (fan-out to 1,000: 4.0 µs CPU per delivery
		// with one loop, 5.3 with two). BENCH_WS_LOOPS for experiments.
		loops := 1
		if v := os.Getenv("BENCH_WS_LOOPS"); v != "" {
			fmt.Sscanf(v, "%d", &loops)
		}
		interval := defaultPollInterval
		if v := os.Getenv("BENCH_POLL_INTERVAL"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				fmt.Fprintln(os.Stderr, "worker: BENCH_POLL_INTERVAL:", v, err)
				os.Exit(2)
			}
			interval = d
		}
		for range max(loops, 1) {
			p, err := newWSPoller(interval, w.onEvent, w.onClose)
			if w.presence != nil {
				p.onMessage = w.presence.message
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "worker: epoll:", err)
				os.Exit(2)
			}
			w.ws = append(w.ws, p)
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for k := 0; k < 64; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= w.spec.N {
					return
				}
				token, room := w.assign(i)
				var c io.Closer
				var err error
				for attempt := 0; attempt < 3; attempt++ {
					if w.spec.Transport == "sse" {
						c, err = w.openSSE(token, room, w.spec.Offset+i)
					} else {
						c, err = w.openWS(token, room, w.spec.Offset+i)
					}
					if err == nil {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				w.mu.Lock()
				if err != nil {
					w.failed++
					if w.firstEr == "" {
						w.firstEr = err.Error()
					}
				} else {
					w.opened++
					w.conns = append(w.conns, c)
				}
				w.mu.Unlock()
			}
		}()
	}
	wg.Wait()
	w.openDur = time.Since(start)
}

func (w *worker) report() workerReport {
	w.mu.Lock()
	defer w.mu.Unlock()
	var codes []string
	for c, n := range w.closes {
		codes = append(codes, fmt.Sprintf("%d:%d", c, n))
	}
	r := workerReport{
		Opened: w.opened, Failed: w.failed, FirstErr: w.firstEr,
		Events: w.events.Load(), Gaps: w.gaps.Load(), Dups: w.dups.Load(), Closed: w.closed.Load(),
		Closes: strings.Join(codes, ","), Latency: loadAll(w.hist), PerEvent: trimZeros(loadAll(w.perEv)),
		Commit: w.commit, OpenMs: w.openDur.Milliseconds(), CPUms: selfCPU().Milliseconds(), Goroutine: numGoroutine(),
	}
	if w.presence != nil {
		r.PresenceRight = w.presence.right.Load()
	}
	return r
}

// onEvent checks order and records latency from the "t" (ns) in the data.
func (w *worker) onEvent(msg []byte, last *int64, now time.Time) {
	seq := jsonInt(msg, `"seq":`)
	if seq <= 0 {
		return
	}
	w.events.Add(1)
	switch {
	case seq <= *last:
		w.dups.Add(1)
	case *last > 0 && seq != *last+1:
		w.gaps.Add(1)
	}
	*last = seq
	// API events carry "t" and "i" in their data; trigger events carry
	// "t=... i=..." in the story title.
	t := jsonInt(msg, `"t":`)
	idx := jsonInt(msg, `"i":`)
	if t <= 0 {
		t, idx = jsonInt(msg, `t=`), jsonInt(msg, `i=`)
	}
	if t <= 0 {
		return
	}
	if w.spec.Samples && idx > 0 {
		w.sampleMu.Lock()
		w.samples = append(w.samples, sample{int32(idx), now.UnixNano()})
		w.sampleMu.Unlock()
	}
	us := now.Sub(time.Unix(0, t)).Microseconds()
	// Atomics, not the worker's mutex: the pollers and thousands of SSE
	// reader goroutines record at once.
	atomic.AddInt64(&w.hist[bucketOf(us)], 1)
	if idx > 0 && idx < int64(len(w.perEv)) {
		for {
			old := atomic.LoadInt64(&w.perEv[idx])
			if us <= old || atomic.CompareAndSwapInt64(&w.perEv[idx], old, us) {
				break
			}
		}
	}
}

// commitLatency reads the commit time (ns) of every event index from path
// (a JSON array) and builds the histogram of arrival minus commit.
func (w *worker) commitLatency(path string) {
	var commits []int64
	if b, err := os.ReadFile(path); err == nil {
		json.Unmarshal(b, &commits)
	}
	hist := make([]int64, histBuckets)
	w.sampleMu.Lock()
	for _, s := range w.samples {
		if int(s.i) < len(commits) && commits[s.i] > 0 {
			hist[bucketOf((s.recv-commits[s.i])/1000)]++
		}
	}
	w.sampleMu.Unlock()
	w.mu.Lock()
	w.commit = hist
	w.mu.Unlock()
}

func (w *worker) onClose(code int) {
	w.closed.Add(1)
	w.mu.Lock()
	w.closes[code]++
	w.mu.Unlock()
}

// jsonInt finds key (like `"seq":`) in msg and parses the integer after it;
// the generator must be cheap per message, so it does not decode JSON.
func jsonInt(msg []byte, key string) int64 {
	i := bytes.Index(msg, []byte(key))
	if i < 0 {
		return 0
	}
	j := i + len(key)
	var n int64
	for ; j < len(msg) && msg[j] >= '0' && msg[j] <= '9'; j++ {
		n = n*10 + int64(msg[j]-'0')
	}
	return n
}

// openWS opens connection g and joins room; one of the worker's pollers
// reads it from then on.
func (w *worker) openWS(token, room string, g int) (io.Closer, error) {
	join := []byte(`{"event":"join_project","data":{"projectId":"` + room + `"},"ack":1}`)
	c, err := w.ws[g%len(w.ws)].dial(w.spec.Addr, "/ws?token="+token, localAddr(g), join, g-w.spec.Offset, 30*time.Second)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (w *worker) openSSE(token, room string, g int) (io.Closer, error) {
	d := net.Dialer{LocalAddr: localAddr(g), Timeout: 30 * time.Second}
	c, err := d.Dial("tcp", w.spec.Addr)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(c, "GET /sse?projects=%s&token=%s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", room, token, w.spec.Addr)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReaderSize(c, 4096)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		c.Close()
		return nil, fmt.Errorf("sse: %v %v", err, resp)
	}
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			c.Close()
			return nil, err
		}
		if bytes.HasPrefix(line, []byte("event: joined_project")) {
			break
		}
	}
	c.SetReadDeadline(time.Time{})
	i := g - w.spec.Offset
	go func() {
		var last int64
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				w.onClose(0) // SSE has no close code: the stream ended
				return
			}
			if data, ok := bytes.CutPrefix(line, []byte("data: ")); ok {
				if w.presence != nil && w.presence.message(i, data) {
					continue
				}
				w.onEvent(line, &last, time.Now())
			}
		}
	}()
	return c, nil
}

// selfCPU returns this process's user+system CPU time.
func selfCPU() time.Duration { return procCPU(os.Getpid()) }

// procCPU reads utime+stime of a process from /proc.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(fields) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}
