//go:build unix

package e2e

// Saga push behind a real nginx with a plain proxy_pass configuration:
// nginx's response buffering stays ON, and the server's
// "X-Accel-Buffering: no" must be what lets SSE events through at once
// (NOTES.md, "SSE behind proxies"). WebSockets go through a /ws location
// with the usual Upgrade headers.

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/saga-family/sagapush/internal/testsupport"
)

const nginxBin = "/usr/sbin/nginx"

const nginxConf = `# written by proxy_test.go
{{USER}}worker_processes 1;
pid {{DIR}}/nginx.pid;
error_log {{DIR}}/error.log info;

events {
    worker_connections 256;
}

http {
    access_log {{DIR}}/access.log;
    client_body_temp_path {{DIR}}/tmp/client_body;
    proxy_temp_path {{DIR}}/tmp/proxy;
    fastcgi_temp_path {{DIR}}/tmp/fastcgi;
    uwsgi_temp_path {{DIR}}/tmp/uwsgi;
    scgi_temp_path {{DIR}}/tmp/scgi;

    server {
        listen 127.0.0.1:{{PORT}};

        # Plain: nginx's defaults, proxy_buffering on included.
        location / {
            proxy_pass http://127.0.0.1:{{UPSTREAM}};
        }

        location /ws {
            proxy_pass http://127.0.0.1:{{UPSTREAM}};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
        }
    }
}
`

// startNginx runs nginx in front of s on a free loopback port, with its
// prefix, configuration, logs and temp files in a directory of the test,
// and returns a testServer value addressing nginx (URL, WSURL and Secret
// only). nginx is stopped when the test ends.
func startNginx(t *testing.T, s *testServer) *testServer {
	t.Helper()
	requireNginx(t)
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		p, err := tryStartNginx(t, s)
		if err == nil {
			return p
		}
		lastErr = err
		t.Logf("nginx attempt %d: %v", attempt+1, err)
	}
	t.Fatalf("nginx did not start: %v", lastErr)
	return nil
}

func tryStartNginx(t *testing.T, s *testServer) (*testServer, error) {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	conf := strings.NewReplacer("{{USER}}", nginxUser(), "{{DIR}}", dir,
		"{{PORT}}", fmt.Sprint(port), "{{UPSTREAM}}", fmt.Sprint(s.Port)).Replace(nginxConf)
	if err := launchNginx(t, dir, conf, port); err != nil {
		return nil, err
	}
	return &testServer{
		URL:    fmt.Sprintf("http://127.0.0.1:%d", port),
		WSURL:  fmt.Sprintf("ws://127.0.0.1:%d/ws", port),
		Port:   port,
		Secret: s.Secret,
	}, nil
}

// requireNginx skips the test when Debian's nginx is missing, or fails it
// under CI=true.
func requireNginx(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(nginxBin); err != nil {
		msg := fmt.Sprintf("nginx is not installed at %s (apt-get install -y nginx): %v", nginxBin, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// nginxUser is the user line of a test's nginx.conf: as root nginx would
// run its worker as nobody, which cannot enter the test's 0700 temp
// directory.
func nginxUser() string {
	if os.Geteuid() == 0 {
		return "user root;\n"
	}
	return ""
}

// launchNginx writes conf as dir/nginx.conf (its temp paths under
// dir/tmp), checks it with nginx -t, runs nginx in the foreground and
// waits until it listens on every port. nginx is stopped when the test
// ends, and its logs shown if the test failed.
func launchNginx(t *testing.T, dir, conf string, ports ...int) error {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return err
	}
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return err
	}
	args := []string{"-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", confPath}
	if out, err := exec.Command(nginxBin, append(args, "-t")...).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t refuses the configuration: %v\n%s", err, out)
	}
	out := &testsupport.SyncBuffer{}
	cmd := exec.Command(nginxBin, append(args, "-g", "daemon off;")...)
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group: the master and its workers, and nothing else,
	// can be killed together if it does not stop on SIGQUIT.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	stop := func() {
		select {
		case <-exited:
			return
		default:
		}
		cmd.Process.Signal(syscall.SIGQUIT) // graceful: workers finish, then exit
		select {
		case <-exited:
			return
		case <-time.After(5 * time.Second):
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // the group we created
		<-exited
	}
	logs := func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return out.String() + string(b)
	}

	deadline := time.Now().Add(waitTimeout)
	for _, port := range ports {
		for {
			select {
			case <-exited:
				return fmt.Errorf("nginx exited at start: %s", logs())
			default:
			}
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				stop()
				return fmt.Errorf("nginx not listening on %d after %v: %s", port, waitTimeout, logs())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("nginx logs:\n%s", logs())
		}
	})
	return nil
}

func TestProxyNginx(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	px := startNginx(t, s)
	svc := s.serviceToken(t)
	tok := s.userToken(t, "u1", "p1")

	// The answer comes from nginx.
	resp := px.request(t, "GET", "/api/websocket/health", "", nil)
	readBody(t, resp)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Server"), "nginx") {
		t.Fatalf("health through nginx: %d, Server %q", resp.StatusCode, resp.Header.Get("Server"))
	}

	t.Run("sse", func(t *testing.T) {
		c := openSSE(t, px, "/sse?projects=p1", tok, nil)
		if ct := c.Resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
			t.Errorf("Content-Type %q through nginx", ct)
		}
		if m, _ := c.read(t); m.Retry == "" {
			t.Fatalf("first message %v, want retry", m)
		}
		c.expectJoined(t, "p1")
		// Each event must cross nginx at once: with buffering on, a small
		// event would otherwise wait for a full buffer or the end of the
		// response. 1 s is a functional bound, far above the real latency.
		for i := int64(1); i <= 3; i++ {
			start := time.Now()
			publish(t, s, svc, "p1", "export_progress", map[string]any{"exportId": "e1", "progress": i * 10})
			m, ok, ended := c.next(time.Second)
			for ok && m.IsComment {
				m, ok, ended = c.next(time.Second - time.Since(start))
			}
			if !ok {
				t.Fatalf("event %d did not come through nginx within 1 s of its publication (stream ended: %v %v)", i, ended, c.err)
			}
			if m.Event != "export_progress" || !m.HasID || !strings.Contains(m.Data, fmt.Sprintf(`"seq":%d`, i)) {
				t.Fatalf("got %v, want export_progress seq %d", m, i)
			}
			t.Logf("event %d through nginx after %v", i, time.Since(start))
		}
	})

	t.Run("websocket", func(t *testing.T) {
		ws := dialWS(t, px, tok, named("ws through nginx"))
		if ws.Resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade through nginx: %d", ws.Resp.StatusCode)
		}
		d := ws.join(t, "p1")
		seq, ok := d["seq"].(float64)
		if !ok {
			t.Fatalf("joined %v: no seq", d)
		}
		publish(t, s, svc, "p1", "story_uploaded", map[string]any{"story": map[string]any{"id": "s1"}})
		m := ws.expectNext(t, "story_uploaded")
		if m["seq"] != seq+1 || m["projectId"] != "p1" {
			t.Fatalf("got %v, want story_uploaded seq %v of p1", m, seq+1)
		}
		// And client frames go the other way.
		if m := ws.call(t, "ping", nil); m["event"] != "pong" {
			t.Fatalf("ping through nginx: %v", m)
		}
	})
}
