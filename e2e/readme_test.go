//go:build !windows

package e2e

// The README's quickstarts, run as written: embedded mode (make run), and
// Postgres on a fresh database (create it, seed the demo family, serve).
// Each ends in Chromium on the demo page the service printed, with events
// arriving.

import (
	"bufio"
	"database/sql"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/saga-family/sagapush/internal/testsupport"
	"github.com/saga-family/sagapush/store/pgtest"
)

// readmeBlock returns the lines of the shell block after the marker.
func readmeBlock(t *testing.T, marker string) []string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), marker)
	if !ok {
		t.Fatalf("README.md has no %q", marker)
	}
	_, rest, _ = strings.Cut(rest, "```sh\n")
	block, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("the README's block does not end")
	}
	return strings.Split(strings.TrimSpace(block), "\n")
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestREADMEPostgresQuickstart(t *testing.T) {
	t.Parallel()
	lines := readmeBlock(t, "<!-- postgres-quickstart")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "createdb ") || !strings.HasSuffix(lines[3], " serve") {
		t.Fatalf("the quickstart is no longer createdb, export, demo, serve: %q", lines)
	}
	// As written, but for the database's name (tests make their own, on the
	// shared server) and the binary (this test's build).
	name := fmt.Sprintf("sagapush_readme_%d", time.Now().UnixNano())
	admin, err := sql.Open("postgres", pgtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)")
		admin.Close()
	})
	dbName := regexp.MustCompile(`\bsaga\b`)
	for i, l := range lines {
		l = strings.ReplaceAll(l, "./bin/sagapush", binPath)
		if i < 2 {
			l = dbName.ReplaceAllString(l, name)
		}
		lines[i] = l
	}
	if !strings.Contains(lines[1], "/"+name+"?") {
		t.Fatalf("the export line names no database saga: %q", lines[1])
	}
	port := freePort(t)
	script := strings.Join(lines[:3], "\n") + "\nprintf 'DATABASE_URL=%s\\nJWT_SECRET=%s\\n' \"$DATABASE_URL\" \"$JWT_SECRET\"\n"
	cmd := exec.Command("sh", "-e", "-c", script)
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port), "GORACE=atexit_sleep_ms=50")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README's commands: %v\n%s", err, out)
	}
	var env []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "DATABASE_URL=") || strings.HasPrefix(l, "JWT_SECRET=") {
			env = append(env, l)
		}
	}
	facURL := regexp.MustCompile(`As the facilitator: (\S+)`).FindStringSubmatch(string(out))
	insert := regexp.MustCompile(`psql "\$DATABASE_URL" -c "(.+)"`).FindStringSubmatch(string(out))
	if len(env) != 2 || facURL == nil || insert == nil {
		t.Fatalf("demo printed no facilitator URL or insert, or the exports did not hold:\n%s", out)
	}
	// The last line: serve, with what the export line set.
	s := startServerBin(t, binPath, append(env, fmt.Sprintf("PORT=%d", port))...)
	if s.Port != port {
		t.Fatalf("serve listens on %d, want PORT %d", s.Port, port)
	}
	// serve says what to do next on this path.
	eventually(t, waitTimeout, "serve's hint of the demo command", func() bool {
		return strings.Contains(s.stdout.String(), "with Postgres") && strings.Contains(s.stdout.String(), " demo")
	})

	page, err := url.Parse(facURL[1])
	if err != nil || page.Port() != fmt.Sprint(port) {
		t.Fatalf("demo URL %q: %v", facURL[1], err)
	}
	ctx := newBrowser(t)
	console := watchConsole(ctx)
	browserRun(t, ctx, "opening the demo page demo printed", chromedp.Navigate(facURL[1]))
	browserUntil(t, ctx, "the page to connect", `document.body.dataset.state === 'connected'`, browserWait)
	browserUntil(t, ctx, "the page to join demo-project", `window.sagaClient && window.sagaClient.lastSeq('demo-project') !== undefined`, browserWait)
	// The story from the database, by the line demo printed.
	psql := exec.Command("psql", strings.TrimPrefix(env[0], "DATABASE_URL="), "-v", "ON_ERROR_STOP=1", "-c", insert[1])
	if o, err := psql.CombinedOutput(); err != nil {
		t.Fatalf("psql: %v\n%s", err, o)
	}
	browserUntil(t, ctx, "the story on the page", `[...document.querySelectorAll('#stories .card h3')].some(h => h.textContent === 'First day of school')`, browserWait)
	browserUntil(t, ctx, "the facilitator's name from users.name", `document.body.textContent.includes('Margaret Ellis')`, browserWait)
	expectCleanDemoPage(t, ctx, console)
}

