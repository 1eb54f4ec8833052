package e2e

// The server under test: TestMain builds the binary once, with the race
// detector, and startServer runs it with a chosen environment, keeps its
// stderr and stops it when the test ends.

import (
	"bufio"
	"fmt"
	"io"
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

	"github.com/saga-family/sagapush/internal/testsupport"
)

// testSecret is the JWT_SECRET of every test server unless overridden.
const testSecret = "sagapush-test-secret-0123456789abcdef"

// binPath is the binary the tests run (TestMain sets it).
var binPath string

func TestMain(m *testing.M) {
	code, err := testMain(m)
	if plainPath != "" {
		os.RemoveAll(filepath.Dir(plainPath))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func testMain(m *testing.M) (int, error) {
	if p := os.Getenv("SAGAPUSH_TEST_BIN"); p != "" {
		binPath = p
		return m.Run(), nil
	}
	dir, err := os.MkdirTemp("", "sagapush-test-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	binPath = filepath.Join(dir, "sagapush")
	// The module's root package, whatever the working directory (this one).
	// -buildvcs=auto stamps the commit (sagapush version) from a clone,
	// whatever GOFLAGS says.
	cmd := exec.Command("go", "build", "-race", "-buildvcs=auto", "-o", binPath, "github.com/saga-family/sagapush")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("go build -race github.com/saga-family/sagapush: %w", err)
	}
	return m.Run(), nil
}

var (
	plainOnce sync.Once
	plainPath string
	plainErr  error
)

// plainBinary builds the server once without the race detector, for the
// tests that read the process's memory: the race runtime multiplies it.
// SAGAPUSH_TEST_PLAIN_BIN names one built already.
func plainBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("SAGAPUSH_TEST_PLAIN_BIN"); p != "" {
		return p
	}
	plainOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sagapush-plain-")
		if err != nil {
			plainErr = err
			return
		}
		plainPath = filepath.Join(dir, "sagapush")
		out, err := exec.Command("go", "build", "-o", plainPath, "github.com/saga-family/sagapush").CombinedOutput()
		if err != nil {
			plainErr = fmt.Errorf("go build github.com/saga-family/sagapush: %v\n%s", err, out)
		}
	})
	if plainErr != nil {
		t.Fatal(plainErr)
	}
	return plainPath
}

// testServer is one running server process.
type testServer struct {
	URL    string // http://127.0.0.1:PORT
	WSURL  string // ws://127.0.0.1:PORT/ws
	Port   int
	Secret []byte // JWT_SECRET ("" when the test unset it)

	cmd    *exec.Cmd
	stderr *testsupport.SyncBuffer
	stdout *testsupport.SyncBuffer
	exited chan struct{} // closed once the process is reaped
	state  *os.ProcessState
}

// listeningRE finds the listening line in either LOG_FORMAT.
var listeningRE = regexp.MustCompile(`msg=listening addr=(\S+)|"msg":"listening","addr":"([^"]+)"`)

// startServer runs the binary with PORT=0, JWT_SECRET=testSecret and no
// DATABASE_URL, then env (KEY=VALUE, later wins), and waits (15 s at most)
// until it listens.
func startServer(t testing.TB, env ...string) *testServer {
	t.Helper()
	return startServerBin(t, binPath, env...)
}

// startServerBin is startServer with another binary (plainBinary).
func startServerBin(t testing.TB, bin string, env ...string) *testServer {
	t.Helper()
	full := append(testsupport.CleanEnv(), "PORT=0", "JWT_SECRET="+testSecret)
	if os.Getenv("GORACE") == "" {
		// The race runtime sleeps 1 s at exit by default: every test pays it.
		full = append(full, "GORACE=atexit_sleep_ms=50")
	}
	full = append(full, env...)
	s := &testServer{stderr: &testsupport.SyncBuffer{}, stdout: &testsupport.SyncBuffer{}, exited: make(chan struct{})}
	for _, kv := range full {
		if v, ok := strings.CutPrefix(kv, "JWT_SECRET="); ok {
			s.Secret = []byte(v)
		}
	}

	s.cmd = exec.Command(bin, "serve")
	s.cmd.Env = full
	s.cmd.Stdout = s.stdout
	pipe, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start server: %v", err)
	}
	addr := make(chan string, 1)
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		found := false
		for sc.Scan() {
			line := sc.Text()
			s.stderr.Write([]byte(line + "\n"))
			if !found {
				if m := listeningRE.FindStringSubmatch(line); m != nil {
					found = true
					addr <- m[1] + m[2] // one of them is empty
				}
			}
		}
		io.Copy(s.stderr, pipe) // a line over 1 MiB: keep the rest anyway
	}()
	go func() {
		<-scanDone // Wait must follow the last read of the pipe
		s.cmd.Wait()
		s.state = s.cmd.ProcessState
		close(s.exited)
	}()
	t.Cleanup(func() {
		code := s.stop(t)
		out := s.stderr.String()
		if strings.Contains(out, "WARNING: DATA RACE") || code == 66 {
			t.Errorf("the server reported a data race (exit code %d)", code)
		}
		if t.Failed() {
			const keep = 64 << 10
			if len(out) > keep {
				out = "...\n" + out[len(out)-keep:]
			}
			t.Logf("server stderr:\n%s", out)
		}
	})

	select {
	case a := <-addr:
		i := strings.LastIndexByte(a, ':')
		port, err := strconv.Atoi(a[i+1:])
		if err != nil {
			t.Fatalf("cannot parse listening address %q", a)
		}
		s.Port = port
		s.URL = fmt.Sprintf("http://127.0.0.1:%d", port)
		s.WSURL = fmt.Sprintf("ws://127.0.0.1:%d/ws", port)
	case <-s.exited:
		t.Fatalf("server exited before listening: %v", s.state)
	case <-time.After(15 * time.Second):
		t.Fatal("server did not listen within 15 s")
	}
	return s
}

// stop sends SIGTERM (SIGKILL after 10 s) unless the process already exited,
// waits for it and returns its exit code (-1 when killed by a signal).
func (s *testServer) stop(t testing.TB) int {
	t.Helper()
	select {
	case <-s.exited:
	default:
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			t.Errorf("server did not exit within 10 s of SIGTERM; killing it")
			s.cmd.Process.Kill()
			<-s.exited
		}
	}
	return s.state.ExitCode()
}

// signal sends sig to the server process.
func (s *testServer) signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal: %v", err)
	}
}
