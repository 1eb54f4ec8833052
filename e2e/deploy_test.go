//go:build unix

package e2e

// The deployment of deploy/nginx.conf, run for real: three instances on one
// Postgres behind Debian's nginx started with that very file (its ports and
// certificate paths filled in here, a self-signed certificate made now).
// Clients on WSS and on SSE (over HTTP/2, as browsers do) receive trigger
// events on every instance; an instance killed with SIGKILL and then a
// rolling restart of all three (SIGTERM) lose nothing and deliver nothing
// twice. The clients are written here, on the wire, so that a duplicate the
// server sent cannot be hidden by a client library's own filtering.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// deployHost is the name deploy/nginx.conf serves; the test's clients
// dial it on loopback.
const deployHost = "push.example.com"

// deployProxy is nginx running deploy/nginx.conf.
type deployProxy struct {
	base     string       // https://push.example.com:PORT
	httpPort int          // the plain-HTTP listener (redirects)
	h1, h2   *http.Client // HTTP/1.1 only (WebSockets), and HTTP/2 when offered
	h2Used   atomic.Int64 // SSE streams that went over HTTP/2
}

func TestDeployNginx(t *testing.T) {
	t.Parallel()
	requireNginx(t)
	e := newPGEnv(t)
	var users []string
	for i := 1; i <= 12; i++ {
		users = append(users, fmt.Sprintf("u%d", i))
	}
	e.family(t, users...)

	// Three instances as an operator runs them: nginx is a trusted proxy,
	// a short presence grace only to keep the test short.
	env := []string{"TRUSTED_PROXIES=127.0.0.1,::1", "PRESENCE_GRACE_MS=300", "RECONNECT_AFTER_MS=100", "LOG_LEVEL=debug"}
	instances := make([]*testServer, 3)
	ports := make([]int, 3)
	for i := range instances {
		instances[i] = e.start(t, env...)
		ports[i] = instances[i].Port
	}
	restart := func(i int) {
		t.Helper()
		instances[i] = e.start(t, append(env, fmt.Sprintf("PORT=%d", ports[i]))...)
		waitReady(t, instances[i])
	}
	px := startDeployNginx(t, ports)

	// Plain HTTP is sent to HTTPS, method and path kept.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(fmt.Sprintf("http://127.0.0.1:%d/api/websocket/health?x=1", px.httpPort))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusPermanentRedirect || !strings.HasPrefix(loc, "https://") || !strings.HasSuffix(loc, "/api/websocket/health?x=1") {
		t.Fatalf("plain HTTP: %d, Location %q; want 308 to https, same path", resp.StatusCode, loc)
	}
	// The API through TLS, and /metrics kept from the internet.
	for path, want := range map[string]int{"/api/websocket/health": 200, "/readyz": 200, "/metrics": 404} {
		resp, err := px.h2.Get(px.base + path)
		if err != nil {
			t.Fatalf("GET %s through nginx: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != want || !strings.HasPrefix(resp.Header.Get("Server"), "nginx") {
			t.Fatalf("GET %s through nginx: %d (Server %q), want %d", path, resp.StatusCode, resp.Header.Get("Server"), want)
		}
	}

	// Six WebSocket and six SSE clients, each a member of p1.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var clients []*wireClient
	for i, u := range users {
		transport := "websocket"
		if i%2 == 1 {
			transport = "sse"
		}
		c := newWireClient(px, u+" ("+transport+")", transport, instances[0].userToken(t, u))
		clients = append(clients, c)
		go c.run(ctx)
		// One at a time, so that least_conn spreads them evenly.
		c.waitJoins(t, 1, waitTimeout)
	}
	for i, s := range instances {
		n := s.metric(t, `sagapush_connections{transport="websocket"}`) + s.metric(t, `sagapush_connections{transport="sse"}`)
		if n < 1 {
			t.Fatalf("instance %d has no client: nginx does not balance over the instances", i)
		}
		t.Logf("instance %d: %v clients", i, n)
	}

	// Story inserts, each an event by trigger, all along.
	w := startStoryWriter(t, e, "p1", 25*time.Millisecond)
	waitAllAt := func(what string, seq int64, within time.Duration) {
		t.Helper()
		for _, c := range clients {
			c.waitSeq(t, seq, within, what)
		}
	}
	waitAllAt("before the kill", w.wait(t, 20), waitTimeout)

	// SIGKILL: the instance's clients lose their connection; nginx sends
	// them to the others, and they resume.
	killed := time.Now()
	instances[0].signal(t, syscall.SIGKILL)
	select {
	case <-instances[0].exited:
	case <-time.After(waitTimeout):
		t.Fatal("the instance did not die of SIGKILL")
	}
	waitAllAt("after the kill", w.wait(t, w.committed()+20), 30*time.Second)
	var moved []time.Duration
	for _, c := range clients {
		moved = append(moved, c.reconnectsSince(killed)...)
	}
	if len(moved) == 0 {
		t.Fatal("no client reconnected after its instance was killed")
	}
	slices.Sort(moved)
	t.Logf("SIGKILL: %d clients reconnected through nginx and resumed; from the kill to joined again: median %v, max %v",
		len(moved), moved[len(moved)/2].Round(time.Millisecond), moved[len(moved)-1].Round(time.Millisecond))
	restart(0)

	// A rolling restart, one instance at a time.
	var rolled []time.Duration
	for i := range instances {
		term := time.Now()
		instances[i].signal(t, syscall.SIGTERM)
		select {
		case <-instances[i].exited:
		case <-time.After(20 * time.Second):
			t.Fatalf("instance %d did not stop within 20 s of SIGTERM", i)
		}
		if code := instances[i].state.ExitCode(); code != 0 {
			t.Fatalf("instance %d exited with %d after SIGTERM", i, code)
		}
		restart(i)
		waitAllAt(fmt.Sprintf("after restarting instance %d", i), w.wait(t, w.committed()+10), 30*time.Second)
		for _, c := range clients {
			rolled = append(rolled, c.reconnectsSince(term)...)
		}
	}
	slices.Sort(rolled)
	if len(rolled) == 0 {
		t.Fatal("no client reconnected during the rolling restart")
	}

	// The last events, then the count: every client, every seq, once.
	last := w.stop(t)
	waitAllAt("at the end", last, 30*time.Second)
	lost, dup := 0, 0
	for _, c := range clients {
		l, d, order := c.check(last)
		if l+d > 0 {
			t.Errorf("%s: %d events lost, %d delivered twice (of %d)", c.name, l, d, last)
		}
		if order != "" {
			t.Errorf("%s: out of order: %s", c.name, order)
		}
		lost += l
		dup += d
	}
	t.Logf("rolling restart: %d reconnects, each joined again at most %v after its instance got SIGTERM; %d events to %d clients: %d lost, %d duplicated",
		len(rolled), rolled[len(rolled)-1].Round(time.Millisecond), last, len(clients), lost, dup)
	if px.h2Used.Load() == 0 {
		t.Error("no SSE stream went over HTTP/2")
	}
}

