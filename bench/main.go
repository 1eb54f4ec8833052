// Command bench measures Saga push the way operators run it: it starts the
// server binary, opens real WebSocket and SSE connections over loopback, and
// writes a results table (Markdown and JSON) with the machine's core count
// and the commit. `make bench` runs the standard set; -smoke runs a tiny one
// that only proves the harness works.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

var outDir string

type result struct {
	Scenario string  `json:"scenario"`
	Metric   string  `json:"metric"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Note     string  `json:"note,omitempty"`
}

type report struct {
	Commit  string    `json:"commit"`
	Cores   int       `json:"cores"`
	Go      string    `json:"go"`
	Started time.Time `json:"started"`
	Smoke   bool      `json:"smoke"`
	Results []result  `json:"results"`
}

func main() {
	worker := flag.Bool("worker", false, "run as a generator process (internal)")
	out := flag.String("out", "bench/results", "folder for results.md and results.json")
	bin := flag.String("bin", "bin/sagapush", "server binary")
	smoke := flag.Bool("smoke", false, "tiny run that only checks the harness works")
	only := flag.String("only", "", "comma list of scenarios to run (default: all)")
	admin := flag.String("database", envOr("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"), "Postgres admin URL for the database scenarios")
	flag.Parse()
	if *worker {
		runWorker()
		return
	}
	outDir = *out
	b := &bench{bin: *bin, sc: fullScale, admin: *admin,
		rep: &report{Commit: gitCommit(), Cores: runtime.NumCPU(), Go: runtime.Version(), Started: time.Now().UTC(), Smoke: *smoke}}
	if *smoke {
		b.sc = smokeScale
	}
	if v := os.Getenv("BENCH_LAT_CONNS"); v != "" { // for experiments
		fmt.Sscanf(v, "%d", &b.sc.latConns)
	}
	if v := os.Getenv("BENCH_FANOUT"); v != "" { // for experiments: "members x events", e.g. 1000x40
		fmt.Sscanf(v, "%dx%d", &b.sc.fanout, &b.sc.fanoutEvents)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()

	scenarios := []scenario{
		{"idle-websocket", func(ctx context.Context, b *bench) error { return idleMemory(ctx, b, "websocket", b.sc.idleWS) }},
		{"idle-sse", func(ctx context.Context, b *bench) error { return idleMemory(ctx, b, "sse", b.sc.idleSSE) }},
		{"capacity", capacity},
		{"fanout", fanoutScenario},
		{"throughput", throughput},
		{"triggers", triggers},
		{"triggers-families", triggersFamilies},
		{"churn", churn},
		{"presence", presenceScenario},
		{"foreign-notify", foreignNotify},
		{"foreign-notify-big", foreignNotifyBig},
		{"multi-instance", multiInstance},
		{"notify-ceiling", notifyCeiling},
		{"typing-relay", typingRelay},
		{"scale-validate", scaleValidate},
	}
	failed := 0
	for _, s := range scenarios {
		if *only != "" && !strings.Contains(","+*only+",", ","+s.name+",") {
			continue
		}
		fmt.Fprintf(os.Stderr, "bench: %s ...\n", s.name)
		if err := s.run(ctx, b); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s FAILED: %v\n", s.name, err)
			b.add(s.name, "FAILED", 0, "", err.Error())
			failed++
		}
	}
	if err := write(*out, b.rep); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	if failed > 0 {
		os.Exit(1)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func gitCommit() string {
	b, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(b))
	if exec.Command("git", "diff", "--quiet", "HEAD").Run() != nil {
		c += "-dirty"
	}
	return c
}

func write(dir string, rep *report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, _ := json.MarshalIndent(rep, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "results.json"), js, 0o644); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Saga push benchmark\n\ncommit %s, %d cores, %s, %s%s\n\n", rep.Commit, rep.Cores, rep.Go, rep.Started.Format(time.RFC3339), map[bool]string{true: " (smoke run: figures mean nothing)"}[rep.Smoke])
	b.WriteString("| scenario | metric | value | unit | note |\n|---|---|---:|---|---|\n")
	for _, r := range rep.Results {
		fmt.Fprintf(&b, "| %s | %s | %.2f | %s | %s |\n", r.Scenario, r.Metric, r.Value, r.Unit, r.Note)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	fmt.Print(b.String())
	return nil
}

// server is one server process under test.
type server struct {
	cmd    *exec.Cmd
	addr   string // host:port
	secret string
}

func startServer(ctx context.Context, bin string, env ...string) (*server, error) {
	s := &server{secret: "bench-secret"}
	cmd := exec.CommandContext(ctx, bin, "serve")
	// The server's defaults, limits included: a load test from one host must
	// pass them unchanged (the generators spread over 127.0.0.x and 1,000 users).
	cmd.Env = append(os.Environ(), "PORT=0", "JWT_SECRET="+s.secret)
	// pprof is mounted always: the memory scenarios force the collections an
	// idle server gets from the runtime every 2 minutes.
	cmd.Env = append(cmd.Env, "PPROF=1")
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = nil
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s.cmd = cmd
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			if i := strings.Index(line, "addr="); i >= 0 && strings.Contains(line, "listening") {
				a := strings.Fields(line[i+5:])[0]
				found <- "127.0.0.1" + a[strings.LastIndex(a, ":"):]
			} else if !strings.Contains(line, "level=INFO") {
				fmt.Fprintln(os.Stderr, "server:", line)
			}
		}
	}()
	select {
	case s.addr = <-found:
	case <-time.After(15 * time.Second):
		s.stop()
		return nil, fmt.Errorf("server did not start")
	}
	return s, nil
}

func (s *server) stop() {
	if s.cmd.Process != nil {
		s.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			s.cmd.Process.Kill()
		}
	}
}

// saveProfile stores a server profile (heap, goroutine, ...) under -out.
func (s *server) saveProfile(kind, name string) {
	resp, err := http.Get("http://" + s.addr + "/debug/pprof/" + kind)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	os.MkdirAll(outDir, 0o755)
	f, err := os.Create(filepath.Join(outDir, name))
	if err != nil {
		return
	}
	defer f.Close()
	io.Copy(f, resp.Body)
}

// histQuantile reads a Prometheus histogram of the server and returns the
// upper bound (seconds) of the bucket holding quantile q.
func (s *server) histQuantile(name string, q float64) float64 {
	resp, err := http.Get("http://" + s.addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	type bucket struct {
		le    float64
		count float64
	}
	var bs []bucket
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	prefix := name + `_bucket{le="`
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		var b bucket
		rest := line[len(prefix):]
		le := rest[:strings.IndexByte(rest, '"')]
		if le == "+Inf" {
			b.le = math.Inf(1)
		} else {
			fmt.Sscanf(le, "%g", &b.le)
		}
		fmt.Sscanf(rest[strings.LastIndexByte(rest, ' ')+1:], "%g", &b.count)
		bs = append(bs, b)
	}
	if len(bs) == 0 || bs[len(bs)-1].count == 0 {
		return -1
	}
	want := q * bs[len(bs)-1].count
	for _, b := range bs {
		if b.count >= want {
			return b.le
		}
	}
	return math.Inf(1)
}

// rss reads the server's resident set size in bytes.
func (s *server) rss() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(line[6:]), "%d", &kb)
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS")
}

// settleMemory waits, at most max, until the runtime has handed back to the
// kernel what the last collection freed (under 4 MiB of idle heap not yet
// released): until then RSS says when the scavenger last ran, not what the
// server holds (after a churn round, 70-87 MiB before it, 30-36 after). It
// reports whether that happened in time.
func (s *server) settleMemory(max time.Duration) bool {
	for deadline := time.Now().Add(max); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		idle, err1 := s.metric("go_memstats_heap_idle_bytes")
		released, err2 := s.metric("go_memstats_heap_released_bytes")
		if err1 == nil && err2 == nil && idle-released < 4<<20 {
			return true
		}
	}
	return false
}

// metric reads one sample of a Prometheus metric without labels.
func (s *server) metric(name string) (float64, error) {
	resp, err := http.Get("http://" + s.addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+" ") {
			var v float64
			fmt.Sscanf(line[len(name)+1:], "%g", &v)
			return v, nil
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}
