package e2e

// Browser tests: the demo page and web/client.js in headless Chromium
// (Debian's package at /usr/bin/chromium; never downloaded), driven by
// chromedp, against the real binary (see server_test.go). Without chromium
// they skip, except under CI=true where they fail.
//
// Every wait is bounded: a JS condition is polled with a timeout, never
// slept on. A screenshot of the demo page is written to ARTIFACTS_DIR
// (default: artifacts/ at the repository root, not committed).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/saga-family/sagapush/auth"
	"github.com/saga-family/sagapush/internal/testsupport"
)

// chromiumPath is Debian's chromium (`apt-get install chromium`).
const chromiumPath = "/usr/bin/chromium"

// browserWait bounds one wait for a condition in the page.
const browserWait = 20 * time.Second

// newBrowser starts a headless Chromium with a fresh profile and returns a
// chromedp context for one tab, closed when the test ends.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		msg := fmt.Sprintf("browser tests need Debian's chromium at %s (apt-get install chromium; .ci/run installs it): %v", chromiumPath, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 1000),
	)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc() // waits for the browser to exit
	})
	startTab(t, ctx, cancel, "chromium")
	return ctx
}

// newTab opens another tab of ctx's browser; cancel closes it (and only
// it).
func newTab(t *testing.T, ctx context.Context) (context.Context, context.CancelFunc) {
	t.Helper()
	tab, cancel := chromedp.NewContext(ctx)
	t.Cleanup(cancel)
	startTab(t, tab, cancel, "a new tab")
	return tab, cancel
}

// startTab runs ctx's first action, which starts its browser or opens its
// tab. What it starts lives as long as that action's context: give it ctx
// itself, and bound the wait from outside.
func startTab(t *testing.T, ctx context.Context, cancel context.CancelFunc, what string) {
	t.Helper()
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("starting %s: %v", what, err)
		}
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("%s did not start within 30 s", what)
	}
}

// browserConsole collects what the page writes to its console: console API
// calls, uncaught exceptions and browser log entries.
type browserConsole struct {
	mu   sync.Mutex
	msgs []chromedp.ConsoleMessage
}

// watchConsole subscribes to the tab's console; call it before navigating.
func watchConsole(ctx context.Context) *browserConsole {
	c := &browserConsole{}
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			c.mu.Lock()
			c.msgs = append(c.msgs, m)
			c.mu.Unlock()
		}
	}()
	return c
}

// errors returns the errors and exceptions seen so far.
func (c *browserConsole) errors() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, m := range c.msgs {
		if m.Type == chromedp.ConsoleError || m.IsException() {
			s := m.String()
			if m.URL != "" {
				s += fmt.Sprintf(" (%s:%d)", m.URL, m.Line+1)
			}
			if m.Exception != nil && m.Exception.Exception != nil && m.Exception.Exception.Description != "" {
				s += ": " + m.Exception.Exception.Description
			}
			out = append(out, s)
		}
	}
	return out
}

func (c *browserConsole) all() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	for _, m := range c.msgs {
		fmt.Fprintf(&b, "  %s\n", m)
	}
	return b.String()
}

// browserRun runs one bounded action.
func browserRun[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, browserWait)
	defer cancel()
	v, err := chromedp.Run(tctx, a)
	if err != nil {
		t.Fatalf("%s: %v%s", what, err, pageDiagnostics(ctx))
	}
	return v
}

// browserEval evaluates a JS expression, awaiting a promise, and decodes its
// value into T.
func browserEval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	return browserRun(t, ctx, "evaluating "+expr, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
}

// browserUntil polls a JS condition until it is truthy, for at most d.
func browserUntil(t *testing.T, ctx context.Context, what, cond string, d time.Duration) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, d+5*time.Second)
	defer cancel()
	_, err := chromedp.Run(tctx, chromedp.Poll[chromedp.Void](cond,
		chromedp.WithPollingTimeout(d), chromedp.WithPollingInterval(25*time.Millisecond)))
	if err != nil {
		t.Fatalf("waiting %v for %s (%s): %v%s", d, what, cond, err, pageDiagnostics(ctx))
	}
}