// startDeployNginx runs nginx with deploy/nginx.conf in front of the
// instances' ports. The file is taken whole; only what a test cannot use
// is replaced (the upstream servers, listen ports, certificate paths), and
// each replacement must find its text, so that a change to the file
// that would escape the test fails it instead.
func startDeployNginx(t *testing.T, upstreams []int) *deployProxy {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "deploy", "nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pool := selfSignedCert(t, dir)
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		https, plain := freePort(t), freePort(t)
		conf := fillDeployConf(t, string(src), dir, https, plain, upstreams)
		main := fmt.Sprintf(`# written by deploy_test.go around deploy/nginx.conf
%sworker_processes 1;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log info;
events { worker_connections 1024; }
http {
    access_log %[2]s/access.log;
    client_body_temp_path %[2]s/tmp/client_body;
    proxy_temp_path %[2]s/tmp/proxy;
    fastcgi_temp_path %[2]s/tmp/fastcgi;
    uwsgi_temp_path %[2]s/tmp/uwsgi;
    scgi_temp_path %[2]s/tmp/scgi;
    include %[2]s/sagapush.conf;
}
`, nginxUser(), dir)
		if err := os.WriteFile(filepath.Join(dir, "sagapush.conf"), []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		if lastErr = launchNginx(t, dir, main, https, plain); lastErr == nil {
			return newDeployProxy(https, plain, pool)
		}
		t.Logf("nginx attempt %d: %v", attempt+1, lastErr)
	}
	t.Fatalf("nginx did not start: %v", lastErr)
	return nil
}

