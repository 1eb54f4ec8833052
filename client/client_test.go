package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/saga-family/sagapush/auth"
	"github.com/saga-family/sagapush/client"
	"github.com/saga-family/sagapush/internal/testsupport"
	"github.com/saga-family/sagapush/store/pgtest"
)

// wait bounds every single wait of these tests.
const wait = 15 * time.Second

// sink collects events from the Events channel or from an OnEvent handler.
type sink struct {
	ch chan client.Event
}

func newSink() *sink { return &sink{ch: make(chan client.Event, 1024)} }

func (s *sink) handler(ev client.Event) { s.ch <- ev }

// newClient makes a client with fast reconnects, closed when the test ends.
// With handler, events go through Options.OnEvent into the sink; otherwise
// the sink is fed from Events().
func newClient(t testing.TB, opts client.Options, handler bool) (*client.Client, *sink) {
	t.Helper()
	if opts.ReconnectDelay == 0 {
		opts.ReconnectDelay = 50 * time.Millisecond
	}
	if opts.MaxReconnectDelay == 0 {
		opts.MaxReconnectDelay = 500 * time.Millisecond
	}
	s := newSink()
	if handler {
		opts.OnEvent = s.handler
	}
	c, err := client.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	if !handler {
		go func() {
			defer close(done)
			for ev := range c.Events() {
				s.ch <- ev
			}
		}()
	} else {
		close(done)
	}
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	return c, s
}

// next returns the next event, skipping those that are not domain events
// when domainOnly.
func (s *sink) next(t testing.TB, domainOnly bool) client.Event {
	t.Helper()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case ev := <-s.ch:
			if domainOnly && ev.Seq == 0 {
				t.Logf("(%s: %s)", ev.Name, ev.Raw)
				continue
			}
			return ev
		case <-timer.C:
			t.Fatalf("no event within %v", wait)
		}
	}
}

// expectSeqs reads domain events of projectID and checks that their seqs
// are exactly from..to, in order.
func (s *sink) expectSeqs(t testing.TB, projectID string, from, to int64) {
	t.Helper()
	for want := from; want <= to; want++ {
		ev := s.next(t, true)
		if ev.ProjectID != projectID || ev.Seq != want {
			t.Fatalf("got %s seq %d of %q, want seq %d of %q (events must come once, in order)", ev.Name, ev.Seq, ev.ProjectID, want, projectID)
		}
	}
}

func ctxWait(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: %s", wait, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func story(id string) map[string]any {
	return map[string]any{"story": map[string]any{"id": id, "projectId": "p1", "title": "Story " + id, "status": "processing"}}
}