// pageDiagnostics describes the page for a failure message.
func pageDiagnostics(ctx context.Context) string {
	tctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	s, err := chromedp.Run(tctx, chromedp.Evaluate[string](`JSON.stringify({
		url: location.href,
		state: document.body && document.body.dataset.state,
		transport: document.body && document.body.dataset.transport,
		errors: document.getElementById('errors') && document.getElementById('errors').innerText,
		log: document.getElementById('log') && document.getElementById('log').innerText.slice(0, 1500),
		test: window.__t && { seqs: window.__t.seqs, states: window.__t.states, errors: window.__t.errors,
			resyncs: window.__t.resyncs, joined: window.__t.joined, failed: window.__t.failed,
			state: window.__t.client && window.__t.client.state, transport: window.__t.client && window.__t.client.transport },
	})`))
	if err != nil {
		return "\n(page state unavailable: " + err.Error() + ")"
	}
	return "\npage: " + s
}

// jsLiteral encodes v as a JavaScript literal.
func jsLiteral(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// startTestClient adds a module script to the page that imports /client.js,
// connects with token (over transports, default both) and joins projectID. window.__t then holds the client
// and what it saw: seqs (story_uploaded), states, errors, resyncs, presence
// (each 'presence' event: {projectId, online, at}), joined (the join's
// answer) or failed (a rejection).
func startTestClient(t *testing.T, ctx context.Context, token, projectID string, transports ...string) {
	t.Helper()
	if len(transports) == 0 {
		transports = []string{"websocket", "sse"}
	}
	module := `
import { SagaClient } from '/client.js'
const t = window.__t
const c = new SagaClient({ token: ` + jsLiteral(t, token) + `, transports: ` + jsLiteral(t, transports) + `,
  reconnectDelay: 100, maxReconnectDelay: 1000 })
t.client = c
c.on('state', (s) => t.states.push(s))
c.on('error', (e) => t.errors.push(e))
c.on('resync', (p) => t.resyncs.push(p))
c.on('presence', (projectId, online) => t.presence.push({ projectId, online, at: Date.now() }))
c.onStoryUploaded((data, msg) => { t.seqs.push(msg.seq); t.events.push(msg) })
c.connect().then(() => c.joinProject(` + jsLiteral(t, projectID) + `))
  .then((joined) => { t.joined = joined }, (err) => { t.failed = err })
`
	browserEval[chromedp.Void](t, ctx, `(() => {
		window.__t = { seqs: [], events: [], states: [], errors: [], resyncs: [], presence: [] }
		const s = document.createElement('script')
		s.type = 'module'
		s.textContent = `+jsLiteral(t, module)+`
		s.onerror = () => { window.__t.failed = { code: 'MODULE_ERROR', message: 'the module script failed to load' } }
		document.head.append(s)
	})()`)
	browserUntil(t, ctx, "the client to join "+projectID, `window.__t.joined || window.__t.failed`, browserWait)
	if failed := browserEval[any](t, ctx, `window.__t.failed || null`); failed != nil {
		t.Fatalf("connect or join failed: %v%s", failed, pageDiagnostics(ctx))
	}
}

// artifactsDir is ARTIFACTS_DIR, default artifacts/ at the repository root
// (git-ignored), the parent of this package's directory.
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("ARTIFACTS_DIR")
	if dir == "" {
		dir = filepath.Join("..", "artifacts")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// (a) The demo page in embedded mode, opened as `make run` prints it (and
// with transport=sse): no console error, connected, a published story
// appears as a card, ping resolves. A screenshot of each is saved.
func TestBrowserDemoPage(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	for _, tc := range []struct{ param, transport, shot string }{
		{"", "websocket", "browser-demo-page.png"},
		{"sse", "sse", "browser-demo-page-sse.png"},
	} {
		t.Run(tc.transport, func(t *testing.T) {
			t.Parallel()
			testDemoPage(t, s, tc.param, tc.transport, tc.shot)
		})
	}
}

func testDemoPage(t *testing.T, s *testServer, transportParam, wantTransport, shot string) {
	project := "demo-" + wantTransport // its own seqs
	user := s.token(t, auth.Claims{UserID: "alice", Name: "Alice", Projects: []string{project}}, time.Hour)
	svc := s.serviceToken(t)
	ctx := newBrowser(t)
	console := watchConsole(ctx)
	q := url.Values{"token": {user}, "project": {project}, "serviceToken": {svc}}
	if transportParam != "" {
		q.Set("transport", transportParam)
	}
	// After #, as `make run` prints it: the tokens never reach the server.
	browserRun(t, ctx, "opening the demo page", chromedp.Navigate(s.URL+"/#"+q.Encode()))

	browserUntil(t, ctx, "the page to connect", `document.body.dataset.state === 'connected'`, browserWait)
	browserUntil(t, ctx, "the page to join "+project, fmt.Sprintf(`window.sagaClient && window.sagaClient.lastSeq(%q) !== undefined`, project), browserWait)
	if tr := browserEval[string](t, ctx, `document.body.dataset.transport`); tr != wantTransport {
		t.Errorf("transport %q, want %s", tr, wantTransport)
	}
	if hidden := browserEval[bool](t, ctx, `document.getElementById('demo-panel').hidden`); hidden {
		t.Error("the demo panel is hidden although a service token was given")
	}

	story := map[string]any{"id": "story-1", "projectId": project, "title": "How Grandpa met Grandma", "status": "processing",
		"audioUrl": "https://media.example.com/stories/story-1.m4a", "createdAt": time.Now().UTC().Format(time.RFC3339)}
	seq := publish(t, s, svc, project, "story_uploaded", map[string]any{"story": story})
	card := `document.querySelector('#stories .card[data-story-id="story-1"]')`
	browserUntil(t, ctx, "the story card", card+` && `+card+`.querySelector('h3').textContent === 'How Grandpa met Grandma'`, browserWait)
	publish(t, s, svc, project, "transcript_updated", map[string]any{"storyId": "story-1", "transcript": "We met at a dance in the summer of 1952."})
	publish(t, s, svc, project, "interaction_added", map[string]any{"storyId": "story-1",
		"interaction": map[string]any{"id": "i-1", "storyId": "story-1", "facilitatorId": "alice", "type": "followup", "content": "Who asked whom to dance?"}})
	publish(t, s, svc, project, "story_processed", map[string]any{"storyId": "story-1", "status": "completed"})
	publish(t, s, svc, project, "export_started", map[string]any{"exportId": "export-1", "status": "processing"})
	last := publish(t, s, svc, project, "export_progress", map[string]any{"exportId": "export-1", "progress": 60})
	browserUntil(t, ctx, "every event", fmt.Sprintf(`window.sagaClient.lastSeq(%q) === %d`, project, last), browserWait)
	browserUntil(t, ctx, "the transcript, the interaction and the status on the card",
		card+`.querySelector('.transcript').textContent.includes('summer of 1952') && `+
			card+`.querySelector('.interactions').textContent.includes('Who asked whom') && `+
			card+`.querySelector('.chip').textContent === 'completed'`, browserWait)
	if last != seq+5 {
		t.Errorf("seqs %d..%d", seq, last)
	}

	rtt := browserEval[float64](t, ctx, `window.sagaClient.ping()`)
	if rtt < 0 || rtt > float64(browserWait.Milliseconds()) {
		t.Errorf("ping() = %v ms", rtt)
	}
	browserRun(t, ctx, "clicking Ping", chromedp.Click(chromedp.ID("ping-btn"), chromedp.NodeVisible))
	browserUntil(t, ctx, "the ping result", `document.getElementById('ping-result').textContent.includes('round trip')`, browserWait)

	saveScreenshot(t, ctx, shot, "the demo page")
	expectCleanDemoPage(t, ctx, console)
}

// saveScreenshot saves a screenshot of the whole page as name in
// artifactsDir.
func saveScreenshot(t *testing.T, ctx context.Context, name, what string) {
	t.Helper()
	png := browserRun(t, ctx, "taking a screenshot", chromedp.FullScreenshot(100))
	path := filepath.Join(artifactsDir(t), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of %s: %s", what, path)
}

// expectCleanDemoPage fails the test when the demo page wrote an error to
// its console or shows one.
func expectCleanDemoPage(t *testing.T, ctx context.Context, console *browserConsole) {
	t.Helper()
	if errs := console.errors(); len(errs) > 0 {
		t.Errorf("console errors on the demo page:\n  %s\nconsole:\n%s", strings.Join(errs, "\n  "), console.all())
	}
	if n := browserEval[int](t, ctx, `document.getElementById('errors').children.length`); n != 0 {
		t.Errorf("the page shows %d errors: %s", n, browserEval[string](t, ctx, `document.getElementById('errors').innerText`))
	}
}

// (b) client.js imported by a module script of a page: connect, join,
// receive, ping.
func TestBrowserClientModule(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	ctx := newBrowser(t)
	console := watchConsole(ctx)
	browserRun(t, ctx, "opening a page of the server", chromedp.Navigate(s.URL+"/?autoconnect=0"))
	startTestClient(t, ctx, s.userToken(t, "bob", "p1"), "p1")
	if tr := browserEval[string](t, ctx, `window.__t.client.transport`); tr != "websocket" {
		t.Errorf("transport %q, want websocket", tr)
	}
	seq := publish(t, s, s.serviceToken(t), "p1", "story_uploaded", map[string]any{"story": map[string]any{"id": "s1", "projectId": "p1", "title": "First"}})
	browserUntil(t, ctx, "the event", `window.__t.seqs.length === 1`, browserWait)
	got := browserEval[map[string]any](t, ctx, `window.__t.events[0]`)
	if got["event"] != "story_uploaded" || got["projectId"] != "p1" || got["seq"] != float64(seq) {
		t.Errorf("event %v, want story_uploaded seq %d of p1", got, seq)
	}
	if title := browserEval[string](t, ctx, `window.__t.events[0].data.story.title`); title != "First" {
		t.Errorf("title %q", title)
	}
	if rtt := browserEval[float64](t, ctx, `window.__t.client.ping()`); rtt < 0 {
		t.Errorf("ping() = %v", rtt)
	}
	if errs := console.errors(); len(errs) > 0 {
		t.Errorf("console errors:\n  %s", strings.Join(errs, "\n  "))
	}
}

// (c) A browser whose WebSocket throws: the client falls back to SSE and
// still receives.
func TestBrowserSSEFallback(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	ctx := newBrowser(t)
	_, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{
		Source: `window.__wsTries = 0
window.WebSocket = function WebSocket() { window.__wsTries++; throw new Error('WebSocket is disabled by the test') }`,
	})
	if err != nil {
		t.Fatal(err)
	}
	browserRun(t, ctx, "opening a page of the server", chromedp.Navigate(s.URL+"/?autoconnect=0"))
	startTestClient(t, ctx, s.userToken(t, "carol", "p1"), "p1")
	if tr := browserEval[string](t, ctx, `window.__t.client.transport`); tr != "sse" {
		t.Fatalf("transport %q, want sse", tr)
	}
	if n := browserEval[int](t, ctx, `window.__wsTries`); n < 1 {
		t.Errorf("the client never tried the WebSocket")
	}
	svc := s.serviceToken(t)
	for i := range 3 {
		publish(t, s, svc, "p1", "story_uploaded", map[string]any{"story": map[string]any{"id": "s" + strconv.Itoa(i), "projectId": "p1"}})
	}
	browserUntil(t, ctx, "three events over SSE", `window.__t.seqs.length === 3`, browserWait)
	if seqs := browserEval[[]int](t, ctx, `window.__t.seqs`); fmt.Sprint(seqs) != "[1 2 3]" {
		t.Errorf("seqs %v, want [1 2 3]", seqs)
	}
	if rtt := browserEval[float64](t, ctx, `window.__t.client.ping()`); rtt < 0 {
		t.Errorf("ping() = %v", rtt)
	}
	if tr := browserEval[string](t, ctx, `window.__t.client.transport`); tr != "sse" {
		t.Errorf("transport %q after the events, want sse", tr)
	}
}

// (d) Database mode: the server dies while the page is joined, rows are
// inserted while it is down, a new server starts on the same port; the
// page's client reconnects by itself and gets every missed event once, in
// order.
func TestBrowserReconnectDatabase(t *testing.T) {
	t.Parallel()
	for _, transport := range []string{"websocket", "sse"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			testBrowserReconnect(t, transport)
		})
	}
}