var upstreamServerRE = regexp.MustCompile(`(?m)^(\s*)server \d+\.\d+\.\d+\.\d+:\d+( [^;]*)?;\n`)

// fillDeployConf puts the test's ports and files into deploy/nginx.conf.
func fillDeployConf(t *testing.T, conf, dir string, https, plain int, upstreams []int) string {
	t.Helper()
	replace := func(old, new string) {
		t.Helper()
		if !strings.Contains(conf, old) {
			t.Fatalf("deploy/nginx.conf no longer has %q: update deploy_test.go with it", old)
		}
		conf = strings.ReplaceAll(conf, old, new)
	}
	// The listed servers become the test's instances, their parameters
	// kept.
	loc := upstreamServerRE.FindAllStringSubmatchIndex(conf, -1)
	if len(loc) == 0 {
		t.Fatal("deploy/nginx.conf has no upstream server line: update deploy_test.go")
	}
	first := upstreamServerRE.FindStringSubmatch(conf)
	var servers strings.Builder
	for _, p := range upstreams {
		fmt.Fprintf(&servers, "%sserver 127.0.0.1:%d%s;\n", first[1], p, first[2])
	}
	conf = conf[:loc[0][0]] + servers.String() + upstreamServerRE.ReplaceAllString(conf[loc[0][0]:], "")
	replace("listen 443 ssl http2;", fmt.Sprintf("listen 127.0.0.1:%d ssl http2;", https))
	replace("listen [::]:443 ssl http2;\n", "")
	replace("listen 80;", fmt.Sprintf("listen 127.0.0.1:%d;", plain))
	replace("listen [::]:80;\n", "")
	replace("/etc/nginx/tls/push.example.com.crt", filepath.Join(dir, "cert.pem"))
	replace("/etc/nginx/tls/push.example.com.key", filepath.Join(dir, "key.pem"))
	return conf
}

// selfSignedCert writes dir/cert.pem and dir/key.pem for deployHost and
// returns a pool that trusts it.
func selfSignedCert(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: deployHost},
		DNSNames: []string{deployHost}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool
}

// newDeployProxy makes the clients that reach nginx as deployHost, with
// the certificate verified.
func newDeployProxy(https, plain int, pool *x509.CertPool) *deployProxy {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", https))
	}
	tlsConf := &tls.Config{RootCAs: pool, ServerName: deployHost, MinVersion: tls.VersionTLS12}
	px := &deployProxy{
		base: fmt.Sprintf("https://%s:%d", deployHost, https), httpPort: plain,
		h1: &http.Client{Transport: &http.Transport{DialContext: dial, TLSClientConfig: tlsConf.Clone()}},
		h2: &http.Client{Transport: &http.Transport{DialContext: dial, TLSClientConfig: tlsConf.Clone(), ForceAttemptHTTP2: true}},
	}
	return px
}