// Embedded mode, each transport, each way of consuming events: connect,
// join, receive with every field, ping, leave, refusal.
func TestBasics(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	for _, tc := range []struct {
		transport string
		handler   bool
	}{{client.WebSocket, false}, {client.SSE, true}} {
		t.Run(fmt.Sprintf("%s/handler=%v", tc.transport, tc.handler), func(t *testing.T) {
			t.Parallel()
			user := "u-" + tc.transport
			p1, p2 := "p1-"+tc.transport, "p2-"+tc.transport
			var states []client.State
			var mu sync.Mutex
			c, events := newClient(t, client.Options{
				URL:        s.URL,
				Token:      token(t, auth.Claims{UserID: user, Projects: []string{p1, p2}}, time.Hour),
				Transports: []string{tc.transport},
				OnStateChange: func(st client.State) {
					mu.Lock()
					states = append(states, st)
					mu.Unlock()
				},
			}, tc.handler)
			if c.State() != client.StateDisconnected || c.Transport() != "" {
				t.Fatalf("before Connect: state %s, transport %q", c.State(), c.Transport())
			}
			ctx := ctxWait(t)
			if err := c.Connect(ctx); err != nil {
				t.Fatal(err)
			}
			if c.State() != client.StateConnected || c.Transport() != tc.transport {
				t.Fatalf("after Connect: state %s, transport %q", c.State(), c.Transport())
			}
			mu.Lock()
			got := fmt.Sprint(states)
			mu.Unlock()
			if got != "[connecting connected]" {
				t.Errorf("states %s, want [connecting connected]", got)
			}

			publish(t, s, p1, "story_uploaded", story("before")) // before the join: not replayed
			j, err := c.Join(ctx, p1)
			if err != nil {
				t.Fatal(err)
			}
			if j.ProjectID != p1 || j.Seq != 1 || j.Recovered != nil {
				t.Errorf("join: %+v, want seq 1 and no recovered", j)
			}
			if seq, ok := c.LastSeq(p1); !ok || seq != 1 {
				t.Errorf("LastSeq = %d, %v; want 1", seq, ok)
			}
			before := time.Now().UnixMilli()
			publish(t, s, p1, "story_uploaded", story("s2"))
			ev := events.next(t, true)
			if ev.Name != "story_uploaded" || ev.ProjectID != p1 || ev.Seq != 2 || ev.TS < before-5000 {
				t.Errorf("event %+v", ev)
			}
			var d struct {
				Story struct{ ID string } `json:"story"`
			}
			if err := json.Unmarshal(ev.Data, &d); err != nil || d.Story.ID != "s2" {
				t.Errorf("data %s: %v", ev.Data, err)
			}
			var raw map[string]any
			if err := json.Unmarshal(ev.Raw, &raw); err != nil || raw["event"] != "story_uploaded" || raw["seq"] != float64(2) {
				t.Errorf("raw %s: %v", ev.Raw, err)
			}

			rtt, err := c.Ping(ctx)
			if err != nil || rtt <= 0 {
				t.Errorf("ping: %v, %v", rtt, err)
			}

			if _, err := c.Join(ctx, p2); err != nil {
				t.Fatal(err)
			}
			if err := c.Leave(ctx, p1); err != nil {
				t.Fatal(err)
			}
			var nerr *client.Error
			if err := c.Leave(ctx, p1); !errors.As(err, &nerr) || nerr.Code != "NOT_IN_PROJECT" {
				t.Errorf("second leave: %v, want NOT_IN_PROJECT", err)
			}
			publish(t, s, p1, "story_uploaded", story("after-leave"))
			publish(t, s, p2, "story_uploaded", story("marker"))
			if ev := events.next(t, true); ev.ProjectID != p2 || ev.Seq != 1 {
				t.Fatalf("after leaving %s: got %s seq %d, want seq 1 of %s", p1, ev.ProjectID, ev.Seq, p2)
			}

			_, err = c.Join(ctx, "forbidden")
			if !errors.As(err, &nerr) || nerr.Code != "PROJECT_ACCESS_DENIED" {
				t.Errorf("join forbidden: %v, want PROJECT_ACCESS_DENIED", err)
			}
			if got := c.Projects(); fmt.Sprint(got) != "["+p2+"]" {
				t.Errorf("projects %v, want [%s]", got, p2)
			}
			// Still connected and receiving after the refusal.
			publish(t, s, p2, "story_uploaded", story("after-refusal"))
			events.expectSeqs(t, p2, 2, 2)

			c.Close()
			if c.State() != client.StateDisconnected {
				t.Errorf("after Close: %s", c.State())
			}
			if _, err := c.Join(ctx, p1); !errors.Is(err, client.ErrClosed) {
				t.Errorf("join after Close: %v", err)
			}
			if _, err := c.Ping(ctx); !errors.Is(err, client.ErrClosed) {
				t.Errorf("ping after Close: %v", err)
			}
		})
	}
}

