package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"
)

func numGoroutine() int { return runtime.NumGoroutine() }

// proc is one worker process driven by the coordinator.
type proc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

// fleet is the set of workers of one scenario.
type fleet struct {
	mu    sync.Mutex // spawnSpec may run for several servers at once
	procs []*proc
}

// maxPerWorker keeps each generator process under the 20,000-file limit.
const maxPerWorker = 9000

// spawn starts workers holding n connections of one transport over rooms
// rooms, numbered from offset; it returns once every worker has opened its
// connections, with their first reports.
func (f *fleet) spawn(ctx context.Context, s *server, transport string, n, offset, rooms int) ([]workerReport, error) {
	return f.spawnSpec(ctx, workerSpec{Addr: s.addr, Secret: s.secret, Transport: transport, N: n, Offset: offset, Rooms: rooms})
}

// spawnSpec starts workers for base.N connections from base.Offset.
func (f *fleet) spawnSpec(ctx context.Context, base workerSpec) ([]workerReport, error) {
	n, offset := base.N, base.Offset
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var started []*proc
	per := maxPerWorker
	if v := os.Getenv("BENCH_PER_WORKER"); v != "" { // for experiments
		fmt.Sscanf(v, "%d", &per)
	}
	for done := 0; done < n; {
		k := min(per, n-done)
		ws := base
		ws.N, ws.Offset = k, offset+done
		spec, _ := json.Marshal(ws)
		cmd := exec.CommandContext(ctx, self, "-worker")
		// One P per generator: the generators share the two cores with the
		// server, and idle Ps spinning for work would only take from it.
		cmd.Env = append(os.Environ(), "BENCH_WORKER="+string(spec), "GOMAXPROCS="+envOr("BENCH_WORKER_PROCS", "1"))
		cmd.Stderr = os.Stderr
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		p := &proc{cmd: cmd, stdin: stdin, out: sc}
		started = append(started, p)
		f.mu.Lock()
		f.procs = append(f.procs, p)
		f.mu.Unlock()
		done += k
	}
	reps := make([]workerReport, len(started))
	var firstErr error
	for i, p := range started {
		r, err := p.read()
		if err != nil {
			firstErr = err
			continue
		}
		reps[i] = r
		if r.Failed > 0 && firstErr == nil {
			firstErr = fmt.Errorf("%d connections failed: %s", r.Failed, r.FirstErr)
		}
	}
	return reps, firstErr
}

func (p *proc) read() (workerReport, error) {
	var r workerReport
	if !p.out.Scan() {
		return r, fmt.Errorf("worker ended: %v", p.out.Err())
	}
	return r, json.Unmarshal(p.out.Bytes(), &r)
}

// all sends a command to every worker and gathers their reports.
func (f *fleet) all(cmd string) ([]workerReport, error) {
	for _, p := range f.procs {
		fmt.Fprintln(p.stdin, cmd)
	}
	reps := make([]workerReport, 0, len(f.procs))
	for _, p := range f.procs {
		r, err := p.read()
		if err != nil {
			return nil, err
		}
		reps = append(reps, r)
	}
	return reps, nil
}

func (f *fleet) stop() {
	for _, p := range f.procs {
		fmt.Fprintln(p.stdin, "quit")
		p.stdin.Close()
	}
	for _, p := range f.procs {
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
		}
	}
	f.procs = nil
}

func (f *fleet) cpu() time.Duration {
	var d time.Duration
	for _, p := range f.procs {
		d += procCPU(p.cmd.Process.Pid)
	}
	return d
}

// waitEvents polls the workers until they received want events in all, or
// (stopOnClose) a connection was closed, or the bound passed; it returns the
// last totals either way.
func (f *fleet) waitEvents(want int64, stopOnClose bool, bound time.Duration) (workerReport, error) {
	var t workerReport
	for deadline := time.Now().Add(bound); ; time.Sleep(100 * time.Millisecond) {
		reps, err := f.all("report")
		if err != nil {
			return t, err
		}
		t = sum(reps)
		if t.Events >= want || (stopOnClose && t.Closed > 0) || time.Now().After(deadline) {
			return t, nil
		}
	}
}

// sum adds up the workers' reports.
func sum(reps []workerReport) workerReport {
	var t workerReport
	t.Latency = make([]int64, histBuckets)
	t.Commit = make([]int64, histBuckets)
	var closes []string
	for _, r := range reps {
		t.Opened += r.Opened
		t.Failed += r.Failed
		t.Events += r.Events
		t.Gaps += r.Gaps
		t.Dups += r.Dups
		t.Closed += r.Closed
		t.CPUms += r.CPUms
		t.PresenceRight += r.PresenceRight
		if r.Closes != "" {
			closes = append(closes, r.Closes)
		}
		for i, c := range r.Latency {
			t.Latency[i] += c
		}
		for i, c := range r.Commit {
			t.Commit[i] += c
		}
		for len(t.PerEvent) < len(r.PerEvent) {
			t.PerEvent = append(t.PerEvent, 0)
		}
		for i, v := range r.PerEvent {
			t.PerEvent[i] = max(t.PerEvent[i], v)
		}
		t.OpenMs = max(t.OpenMs, r.OpenMs)
	}
	t.Closes = strings.Join(closes, ",")
	return t
}

// percentile of a latency histogram, in ms.
func percentile(hist []int64, p float64) float64 {
	var total int64
	for _, c := range hist {
		total += c
	}
	if total == 0 {
		return 0
	}
	want := int64(float64(total) * p)
	var seen int64
	for b, c := range hist {
		seen += c
		if seen > want {
			return float64(bucketValue(b)) / 1000
		}
	}
	return float64(bucketValue(len(hist)-1)) / 1000
}

func histMax(hist []int64) float64 {
	for b := len(hist) - 1; b >= 0; b-- {
		if hist[b] > 0 {
			return float64(bucketValue(b)) / 1000
		}
	}
	return 0
}

// pctOf returns the p-th percentile of values (µs) in ms.
func pctOf(values []int64, p float64) float64 {
	if len(values) == 0 {
		return 0
	}
	v := append([]int64(nil), values...)
	sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
	// Nearest rank: the smallest value with at least p of them at or
	// below it (with 20 values, p99 is the largest).
	i := max(int(math.Ceil(p*float64(len(v))))-1, 0)
	return float64(v[i]) / 1000
}

// publisher posts events to POST /api/events with a service token.
type publisher struct {
	s      *server
	token  string
	client *http.Client
}

func newPublisher(s *server) *publisher {
	return &publisher{s: s, token: s.serviceToken(), client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
}

// publish sends event i to room with the send time in data.t (ns).
func (p *publisher) publish(room string, i int, pad int) error {
	body := fmt.Sprintf(`{"projectId":%q,"event":"story_processed","data":{"storyId":"s","status":"ready","i":%d,"t":%d,"pad":%q}}`,
		room, i, time.Now().UnixNano(), strings.Repeat("x", pad))
	req, _ := http.NewRequest("POST", "http://"+p.s.addr+"/api/events", bytes.NewReader([]byte(body)))
	req.Header.Set("Authorization", "Bearer "+p.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("publish: HTTP %d", resp.StatusCode)
	}
	return nil
}

// publishAt publishes n events to room at rate per second, from index
// first; it returns when all are sent.
func (p *publisher) publishAt(ctx context.Context, room string, first, n int, rate float64, pad int) error {
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for k := 0; k < n; k++ {
		if d := time.Until(start.Add(time.Duration(k) * interval)); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := p.publish(room, i, pad); err != nil {
				errs <- err
			}
		}(first + k)
	}
	wg.Wait()
	close(errs)
	return <-errs
}