// startMakeRun runs the quickstart's command with PORT=port and returns
// the demo page URL it prints, or why it printed none: make or the server
// exited (stderr says why), or 3 minutes passed.
func startMakeRun(t *testing.T, command string, port int) (string, error) {
	t.Helper()
	cmd := exec.Command("sh", "-c", command)
	cmd.Dir = ".." // the clone's root, where a newcomer types it
	cmd.Env = append(testsupport.CleanEnv(), fmt.Sprintf("PORT=%d", port))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // make, then the server it runs
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr testsupport.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	found := make(chan string, 1)
	go func() {
		// make builds first: the demo URL comes once the server listens.
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if _, u, ok := strings.Cut(sc.Text(), "Demo page:"); ok {
				found <- strings.TrimSpace(u)
			}
		}
		cmd.Wait() // after the last read of the pipe
		close(exited)
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("make run's stderr:\n%s", stderr.String())
		}
	})
	select {
	case u := <-found:
		return u, nil
	case <-exited:
		return "", fmt.Errorf("make run exited (%v) before printing a demo page URL; stderr:\n%s", cmd.ProcessState, stderr.String())
	case <-time.After(3 * time.Minute):
		return "", fmt.Errorf("make run printed no demo page URL within 3 minutes; stderr:\n%s", stderr.String())
	}
}

func TestREADMEEmbeddedQuickstart(t *testing.T) {
	t.Parallel()
	lines := readmeBlock(t, "<!-- embedded-quickstart")
	if len(lines) != 1 || lines[0] != "make run" {
		t.Fatalf("the embedded quickstart is no longer make run: %q", lines)
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatalf("the README's quickstart needs make: %v", err)
	}
	// The port is free when chosen, but make builds before the server
	// binds it and another process may take it meanwhile: then try again.
	var demo string
	var port int
	for attempt := 1; ; attempt++ {
		port = freePort(t)
		var err error
		if demo, err = startMakeRun(t, lines[0], port); err == nil {
			break
		} else if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("attempt %d: %v", attempt, err)
	}
	page, err := url.Parse(demo)
	if err != nil || page.Port() != fmt.Sprint(port) {
		t.Fatalf("demo URL %q: %v", demo, err)
	}
	frag, _ := url.ParseQuery(page.Fragment)
	ctx := newBrowser(t)
	console := watchConsole(ctx)
	browserRun(t, ctx, "opening the demo page make run printed", chromedp.Navigate(demo))
	browserUntil(t, ctx, "the page to connect", `document.body.dataset.state === 'connected'`, browserWait)
	browserUntil(t, ctx, "the page to join", fmt.Sprintf(`window.sagaClient && window.sagaClient.lastSeq(%q) !== undefined`, frag.Get("project")), browserWait)
	// The publish the output prints, with its service token.
	body := fmt.Sprintf(`{"projectId":%q,"event":"story_uploaded","data":{"story":{"id":"s1","title":"First day of school"}}}`, frag.Get("project"))
	req, _ := http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d/api/events", port), strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+frag.Get("serviceToken"))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("publish: %s", resp.Status)
	}
	browserUntil(t, ctx, "the story on the page", `[...document.querySelectorAll('#stories .card h3')].some(h => h.textContent === 'First day of school')`, browserWait)
	expectCleanDemoPage(t, ctx, console)
}
