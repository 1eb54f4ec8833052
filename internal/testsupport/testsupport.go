// Package testsupport holds what the tests of several packages share to run
// the server binary (the end-to-end tests in e2e and the Go client's tests).
// Only tests import it.
package testsupport

import (
	"bytes"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// ServerEnvKeys are the server's configuration variables: a test's server
// starts with none of them inherited from the environment, only those the
// test sets. main_test.go checks it against the binary's settings table.
var ServerEnvKeys = []string{
	"PORT", "DATABASE_URL", "JWT_SECRET", "JWT_PUBLIC_KEY_FILE", "JWT_JWKS_URL", "JWT_ISSUER", "JWT_AUDIENCE", "JWT_LEEWAY_MS",
	"WEBSOCKET_CORS_ORIGIN", "WEBSOCKET_PING_INTERVAL", "WEBSOCKET_PING_TIMEOUT", "RATE_LIMIT_WINDOW_MS",
	"RATE_LIMIT_MAX_EVENTS", "SSE_HEARTBEAT_MS", "MAX_CONNECTIONS_PER_USER", "HANDSHAKES_PER_SECOND",
	"HANDSHAKE_BURST", "SHUTDOWN_GRACE_MS", "SHUTDOWN_DELAY_MS", "LOG_FORMAT", "RECONNECT_AFTER_MS", "AUTO_MIGRATE", "EVENT_RETENTION_HOURS",
	"WS_COMPRESS_ABOVE", "QUEUE_LIMIT", "QUEUE_LIMIT_BYTES", "ROOM_HISTORY", "MAX_REPLAY", "EMBEDDED_HISTORY", "AUTH_TIMEOUT_MS",
	"TICKET_TTL_MS", "ALLOW_TOKEN_IN_URL", "DEBUG", "LOG_LEVEL", "PPROF", "GOGC", "METRICS_TOKEN", "HTTP_CONNS_PER_ADDRESS", "TRUSTED_PROXIES",
	"PRESENCE_GRACE_MS", "PRESENCE_TTL_MS", "PRESENCE_MAX_USERS",
}

// CleanEnv returns os.Environ() without ServerEnvKeys.
func CleanEnv() []string {
	var env []string
outer:
	for _, kv := range os.Environ() {
		for _, k := range ServerEnvKeys {
			if strings.HasPrefix(kv, k+"=") {
				continue outer
			}
		}
		env = append(env, kv)
	}
	return env
}

// SyncBuffer is a bytes.Buffer safe for one writer and many readers (a
// server's stderr, read while it runs).
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// FreePort returns a port nobody listens on, chosen below the ephemeral
// range so that no outgoing connection can take it while a server that
// used it is down (a restart on the same port must find it free).
func FreePort(t testing.TB) int {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	if low > 12000 {
		for range 100 {
			p := 10000 + rand.IntN(low-10000-1)
			if ln, err := net.Listen("tcp", ":"+strconv.Itoa(p)); err == nil {
				ln.Close()
				return p
			}
		}
	}
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TicketConnections checks a client's requests, each "METHOD URL" (the URL
// absolute or a request URI), for what the clients promise: no token in any
// URL, and a ticket on every /ws and /sse connection. It returns how many
// such connections there were.
func TicketConnections(t testing.TB, requests []string) int {
	t.Helper()
	n := 0
	for _, r := range requests {
		if strings.Contains(r, "token=") || strings.Contains(r, "eyJ") { // eyJ: how every JWT starts
			t.Errorf("a token in a URL: %s", r)
		}
		_, raw, _ := strings.Cut(r, " ")
		if u, err := url.Parse(raw); err == nil && (u.Path == "/ws" || u.Path == "/sse") {
			if !u.Query().Has("ticket") {
				t.Errorf("a connection without a ticket: %s", r)
			}
			n++
		}
	}
	return n
}