// A join made before Connect happens once connected.
func TestJoinBeforeConnect(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	for _, tr := range []string{client.WebSocket, client.SSE} {
		t.Run(tr, func(t *testing.T) {
			t.Parallel()
			c, events := newClient(t, client.Options{URL: s.URL, Token: token(t, auth.Claims{UserID: "u1", Projects: []string{"p-" + tr}}, time.Hour), Transports: []string{tr}}, false)
			ctx := ctxWait(t)
			joined := make(chan error, 1)
			go func() {
				_, err := c.Join(ctx, "p-"+tr)
				joined <- err
			}()
			eventually(t, "the join is registered", func() bool { return len(c.Projects()) == 1 })
			if err := c.Connect(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-joined; err != nil {
				t.Fatal(err)
			}
			publish(t, s, "p-"+tr, "story_uploaded", story("x"))
			events.expectSeqs(t, "p-"+tr, 1, 1)
		})
	}
}

// A WebSocket that cannot connect (a proxy answering 404 to /ws) makes the
// client use SSE.
func TestFallbackToSSE(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	target, _ := url.Parse(s.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var wsTries atomic.Int32
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			wsTries.Add(1)
			http.Error(w, "no websockets here", http.StatusNotFound)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	c, events := newClient(t, client.Options{URL: front.URL, Token: token(t, auth.Claims{UserID: "u1", Projects: []string{"p1"}}, time.Hour)}, false)
	ctx := ctxWait(t)
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Transport() != client.SSE || wsTries.Load() == 0 {
		t.Fatalf("transport %q after %d WebSocket tries, want sse", c.Transport(), wsTries.Load())
	}
	if _, err := c.Join(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	publish(t, s, "p1", "story_uploaded", story("a"))
	publish(t, s, "p1", "story_uploaded", story("b"))
	events.expectSeqs(t, "p1", 1, 2)
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// A refused token makes the client ask GetToken for a new one; a static
// token that has expired stops it with TOKEN_EXPIRED.
func TestTokens(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	good := token(t, auth.Claims{UserID: "u1", Projects: []string{"p1"}}, time.Hour)
	bad, err := auth.Mint([]byte("not-the-server-secret"), auth.Claims{UserID: "u1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range []string{client.WebSocket, client.SSE} {
		t.Run("GetToken/"+tr, func(t *testing.T) {
			t.Parallel()
			var calls atomic.Int32
			c, events := newClient(t, client.Options{URL: s.URL, Transports: []string{tr}, GetToken: func(context.Context) (string, error) {
				if calls.Add(1) == 1 {
					return bad, nil
				}
				return good, nil
			}}, false)
			ctx := ctxWait(t)
			if err := c.Connect(ctx); err != nil {
				t.Fatal(err)
			}
			// (Over SSE without a project there is no stream yet: the
			// token meets the server at the join.)
			if _, err := c.Join(ctx, "p1"); err != nil {
				t.Fatal(err)
			}
			if n := calls.Load(); n < 2 {
				t.Errorf("GetToken called %d times, want a new token after the refusal", n)
			}
			publish(t, s, "p1", "story_uploaded", story("t-"+tr))
			if ev := events.next(t, true); ev.ProjectID != "p1" {
				t.Errorf("event %+v", ev)
			}
		})
	}
	t.Run("static bad token", func(t *testing.T) {
		t.Parallel()
		c, _ := newClient(t, client.Options{URL: s.URL, Token: bad, Transports: []string{client.WebSocket}}, false)
		err := c.Connect(ctxWait(t))
		var e *client.Error
		if !errors.As(err, &e) || e.Code != "UNAUTHORIZED" || e.Status != http.StatusUnauthorized {
			t.Errorf("Connect: %v, want UNAUTHORIZED (HTTP 401), at once", err)
		}
	})
	t.Run("gives up", func(t *testing.T) {
		t.Parallel()
		c, _ := newClient(t, client.Options{URL: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), Token: good, ReconnectAttempts: 2}, false)
		err := c.Connect(ctxWait(t))
		var e *client.Error
		if !errors.Is(err, client.ErrGaveUp) || !errors.As(err, &e) || e.Code != "TRANSPORT_FAILED" {
			t.Errorf("Connect: %v, want ErrGaveUp wrapping TRANSPORT_FAILED", err)
		}
		if c.State() != client.StateDisconnected {
			t.Errorf("state %s", c.State())
		}
	})
	t.Run("static expired token", func(t *testing.T) {
		t.Parallel()
		now := time.Now()
		expired, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"userId": "u1", "iat": now.Add(-time.Hour).Unix(), "exp": now.Add(-time.Minute).Unix()}).SignedString([]byte(testSecret))
		if err != nil {
			t.Fatal(err)
		}
		c, _ := newClient(t, client.Options{URL: s.URL, Token: expired}, false)
		err = c.Connect(ctxWait(t))
		var e *client.Error
		if !errors.As(err, &e) || e.Code != "TOKEN_EXPIRED" {
			t.Errorf("Connect: %v, want TOKEN_EXPIRED", err)
		}
		if c.State() != client.StateDisconnected {
			t.Errorf("state %s", c.State())
		}
	})
}

// An embedded server restarted on the same port has lost its history: the
// client's resume gets recovered:false, it reports a Resync and goes on with
// the new history.
func TestResyncAfterHistoryLoss(t *testing.T) {
	t.Parallel()
	port := strconv.Itoa(freePort(t))
	s1 := startServer(t, "PORT="+port)
	c, events := newClient(t, client.Options{URL: s1.URL, Token: token(t, auth.Claims{UserID: "u1", Projects: []string{"p1"}}, time.Hour)}, false)
	ctx := ctxWait(t)
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Join(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	publish(t, s1, "p1", "story_uploaded", story("a"))
	publish(t, s1, "p1", "story_uploaded", story("b"))
	events.expectSeqs(t, "p1", 1, 2)
	s1.stop(t, syscall.SIGKILL)
	s2 := startServer(t, "PORT="+port)
	select {
	case r := <-c.Resyncs():
		if r.ProjectID != "p1" || r.Seq != 0 {
			t.Errorf("resync %+v, want p1 at seq 0", r)
		}
	case <-time.After(wait):
		t.Fatal("no resync")
	}
	publish(t, s2, "p1", "story_uploaded", story("c"))
	events.expectSeqs(t, "p1", 1, 1)
}

// Database mode, both transports, SIGKILL and SIGTERM: the server dies while
// the client is joined, events are committed while it is down, a new server
// starts on the same port with the same database, and the client reconnects
// by itself and gets every event once, in order.
func TestReconnectResumeDatabase(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		transport string
		sig       syscall.Signal
	}{
		{client.WebSocket, syscall.SIGKILL},
		{client.WebSocket, syscall.SIGTERM},
		{client.SSE, syscall.SIGKILL},
		{client.SSE, syscall.SIGTERM},
	} {
		t.Run(tc.transport+"/"+tc.sig.String(), func(t *testing.T) {
			t.Parallel()
			dbURL := pgtest.New(t)
			db := openDB(t, dbURL)
			mustExec(t, db, `INSERT INTO users (id, name) VALUES ('u1', 'Facilitator')`)
			mustExec(t, db, `INSERT INTO projects (id, name, facilitator_id) VALUES ('p1', 'Family', 'u1')`)
			insert := func(n int) {
				t.Helper()
				for i := 0; i < n; i++ {
					mustExec(t, db, `INSERT INTO stories (project_id, title) VALUES ('p1', 'A story')`)
				}
			}

			port := strconv.Itoa(freePort(t))
			env := []string{"DATABASE_URL=" + dbURL, "PORT=" + port, "RECONNECT_AFTER_MS=200", "SHUTDOWN_GRACE_MS=3000"}
			s1 := startServer(t, env...)
			c, events := newClient(t, client.Options{
				URL:        s1.URL,
				Token:      token(t, auth.Claims{UserID: "u1"}, time.Hour),
				Transports: []string{tc.transport},
			}, false)
			ctx := ctxWait(t)
			if err := c.Connect(ctx); err != nil {
				t.Fatal(err)
			}
			if j, err := c.Join(ctx, "p1"); err != nil || j.Seq != 0 || j.Role != "facilitator" {
				t.Fatalf("join: %+v, %v", j, err)
			}
			insert(3)
			events.expectSeqs(t, "p1", 1, 3)

			s1.stop(t, tc.sig)
			eventually(t, "the client notices the server is gone", func() bool { return c.State() != client.StateConnected })
			insert(3) // committed while no server runs
			startServer(t, env...)
			insert(3) // while the client reconnects (or after)
			var shutdownSeen bool
			for want := int64(4); want <= 9; want++ {
				ev := events.next(t, false)
				if ev.Seq == 0 {
					shutdownSeen = shutdownSeen || ev.Name == "server_shutdown"
					want--
					continue
				}
				if ev.ProjectID != "p1" || ev.Seq != want {
					t.Fatalf("got %s seq %d, want seq %d: every event once, in order", ev.Name, ev.Seq, want)
				}
			}
			if c.State() != client.StateConnected || c.Transport() != tc.transport {
				t.Errorf("state %s, transport %q", c.State(), c.Transport())
			}
			// Nothing twice: the next event is the next seq.
			insert(1)
			events.expectSeqs(t, "p1", 10, 10)
			select {
			case r := <-c.Resyncs():
				t.Errorf("unexpected resync %+v: the resume must recover", r)
			default:
			}
			if tc.sig == syscall.SIGTERM && !shutdownSeen {
				t.Errorf("no server_shutdown event before the SIGTERM restart")
			}
			if _, err := c.Ping(ctx); err != nil {
				t.Errorf("ping after the restart: %v", err)
			}
		})
	}
}

// Tokens that expire: with GetToken the client refreshes them ahead of
// expiry (an auth frame, or the stream re-opened from its cursor) and stays
// connected, losing nothing.
func TestTokenRefreshAhead(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	for _, tr := range []string{client.WebSocket, client.SSE} {
		t.Run(tr, func(t *testing.T) {
			t.Parallel()
			p := "p-" + tr
			var calls atomic.Int32
			var mu sync.Mutex
			var states []client.State
			c, events := newClient(t, client.Options{URL: s.URL, Transports: []string{tr},
				GetToken: func(context.Context) (string, error) {
					calls.Add(1)
					return token(t, auth.Claims{UserID: "u1", Projects: []string{p}}, 3*time.Second), nil
				},
				OnStateChange: func(st client.State) {
					mu.Lock()
					states = append(states, st)
					mu.Unlock()
				},
			}, false)
			ctx := ctxWait(t)
			if err := c.Connect(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Join(ctx, p); err != nil {
				t.Fatal(err)
			}
			var seq int64
			deadline := time.Now().Add(wait)
			for calls.Load() < 4 { // three refreshes: 3 token lifetimes
				if time.Now().After(deadline) {
					t.Fatalf("only %d GetToken calls", calls.Load())
				}
				seq = publish(t, s, p, "story_uploaded", story("r"))
				time.Sleep(200 * time.Millisecond) // pace the publisher; no wait on the client
			}
			events.expectSeqs(t, p, 1, seq)
			mu.Lock()
			got := fmt.Sprint(states)
			mu.Unlock()
			if got != "[connecting connected]" {
				t.Errorf("states %s: the refresh must not reconnect", got)
			}
		})
	}
}

// A WebSocket closed with 4401 (the token expired and no refresh came in
// time): with GetToken the client reconnects with a new token and resumes;
// with a static token it stops with TOKEN_EXPIRED.
func TestClose4401(t *testing.T) {
	t.Parallel()
	s := startServer(t, "JWT_LEEWAY_MS=0") // the close comes at exp + leeway
	t.Run("GetToken", func(t *testing.T) {
		t.Parallel()
		var calls atomic.Int32
		c, events := newClient(t, client.Options{URL: s.URL, Transports: []string{client.WebSocket}, RequestTimeout: 5 * time.Second,
			GetToken: func(ctx context.Context) (string, error) {
				switch calls.Add(1) {
				case 1:
					return token(t, auth.Claims{UserID: "u1", Projects: []string{"p1"}}, 2*time.Second), nil
				case 2: // the refresh hangs: the token expires first
					<-ctx.Done()
					return "", ctx.Err()
				}
				return token(t, auth.Claims{UserID: "u1", Projects: []string{"p1"}}, time.Hour), nil
			}}, false)
		ctx := ctxWait(t)
		if err := c.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Join(ctx, "p1"); err != nil {
			t.Fatal(err)
		}
		publish(t, s, "p1", "story_uploaded", story("a"))
		events.expectSeqs(t, "p1", 1, 1)
		// The server says TOKEN_EXPIRED, closes with 4401; the client gets a
		// new token (call 3) and resumes.
		ev := events.next(t, false)
		var e client.Error
		if ev.Name != "error" || json.Unmarshal(ev.Data, &e) != nil || e.Code != "TOKEN_EXPIRED" {
			t.Fatalf("got %s %s, want the TOKEN_EXPIRED error", ev.Name, ev.Raw)
		}
		publish(t, s, "p1", "story_uploaded", story("b"))
		eventually(t, "a new token", func() bool { return calls.Load() >= 3 })
		publish(t, s, "p1", "story_uploaded", story("c"))
		events.expectSeqs(t, "p1", 2, 3)
	})
	t.Run("static", func(t *testing.T) {
		t.Parallel()
		c, events := newClient(t, client.Options{URL: s.URL, Transports: []string{client.WebSocket},
			Token: token(t, auth.Claims{UserID: "u2", Projects: []string{"p2"}}, 2*time.Second)}, false)
		ctx := ctxWait(t)
		if err := c.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Join(ctx, "p2"); err != nil {
			t.Fatal(err)
		}
		if ev := events.next(t, false); ev.Name != "error" {
			t.Fatalf("got %s, want the TOKEN_EXPIRED error", ev.Raw)
		}
		eventually(t, "the client to stop", func() bool { return c.State() == client.StateDisconnected })
		var e *client.Error
		if err := c.Err(); !errors.As(err, &e) || e.Code != "TOKEN_EXPIRED" {
			t.Errorf("Err() = %v, want TOKEN_EXPIRED", err)
		}
	})
}

// The client never puts a token in a URL: it connects with tickets, which
// it gets with the token in the Authorization header, on every dial and
// every stream (re)open, refreshes included. The server refuses ?token=
// (ALLOW_TOKEN_IN_URL=false), and a proxy in front records every request.
func TestNoTokenInURL(t *testing.T) {
	t.Parallel()
	s := startServer(t, "ALLOW_TOKEN_IN_URL=false")
	target, _ := url.Parse(s.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var mu sync.Mutex
	var seen []string // method, path and query of each request
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.RequestURI())
		mu.Unlock()
		if r.URL.Path == "/api/tickets" && !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			t.Errorf("POST /api/tickets without the token in the Authorization header")
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	for _, tr := range []string{client.WebSocket, client.SSE} {
		t.Run(tr, func(t *testing.T) {
			p := "p-" + tr
			var calls atomic.Int32
			c, events := newClient(t, client.Options{URL: front.URL, Transports: []string{tr},
				GetToken: func(context.Context) (string, error) {
					calls.Add(1)
					return token(t, auth.Claims{UserID: "u1", Projects: []string{p, p + "-2"}}, 3*time.Second), nil
				}}, false)
			ctx := ctxWait(t)
			if err := c.Connect(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Join(ctx, p); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Join(ctx, p+"-2"); err != nil { // SSE: the stream re-opens
				t.Fatal(err)
			}
			eventually(t, "a token refresh", func() bool { return calls.Load() >= 2 })
			seq := publish(t, s, p, "story_uploaded", story("after-refresh"))
			events.expectSeqs(t, p, 1, seq)
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if tickets := testsupport.TicketConnections(t, seen); tickets < 3 {
		t.Errorf("%d connections by ticket in %v, want a WebSocket and two streams at least", tickets, seen)
	}
}
