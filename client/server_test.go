package client_test

// A small starter for the real server binary (the e2e package's harness
// cannot be imported from here): it builds the binary once (with -race, or
// takes SAGAPUSH_TEST_BIN), starts it with a chosen environment and stops it
// with a signal.

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/lib/pq" // the postgres driver of database/sql

	"github.com/saga-family/sagapush/auth"
	"github.com/saga-family/sagapush/internal/testsupport"
)

const testSecret = "sagapush-client-test-secret-0123456789"

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// serverBinary builds the server once per test binary.
func serverBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if p := os.Getenv("SAGAPUSH_TEST_BIN"); p != "" {
			binPath = p
			return
		}
		buildDir, buildErr = os.MkdirTemp("", "sagapush-client-test-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(buildDir, "sagapush")
		cmd := exec.Command("go", "build", "-race", "-o", binPath, "github.com/saga-family/sagapush")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			buildErr = fmt.Errorf("go build -race github.com/saga-family/sagapush: %v\n%s", err, out.String())
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// serverEnvKeys are never inherited from the test's environment.
// server is one running server process.
type server struct {
	URL    string
	Port   int
	cmd    *exec.Cmd
	stderr *testsupport.SyncBuffer
	exited chan struct{}
}

var listeningRE = regexp.MustCompile(`msg=listening addr=(\S+)`)

// startServer runs the binary with JWT_SECRET=testSecret, PORT=0 and no
// DATABASE_URL, then env (KEY=VALUE, later wins), and waits until it
// listens. It is stopped (SIGTERM, then SIGKILL) when the test ends.
func startServer(t testing.TB, env ...string) *server {
	t.Helper()
	full := append(testsupport.CleanEnv(), "PORT=0", "JWT_SECRET="+testSecret)
	full = append(full, env...)
	s := &server{stderr: &testsupport.SyncBuffer{}, exited: make(chan struct{})}
	s.cmd = exec.Command(serverBinary(t), "serve")
	s.cmd.Env = full
	pipe, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start server: %v", err)
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		found := false
		for sc.Scan() {
			line := sc.Text()
			s.stderr.Write([]byte(line + "\n"))
			if m := listeningRE.FindStringSubmatch(line); m != nil && !found {
				found = true
				addr <- m[1]
			}
		}
		io.Copy(s.stderr, pipe)
		s.cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		s.stop(t, syscall.SIGTERM)
		out := s.stderr.String()
		if strings.Contains(out, "WARNING: DATA RACE") {
			t.Errorf("the server reported a data race")
		}
		if t.Failed() {
			if len(out) > 32<<10 {
				out = "...\n" + out[len(out)-32<<10:]
			}
			t.Logf("server stderr:\n%s", out)
		}
	})
	select {
	case a := <-addr:
		port, err := strconv.Atoi(a[strings.LastIndexByte(a, ':')+1:])
		if err != nil {
			t.Fatalf("cannot parse listening address %q", a)
		}
		s.Port = port
		s.URL = fmt.Sprintf("http://127.0.0.1:%d", port)
	case <-s.exited:
		t.Fatalf("server exited before listening:\n%s", s.stderr.String())
	case <-time.After(20 * time.Second):
		t.Fatal("server did not listen within 20 s")
	}
	return s
}

// stop sends sig (SIGKILL after 10 s) unless the process exited, and waits
// for it.
func (s *server) stop(t testing.TB, sig syscall.Signal) {
	t.Helper()
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		t.Errorf("server did not exit within 10 s of %v; killing it", sig)
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// freePort returns a port free for a server to restart on.
func freePort(t testing.TB) int { return testsupport.FreePort(t) }

// token mints an HS256 token with the test secret.
func token(t testing.TB, c auth.Claims, ttl time.Duration) string {
	t.Helper()
	tok, err := auth.Mint([]byte(testSecret), c, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func serviceToken(t testing.TB) string {
	return token(t, auth.Claims{UserID: "backend", Role: auth.RoleService}, time.Hour)
}

// publish posts a domain event as the backend does and returns its seq.
func publish(t testing.TB, s *server, projectID, event string, data any) int64 {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"projectId": projectID, "event": event, "data": data})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", s.URL+"/api/events", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+serviceToken(t))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	defer resp.Body.Close()
	var body struct {
		Seq int64 `json:"seq"`
	}
	rb, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted || json.Unmarshal(rb, &body) != nil {
		t.Fatalf("publish: status %d, body %s", resp.StatusCode, rb)
	}
	return body.Seq
}

// openDB opens a database for seeding and inserts.
func openDB(t testing.TB, url string) *sql.DB {
	t.Helper()
	db, err := sql.Open("postgres", url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func mustExec(t testing.TB, db *sql.DB, query string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}