// waitReady waits for an instance's /readyz to answer 200.
func waitReady(t *testing.T, s *testServer) {
	t.Helper()
	eventually(t, waitTimeout, fmt.Sprintf("the instance on port %d to be ready", s.Port), func() bool {
		resp, err := http.Get(s.URL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// storyWriter inserts a story into a project at a steady pace.
type storyWriter struct {
	n      atomic.Int64 // stories committed
	err    atomic.Value // the first failure
	done   chan struct{}
	cancel context.CancelFunc
	more   chan struct{} // pinged after each commit
}

func startStoryWriter(t *testing.T, e *pgEnv, project string, every time.Duration) *storyWriter {
	ctx, cancel := context.WithCancel(context.Background())
	w := &storyWriter{done: make(chan struct{}), cancel: cancel, more: make(chan struct{}, 1)}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			id := fmt.Sprintf("s%d", w.n.Load()+1)
			qctx, qcancel := context.WithTimeout(ctx, waitTimeout)
			_, err := e.db.ExecContext(qctx, `INSERT INTO stories (id, project_id, title) VALUES ($1, $2, $3)`, id, project, "Story "+id)
			qcancel()
			if err != nil {
				if ctx.Err() == nil {
					w.err.CompareAndSwap(nil, err)
				}
				return
			}
			w.n.Add(1)
			select {
			case w.more <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-w.done })
	return w
}

func (w *storyWriter) committed() int64 { return w.n.Load() }

// wait returns once n stories are committed.
func (w *storyWriter) wait(t *testing.T, n int64) int64 {
	t.Helper()
	deadline := time.After(waitTimeout + time.Duration(n)*50*time.Millisecond)
	for w.n.Load() < n {
		select {
		case <-w.more:
		case <-w.done:
			t.Fatalf("the story writer stopped at %d: %v", w.n.Load(), w.err.Load())
		case <-deadline:
			t.Fatalf("only %d of %d stories committed in time", w.n.Load(), n)
		}
	}
	return n
}

// stop ends the writes and returns how many were committed.
func (w *storyWriter) stop(t *testing.T) int64 {
	t.Helper()
	w.cancel()
	<-w.done
	if err := w.err.Load(); err != nil {
		t.Fatalf("story writer: %v", err)
	}
	return w.n.Load()
}

// wireClient is a client of one project (p1) that resumes from its last
// seq after every loss, counting every seq it receives, duplicates
// included.
type wireClient struct {
	px              *deployProxy
	name, transport string
	token           string
	mu              sync.Mutex
	seen            map[int64]int
	last            int64
	cursor          string // SSE: the last id: line
	joins           int
	lostAt          time.Time
	reconnects      []reconnect
	changed         chan struct{} // pinged on every change
	lastErr         error
	outOfOrder      string
}

type reconnect struct {
	lost, joined time.Time
}

func newWireClient(px *deployProxy, name, transport, token string) *wireClient {
	return &wireClient{px: px, name: name, transport: transport, token: token, seen: map[int64]int{}, changed: make(chan struct{}, 1)}
}

func (c *wireClient) ping() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// run connects, joins and reads until ctx ends, reconnecting after a short
// backoff whenever the connection is lost or refused.
func (c *wireClient) run(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		c.mu.Lock()
		before := c.joins
		c.mu.Unlock()
		var err error
		if c.transport == "sse" {
			err = c.sse(ctx)
		} else {
			err = c.ws(ctx)
		}
		c.mu.Lock()
		c.lastErr = err
		if c.lostAt.IsZero() {
			c.lostAt = time.Now()
		}
		if c.joins > before {
			backoff = 50 * time.Millisecond // it was connected: start over
		}
		c.mu.Unlock()
		c.ping()
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// wireMsg is what the client reads of a server message.
type wireMsg struct {
	Event     string          `json:"event"`
	ProjectID string          `json:"projectId"`
	Seq       int64           `json:"seq"`
	Data      json.RawMessage `json:"data"`
}

// joined records a successful join.
func (c *wireClient) joined() {
	c.mu.Lock()
	c.joins++
	if !c.lostAt.IsZero() {
		c.reconnects = append(c.reconnects, reconnect{lost: c.lostAt, joined: time.Now()})
		c.lostAt = time.Time{}
	}
	c.mu.Unlock()
	c.ping()
}

// event records a domain event's seq.
func (c *wireClient) event(m wireMsg, id string) {
	if m.Seq <= 0 || m.ProjectID != "p1" {
		return
	}
	c.mu.Lock()
	c.seen[m.Seq]++
	if m.Seq != c.last+1 && c.outOfOrder == "" && c.seen[m.Seq] == 1 {
		c.outOfOrder = fmt.Sprintf("seq %d after %d", m.Seq, c.last)
	}
	c.last = max(c.last, m.Seq)
	if id != "" {
		c.cursor = id
	}
	c.mu.Unlock()
	c.ping()
}

func (c *wireClient) ws(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	u := strings.Replace(c.px.base, "https", "wss", 1) + "/ws"
	conn, _, err := websocket.Dial(dctx, u, &websocket.DialOptions{
		HTTPClient: c.px.h1, HTTPHeader: http.Header{"Authorization": {"Bearer " + c.token}},
	})
	if err != nil {
		return err
	}
	defer conn.CloseNow()
	conn.SetReadLimit(1 << 20)
	c.mu.Lock()
	since := c.last
	c.mu.Unlock()
	join, _ := json.Marshal(map[string]any{"event": "join_project", "data": map[string]any{"projectId": "p1", "since": since}, "ack": 1})
	if err := conn.Write(dctx, websocket.MessageText, join); err != nil {
		return err
	}
	for {
		_, b, err := conn.Read(ctx)
		if err != nil {
			return err
		}
		var m wireMsg
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("unreadable message %q: %w", b, err)
		}
		switch m.Event {
		case "joined_project":
			c.joined()
		case "error":
			return fmt.Errorf("error message: %s", b)
		default:
			c.event(m, "")
		}
	}
}

func (c *wireClient) sse(ctx context.Context) error {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, "GET", c.px.base+"/sse?projects=p1", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "text/event-stream")
	c.mu.Lock()
	if c.cursor != "" {
		req.Header.Set("Last-Event-ID", c.cursor)
	}
	c.mu.Unlock()
	// The stream must open in time; once open it lives on.
	opened := time.AfterFunc(waitTimeout, cancel)
	resp, err := c.px.h2.Do(req)
	opened.Stop()
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("SSE: status %d", resp.StatusCode)
	}
	if resp.ProtoMajor == 2 {
		c.px.h2Used.Add(1)
	}
	br := bufio.NewReader(resp.Body)
	var id string
	var data strings.Builder
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "":
			if data.Len() > 0 {
				var m wireMsg
				if err := json.Unmarshal([]byte(data.String()), &m); err != nil {
					return fmt.Errorf("unreadable SSE data %q: %w", data.String(), err)
				}
				switch m.Event {
				case "joined_project":
					c.joined()
				case "error":
					return fmt.Errorf("error message: %s", data.String())
				default:
					c.event(m, id)
				}
			}
			id = ""
			data.Reset()
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "data: "):
			data.WriteString(strings.TrimPrefix(line, "data: "))
		}
	}
}

