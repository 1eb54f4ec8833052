package e2e

// Memory bounded in bytes (issue 12, points 1-3 and 7): slow readers of big
// events are closed by the byte budget and resume losslessly, a resume
// larger than the budget streams, the SSE request's project list is
// bounded, and a re-join replays honestly.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/saga-family/sagapush/internal/wsraw"
)

// peakRSS returns the process's peak resident set (VmHWM) in MiB.
func peakRSS(t testing.TB, s *testServer) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("reading the server's memory: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			return float64(kb) / 1024
		}
	}
	t.Fatal("no VmHWM in /proc/PID/status")
	return 0
}

// dialSmallBuffer dials the server with a small receive buffer: a reader
// that stops reading is felt by the server at once.
func dialSmallBuffer(t *testing.T, s *testServer) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: waitTimeout, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(sysFD(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
	conn, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// bigData is the data of a transcript_updated event of about n bytes.
func bigData(n int) map[string]any {
	return map[string]any{"storyId": "s1", "transcript": strings.Repeat("Grandma remembers the summer of 1962. ", n/38)}
}

// emitMany stores n transcript_updated events of about size bytes through
// push_emit, as triggers do, in transactions of batch events (a busy
// afternoon's storm, committed fast enough that the readers fall behind).
// It may run on a goroutine of its own: it reports, it does not fail.
func (e *pgEnv) emitMany(project string, n, batch, size int) error {
	data, err := json.Marshal(bigData(size))
	if err != nil {
		return err
	}
	for done := 0; done < n; done += batch {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		_, err := e.db.ExecContext(ctx, `SELECT push_emit($1, 'transcript_updated', $2::jsonb) FROM generate_series(1, $3)`,
			project, string(data), min(batch, n-done))
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

// seqOf reads a domain event's seq from its JSON without decoding the rest
// ({"event":...,"projectId":...,"seq":N,...}): the tests read hundreds of
// megabytes of events.
func seqOf(b []byte) int64 {
	i := bytes.Index(b[:min(len(b), 512)], []byte(`"seq":`))
	if i < 0 {
		return 0
	}
	var n int64
	for _, c := range b[i+6:] {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// wsSeqs reads a WebSocket client's domain events of project p in order
// until seq `to`, failing on a gap, a duplicate or a close.
func wsSeqs(t *testing.T, c *wsClient, from, to int64, within time.Duration) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	last := from - 1
	for last < to {
		select {
		case m := <-c.msgs:
			seq := seqOf(m.data)
			if seq == 0 {
				continue
			}
			if seq != last+1 {
				t.Fatalf("%s: seq %d after %d", c.name, seq, last)
			}
			last = seq
		case <-c.done:
			t.Fatalf("%s: closed after seq %d (%v), want every event to %d", c.name, last, c.err, to)
		case <-deadline.C:
			t.Fatalf("%s: at seq %d after %v, want %d", c.name, last, within, to)
		}
	}
}

// wsSeqsResuming is wsSeqs for a reader that resumes as clients do when
// the server closes it with 4001 for falling behind: a new connection joins
// with since its last seq. The test's reader runs under the race detector,
// which on a slow host reads slower than the store commits.
func wsSeqsResuming(t *testing.T, s *testServer, c *wsClient, token, p string, from, to int64, within time.Duration) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	last := from - 1
	resumes := 0
	for last < to {
		select {
		case m := <-c.msgs:
			seq := seqOf(m.data)
			if seq == 0 {
				continue
			}
			if seq != last+1 {
				t.Fatalf("%s: seq %d after %d", c.name, seq, last)
			}
			last = seq
		case <-c.done:
			if websocket.CloseStatus(c.err) != 4001 {
				t.Fatalf("%s: closed after seq %d (%v), want every event to %d", c.name, last, c.err, to)
			}
			resumes++
			c = dialWS(t, s, token, named(fmt.Sprintf("%s, resumed %d", c.name, resumes)))
			if j := pgJoinSince(t, c, p, last); j["recovered"] != true {
				t.Fatalf("resume from %d: %v", last, j)
			}
		case <-deadline.C:
			t.Fatalf("%s: at seq %d after %v, want %d", c.name, last, within, to)
		}
	}
	t.Logf("%s: every event to %d, after %d resumes", c.name, to, resumes)
}

// slowSSE is a raw SSE stream read at about rate bytes per second.
type slowSSE struct {
	last  int64 // the last seq read
	ended chan struct{}
	err   error
}

func openSlowSSE(t *testing.T, s *testServer, token, project string, chunk int, every time.Duration) *slowSSE {
	t.Helper()
	conn := dialSmallBuffer(t, s)
	fmt.Fprintf(conn, "GET /sse?projects=%s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nAccept: text/event-stream\r\n\r\n", project, token)
	ss := &slowSSE{ended: make(chan struct{})}
	go func() {
		defer close(ss.ended)
		br := bufio.NewReaderSize(&pacedReader{r: conn, chunk: chunk, every: every}, 64<<10)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				ss.err = err
				return
			}
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "id: "); ok {
				_, seq, _ := strings.Cut(v, ":")
				n, _ := strconv.ParseInt(seq, 10, 64)
				if n != ss.last+1 {
					ss.err = fmt.Errorf("seq %d after %d", n, ss.last)
					return
				}
				ss.last = n
			}
		}
	}()
	return ss
}

// pacedReader reads at most chunk bytes per period: a client on a slow link.
type pacedReader struct {
	r     io.Reader
	chunk int
	every time.Duration
	used  int
}

func (p *pacedReader) Read(b []byte) (int, error) {
	if p.used >= p.chunk {
		time.Sleep(p.every) // the link's pace, not a wait for an event
		p.used = 0
	}
	n, err := p.r.Read(b[:min(len(b), p.chunk-p.used)])
	p.used += n
	return n, err
}

// Points 1 and 2: 3,000 events of 50 KB to a project with one WebSocket
// that never reads, three SSE streams that read 256 KB per 100 ms and one
// normal reader. The server's memory stays bounded, the normal reader gets
// every event (resuming as a client does if it falls behind), the slow ones are closed (4001 / the stream ends) and
// resume without a loss or a duplicate; the WebSocket's resume, of more
// than 2,000 such events, is many times the byte budget and streams.
func TestBudgetBoundsMemory(t *testing.T) {
	// Not parallel: the normal reader, in this process, should keep up with
	// the storm, which a machine busy with other tests would not let it.
	if testing.Short() {
		t.Skip("publishes 250 MB of events")
	}
	e := newPGEnv(t)
	e.exec(t, `INSERT INTO users (id, name) VALUES ('u0', 'Reader'), ('u1', 'Stuck'), ('u2', 'Slow')`)
	e.exec(t, `INSERT INTO projects (id, name, facilitator_id) VALUES ('p1', 'Family', 'u0')`)
	e.exec(t, `INSERT INTO project_roles (project_id, user_id, role) VALUES ('p1', 'u1', 'storyteller'), ('p1', 'u2', 'storyteller')`)
	// MAX_REPLAY above the events: every slow reader resumes, however late.
	s := startServerBin(t, plainBinary(t), "DATABASE_URL="+e.url, "MAX_REPLAY=5000")
	svc := s.serviceToken(t)
	const events, budgetMiB = 3000, 150

	reader := dialWS(t, s, s.userToken(t, "u0"), named("reader"))
	reader.join(t, "p1")

	// The WebSocket that never reads: a raw socket with a small buffer.
	stuck := dialSmallBuffer(t, s)
	fmt.Fprintf(stuck, "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", s.userToken(t, "u1"))
	stuckR := bufio.NewReader(stuck)
	stuck.SetReadDeadline(time.Now().Add(waitTimeout))
	if resp, err := http.ReadResponse(stuckR, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", err, resp)
	}
	stuck.Write(wsraw.AppendMasked(nil, wsraw.OpText, []byte(`{"event":"join_project","data":"p1","ack":1}`)))
	if h, p, err := wsraw.ReadFrame(stuckR); err != nil || !strings.Contains(string(p), "joined_project") {
		t.Fatalf("the stuck socket's join: %v %s %v", h, p, err)
	}

	var slow []*slowSSE
	for i := 0; i < 3; i++ {
		slow = append(slow, openSlowSSE(t, s, s.userToken(t, "u2"), "p1", 256<<10, 100*time.Millisecond))
	}
	eventually(t, waitTimeout, "the three slow streams open", func() bool {
		_, body := s.getJSON(t, "/api/websocket/stats", svc)
		d, _ := body["data"].(map[string]any)
		tr, _ := d["transports"].(map[string]any)
		return tr["sse"] == float64(3)
	})
	before := peakRSS(t, s)

	start := time.Now()
	published := make(chan error, 1)
	go func() { published <- e.emitMany("p1", events, 20, 50_000) }()

	// Once the server gave up on the stuck socket (its queue went past the
	// budget: messages dropped), it reads again: what was sent before the
	// close, then 4001. It resumes from its last seq below.
	eventually(t, 2*time.Minute, "the stuck WebSocket closed for its budget", func() bool {
		return s.metric(t, `sagapush_messages_dropped_total{transport="websocket"}`) > 0
	})
	t.Logf("%v: stuck closed", time.Since(start))
	var stuckLast int64
	stuck.SetReadDeadline(time.Now().Add(time.Minute))
	code := 0
	for code == 0 {
		h, p, err := wsraw.ReadFrame(stuckR)
		if err != nil {
			t.Fatalf("the stuck socket after seq %d: %v, want a close frame", stuckLast, err)
		}
		if h.Op() == wsraw.OpClose {
			code = wsraw.CloseCode(p)
			break
		}
		if seq := seqOf(p); seq > 0 {
			if seq != stuckLast+1 {
				t.Fatalf("the stuck socket got seq %d after %d", seq, stuckLast)
			}
			stuckLast = seq
		}
	}
	if code != 4001 {
		t.Fatalf("the stuck socket was closed with %d, want 4001", code)
	}

	if err := <-published; err != nil {
		t.Fatal(err)
	}
	t.Logf("%v: published", time.Since(start))
	wsSeqsResuming(t, s, reader, s.userToken(t, "u0"), "p1", 1, events, 3*time.Minute)
	peak := peakRSS(t, s)
	t.Logf("server peak RSS %.0f MiB before, %.0f MiB after %d events of 50 KB", before, peak, events)
	if peak > budgetMiB {
		t.Errorf("the server's peak RSS was %.0f MiB, over %d MiB", peak, budgetMiB)
	}

	t.Logf("%v: reader done", time.Since(start))
	// Its resume replays far more than the byte budget (about 2,900
	// events of 50 KB, 35 times it): the replay streams from the store.
	resumed := dialWS(t, s, s.userToken(t, "u1"), named("stuck, resumed"))
	j := pgJoinSince(t, resumed, "p1", stuckLast)
	if j["recovered"] != true {
		t.Fatalf("resume from %d: %v", stuckLast, j)
	}
	wsSeqs(t, resumed, stuckLast+1, events, 2*time.Minute)
	resumed.expectNothingQueued(t)

	t.Logf("%v: stuck resumed", time.Since(start))
	// The slow streams ended (4001 ends a stream) and resume from their
	// cursor at full speed: the first to the end, the others for a while.
	for i, ss := range slow {
		select {
		case <-ss.ended:
		case <-time.After(time.Minute):
			t.Fatalf("slow stream %d still open at seq %d", i, ss.last)
		}
		if ss.err != nil && ss.err != io.EOF && !strings.Contains(ss.err.Error(), "reset") {
			t.Fatalf("slow stream %d at seq %d: %v", i, ss.last, ss.err)
		}
		if ss.last >= events {
			t.Fatalf("slow stream %d read all %d events at 2.5 MB/s: it was never too slow", i, ss.last)
		}
		h := http.Header{"Last-Event-ID": {fmt.Sprintf("p1:%d", ss.last)}}
		sc := openSSE(t, s, "/sse?projects=p1", s.userToken(t, "u2"), h)
		sc.read(t) // retry:
		sc.expectJoined(t, "p1")
		to := int64(events)
		if i > 0 {
			to = min(ss.last+20, events)
		}
		for want := ss.last + 1; want <= to; want++ {
			m, ok, ended := sc.next(waitTimeout)
			if !ok {
				t.Fatalf("slow stream %d resumed from %d: nothing after %d (ended %v)", i, ss.last, want-1, ended)
			}
			if m.IsComment {
				want--
				continue
			}
			if seq := seqOf([]byte(m.Data)); seq != want {
				t.Fatalf("slow stream %d resumed from %d: %s seq %d, want %d", i, ss.last, m.Event, seq, want)
			}
		}
		sc.close()
	}

	if peak := peakRSS(t, s); peak > budgetMiB {
		t.Errorf("after the resume, the server's peak RSS was %.0f MiB, over %d MiB", peak, budgetMiB)
	}
}

// Point 3: an SSE request lists at most 200 projects; more is refused at
// once (400), before any database work.
func TestSSEProjectCap(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	ids := make([]string, 25000)
	for i := range ids {
		ids[i] = fmt.Sprintf("p%05d", i)
	}
	tok := s.userToken(t, "u1", "p00001")
	sseRefused(t, s, "/sse?projects="+strings.Join(ids, ","), tok, http.StatusBadRequest, "INVALID_MESSAGE")
	sseRefused(t, s, "/sse?projects="+strings.Join(ids[:201], ","), tok, http.StatusBadRequest, "INVALID_MESSAGE")
	sc := openSSE(t, s, "/sse?projects="+strings.Join(ids[:200], ","), tok, nil)
	sc.read(t) // retry:
	sc.expectJoined(t, "p00001")
	sc.close()
}

// Point 7: a join of a joined project with since replays as a fresh join
// would; a since the project never reached answers recovered:false.
func TestWSRejoinReplays(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	svc := s.serviceToken(t)
	c := dialWS(t, s, s.userToken(t, "u1", "p1"))
	c.join(t, "p1")
	for i := 1; i <= 3; i++ {
		publish(t, s, svc, "p1", "story_uploaded", map[string]any{"storyId": fmt.Sprint(i)})
		c.expect(t, "story_uploaded")
	}
	j := pgJoinSince(t, c, "p1", 0)
	if j["recovered"] != true || j["seq"] != float64(3) {
		t.Fatalf("re-join since 0: %v, want recovered at seq 3", j)
	}
	for i := int64(1); i <= 3; i++ {
		m := c.expectNext(t, "story_uploaded")
		if m["seq"] != float64(i) {
			t.Fatalf("replayed %v, want seq %d", m, i)
		}
	}
	publish(t, s, svc, "p1", "story_uploaded", map[string]any{"storyId": "4"})
	if m := c.expectNext(t, "story_uploaded"); m["seq"] != float64(4) {
		t.Fatalf("live after the re-join: %v, want seq 4 once", m)
	}
	c.expectNothingQueued(t)
	j = pgJoinSince(t, c, "p1", 50)
	if j["recovered"] != false {
		t.Fatalf("re-join since 50: %v, want recovered false", j)
	}
}