func testBrowserReconnect(t *testing.T, transport string) {
	d := newPGEnv(t)
	d.exec(t, `INSERT INTO users (id, name) VALUES ('u1', 'Facilitator')`)
	d.exec(t, `INSERT INTO projects (id, name, facilitator_id) VALUES ('p1', 'Family', 'u1')`)
	insertStories := func(n int) {
		t.Helper()
		for range n {
			d.exec(t, `INSERT INTO stories (project_id, title) VALUES ('p1', 'A story')`)
		}
	}

	env := []string{"PORT=" + strconv.Itoa(testsupport.FreePort(t)), "RECONNECT_AFTER_MS=200"}
	s1 := d.start(t, env...)
	ctx := newBrowser(t)
	browserRun(t, ctx, "opening a page of the server", chromedp.Navigate(s1.URL+"/?autoconnect=0"))
	startTestClient(t, ctx, s1.token(t, auth.Claims{UserID: "u1"}, time.Hour), "p1", transport)
	insertStories(2)
	browserUntil(t, ctx, "events 1 and 2", `window.__t.seqs.length === 2`, browserWait)

	if err := s1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s1.exited:
	case <-time.After(waitTimeout):
		t.Fatal("the killed server did not exit")
	}
	browserUntil(t, ctx, "the client to notice", `window.__t.client.state !== 'connected'`, browserWait)
	insertStories(3) // committed while no server runs
	d.start(t, env...)
	insertStories(2) // while the page reconnects, or after
	browserUntil(t, ctx, "the missed and new events", `window.__t.seqs.length >= 7`, 30*time.Second)
	insertStories(1) // nothing comes twice: the next one is seq 8
	browserUntil(t, ctx, "event 8", `window.__t.seqs.length >= 8`, browserWait)
	if seqs := browserEval[[]int](t, ctx, `window.__t.seqs`); fmt.Sprint(seqs) != "[1 2 3 4 5 6 7 8]" {
		t.Errorf("seqs %v, want [1 2 3 4 5 6 7 8]: every event once, in order", seqs)
	}
	if r := browserEval[[]string](t, ctx, `window.__t.resyncs`); len(r) != 0 {
		t.Errorf("resyncs %v: the resume must recover", r)
	}
	if st := browserEval[string](t, ctx, `window.__t.client.state + ' ' + window.__t.client.transport`); st != "connected "+transport {
		t.Errorf("client %s, want connected %s", st, transport)
	}
	t.Logf("states: %v", browserEval[[]string](t, ctx, `window.__t.states`))
}