// waitJoins waits until the client has joined n times.
func (c *wireClient) waitJoins(t *testing.T, n int, within time.Duration) {
	t.Helper()
	c.waitFor(t, within, fmt.Sprintf("%d joins", n), func() bool { return c.joins >= n })
}

// waitSeq waits until the client has received seq.
func (c *wireClient) waitSeq(t *testing.T, seq int64, within time.Duration, what string) {
	t.Helper()
	c.waitFor(t, within, fmt.Sprintf("seq %d %s", seq, what), func() bool { return c.last >= seq })
}

func (c *wireClient) waitFor(t *testing.T, within time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.After(within)
	for {
		c.mu.Lock()
		done, last, err := ok(), c.last, c.lastErr
		c.mu.Unlock()
		if done {
			return
		}
		select {
		case <-c.changed:
		case <-deadline:
			t.Fatalf("%s: no %s within %v (at seq %d; last connection error: %v)", c.name, what, within, last, err)
		}
	}
}

// reconnectsSince lists, for each loss at or after from, the time from
// from to joined again.
func (c *wireClient) reconnectsSince(from time.Time) []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var d []time.Duration
	for _, r := range c.reconnects {
		if !r.lost.Before(from) {
			d = append(d, r.joined.Sub(from))
		}
	}
	return d
}

// check counts the seqs of 1..last never received and those received more
// than once, and says when one came out of order.
func (c *wireClient) check(last int64) (lost, dup int, order string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for s := int64(1); s <= last; s++ {
		switch n := c.seen[s]; {
		case n == 0:
			lost++
		case n > 1:
			dup += n - 1
		}
	}
	return lost, dup, c.outOfOrder
}