// requestLog is every request a tab made: "METHOD URL" (WebSockets as
// "WS URL"), and the Authorization header of each POST /api/tickets.
type requestLog struct {
	mu         sync.Mutex
	requests   []string
	ticketAuth []string
}

// watchRequests records the tab's requests from the browser's network
// events; call it before navigating.
func watchRequests(t *testing.T, ctx context.Context) *requestLog {
	t.Helper()
	l := &requestLog{}
	err := chromedp.Listen(ctx, func(ev any) {
		l.mu.Lock()
		defer l.mu.Unlock()
		switch e := ev.(type) {
		case *network.EventRequestWillBeSent:
			l.requests = append(l.requests, e.Request.Method+" "+e.Request.URL)
			if e.Request.Method == "POST" && strings.HasSuffix(e.Request.URL, "/api/tickets") {
				a, _ := e.Request.Headers["Authorization"].(string)
				l.ticketAuth = append(l.ticketAuth, a)
			}
		case *network.EventWebSocketCreated:
			l.requests = append(l.requests, "WS "+e.URL)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// (e) web/client.js never puts a token in a URL: against a server that
// refuses ?token=, on each transport, through a second join (SSE re-opens
// its stream) and a reconnect, every request the browser made is free of
// tokens, every connection came with a ticket, and every ticket was asked
// for with the token in the Authorization header.
func TestBrowserNoTokenInURL(t *testing.T) {
	t.Parallel()
	s := startServer(t, "ALLOW_TOKEN_IN_URL=false")
	svc := s.serviceToken(t)
	for _, transport := range []string{"websocket", "sse"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			p1, p2 := "p1-"+transport, "p2-"+transport
			tok := s.userToken(t, "dave", p1, p2)
			ctx := newBrowser(t)
			log := watchRequests(t, ctx)
			browserRun(t, ctx, "opening a page of the server", chromedp.Navigate(s.URL+"/?autoconnect=0"))
			startTestClient(t, ctx, tok, p1, transport)
			browserEval[bool](t, ctx, `window.__t.client.joinProject(`+jsLiteral(t, p2)+`).then(() => true)`)
			publish(t, s, svc, p1, "story_uploaded", map[string]any{"story": map[string]any{"id": "s1", "projectId": p1}})
			browserUntil(t, ctx, "the first event", `window.__t.seqs.length === 1`, browserWait)
			browserEval[bool](t, ctx, `(window.__t.client.disconnect(), window.__t.client.connect().then(() => true))`)
			publish(t, s, svc, p1, "story_uploaded", map[string]any{"story": map[string]any{"id": "s2", "projectId": p1}})
			browserUntil(t, ctx, "the event after the reconnect", `window.__t.seqs.length === 2`, browserWait)
			if tr := browserEval[string](t, ctx, `window.__t.client.transport`); tr != transport {
				t.Errorf("transport %q, want %s", tr, transport)
			}

			log.mu.Lock()
			defer log.mu.Unlock()
			connections := testsupport.TicketConnections(t, log.requests)
			if connections < 2 {
				t.Errorf("%d connections by ticket, want one before and one after the reconnect at least: %v", connections, log.requests)
			}
			if len(log.ticketAuth) < connections {
				t.Errorf("%d ticket requests for %d connections", len(log.ticketAuth), connections)
			}
			for _, a := range log.ticketAuth {
				if a != "Bearer "+tok {
					t.Errorf("POST /api/tickets with Authorization %q, want the token", a)
				}
			}
		})
	}
}

// (f) The demo page's help names the real binary and project, and a
// SERVER_SHUTDOWN banner goes once the page is connected again to a
// restarted server.
func TestBrowserDemoBannerClears(t *testing.T) {
	t.Parallel()
	env := []string{"PORT=" + strconv.Itoa(testsupport.FreePort(t)), "RECONNECT_AFTER_MS=200"}
	s1 := startServer(t, env...)
	user := s1.token(t, auth.Claims{UserID: "alice", Name: "Alice", Projects: []string{"demo-project"}}, time.Hour)
	ctx := newBrowser(t)
	browserRun(t, ctx, "opening the demo page", chromedp.Navigate(s1.URL+"/#"+url.Values{"token": {user}, "project": {"demo-project"}}.Encode()))
	browserUntil(t, ctx, "the page to connect", `document.body.dataset.state === 'connected'`, browserWait)
	if help := browserEval[string](t, ctx, `document.getElementById('token-command').textContent`); help != "./bin/sagapush token --user alice --name Alice --projects demo-project" {
		t.Errorf("the page's token command is %q", help)
	}

	s1.stop(t)
	const banner = `document.querySelector('#errors [data-code="SERVER_SHUTDOWN"]')`
	browserUntil(t, ctx, "the SERVER_SHUTDOWN banner", banner+` !== null`, browserWait)
	browserUntil(t, ctx, "the page to notice", `document.body.dataset.state !== 'connected'`, browserWait)
	startServer(t, env...)
	browserUntil(t, ctx, "the page to reconnect", `document.body.dataset.state === 'connected'`, 30*time.Second)
	if browserEval[bool](t, ctx, banner+` !== null`) {
		t.Error("the SERVER_SHUTDOWN banner is still shown once connected again")
	}
}
