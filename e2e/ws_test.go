package e2e

// WebSocket tests of docs/protocol.md sections 3, 4, 7 and 9 against the real binary
// (embedded mode). The package doc lists the helpers.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/saga-family/sagapush/auth"
)

func num(t testing.TB, m map[string]any, key string) int64 {
	t.Helper()
	v, ok := m[key].(float64)
	if !ok {
		t.Fatalf("%v: %q is not a number", m, key)
	}
	return int64(v)
}

func checkAck(t testing.TB, m map[string]any, ack int64) {
	t.Helper()
	if ack < 0 {
		if _, ok := m["ack"]; ok {
			t.Errorf("%v carries an ack, the frame had none", m)
		}
		return
	}
	if !ackIs(m, ack) {
		t.Errorf("%v: want ack %d", m, ack)
	}
}

// Section 3 table: auth frame at connect, with and without ack.
func TestWSAuthFrame(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	tok := s.token(t, auth.Claims{UserID: "u1", Projects: []string{"p1"}}, time.Hour)

	for _, ack := range []int64{-1, 7} {
		t.Run(fmt.Sprintf("ack=%d", ack), func(t *testing.T) {
			c := dialWS(t, s, "", withoutToken())
			c.sendEvent(t, "auth", map[string]any{"token": tok}, ack)
			m := c.expectNext(t, "authenticated")
			checkAck(t, m, ack)
			d := dataOf(t, m)
			if d["userId"] != "u1" {
				t.Errorf("authenticated %v: want userId u1", d)
			}
			exp := num(t, d, "expiresAt")
			if want := time.Now().Add(time.Hour).UnixMilli(); exp < want-5000 || exp > want+1000 || exp%1000 != 0 {
				t.Errorf("expiresAt %d: want the token's exp in ms (about %d)", exp, want)
			}
			// Authenticated: the connection works.
			if j := c.join(t, "p1"); j["projectId"] != "p1" {
				t.Errorf("joined %v", j)
			}
		})
	}

	t.Run("token without exp", func(t *testing.T) {
		c := dialWS(t, s, "", withoutToken())
		d := c.authenticate(t, s.token(t, auth.Claims{UserID: "u1"}, 0))
		if v, ok := d["expiresAt"]; !ok || v != nil {
			t.Errorf("authenticated %v: want expiresAt null", d)
		}
	})

	t.Run("frames before auth", func(t *testing.T) {
		c := dialWS(t, s, "", withoutToken())
		c.sendEvent(t, "ping", nil, 3)
		checkAck(t, c.expectError(t, "UNAUTHORIZED"), 3)
		c.sendEvent(t, "join_project", "p1", -1)
		checkAck(t, c.expectError(t, "UNAUTHORIZED"), -1)
		// Still open, and an auth frame still works.
		c.authenticate(t, tok)
		c.expectNothingQueued(t)
	})

	t.Run("refused tokens keep the connection", func(t *testing.T) {
		c := dialWS(t, s, "", withoutToken())
		other := startServerSecretToken(t, "u1")
		cases := []struct {
			token, code string
		}{
			{"not-a-jwt", "UNAUTHORIZED"},
			{other, "UNAUTHORIZED"}, // bad signature
			{algNoneToken("u1"), "UNAUTHORIZED"},
			{s.expiredToken(t, "u1"), "TOKEN_EXPIRED"},
			{s.rawToken(t, map[string]any{"name": "no id", "exp": time.Now().Add(time.Hour).Unix()}), "UNAUTHORIZED"},
			{s.rawToken(t, map[string]any{"userId": "u1", "nbf": time.Now().Add(time.Hour).Unix()}), "UNAUTHORIZED"},
		}
		for i, tc := range cases {
			c.sendEvent(t, "auth", map[string]any{"token": tc.token}, int64(i))
			m := c.read(t)
			if got := errorCode(t, m); got != tc.code {
				t.Errorf("token %d: got %v, want %s", i, m, tc.code)
			}
			checkAck(t, m, int64(i))
		}
		c.sendEvent(t, "ping", nil, -1)
		c.expectError(t, "UNAUTHORIZED") // not authenticated by any of them
		c.authenticate(t, tok)
		c.expectNothingQueued(t)
	})
}

// startServerSecretToken returns a token of user id signed with another secret.
func startServerSecretToken(t testing.TB, id string) string {
	t.Helper()
	tok, err := auth.Mint([]byte("another-secret-entirely"), auth.Claims{UserID: id}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// Section 3 table: join_project (object and bare string) and leave_project.
func TestWSJoinLeave(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	svc := s.serviceToken(t)
	publish(t, s, svc, "p1", "story_uploaded", map[string]any{"n": 1})
	publish(t, s, svc, "p1", "story_uploaded", map[string]any{"n": 2})
	c := dialWS(t, s, s.userToken(t, "u1", "p1", "p2"))

	// By object, with ack.
	c.sendEvent(t, "join_project", map[string]any{"projectId": "p1"}, 1)
	m := c.expectNext(t, "joined_project")
	checkAck(t, m, 1)
	d := dataOf(t, m)
	if d["projectId"] != "p1" || d["seq"] != float64(2) || d["role"] == nil {
		t.Errorf("joined_project %v: want projectId p1, seq 2 and a role", d)
	}
	if _, ok := d["recovered"]; ok {
		t.Errorf("joined_project %v: recovered without since", d)
	}
	// By bare string, without ack; a project without events has seq 0.
	c.sendEvent(t, "join_project", "p2", -1)
	m = c.expectNext(t, "joined_project")
	checkAck(t, m, -1)
	if d := dataOf(t, m); d["projectId"] != "p2" || d["seq"] != float64(0) {
		t.Errorf("joined_project %v: want p2 with seq 0", d)
	}

	seq := publish(t, s, svc, "p2", "export_started", map[string]any{"exportId": "e1", "status": "pending"})
	ev := c.expectEvent(t, "p2", seq)
	if ev["event"] != "export_started" || dataOf(t, ev)["exportId"] != "e1" {
		t.Errorf("event %v", ev)
	}

	// Leave by object with ack, by bare string without.
	c.sendEvent(t, "leave_project", map[string]any{"projectId": "p1"}, 2)
	m = c.expectNext(t, "left_project")
	checkAck(t, m, 2)
	if d := dataOf(t, m); d["projectId"] != "p1" || d["reason"] != "requested" {
		t.Errorf("left_project %v", d)
	}
	c.sendEvent(t, "leave_project", "p2", -1)
	m = c.expectNext(t, "left_project")
	checkAck(t, m, -1)
	if d := dataOf(t, m); d["projectId"] != "p2" || d["reason"] != "requested" {
		t.Errorf("left_project %v", d)
	}

	// No event of a left project arrives.
	publish(t, s, svc, "p1", "story_uploaded", map[string]any{"n": 3})
	publish(t, s, svc, "p2", "story_uploaded", map[string]any{"n": 4})
	c.expectNothingQueued(t)

	// Leaving again: NOT_IN_PROJECT with the projectId, with and without ack.
	c.sendEvent(t, "leave_project", "p1", 3)
	m = c.expectError(t, "NOT_IN_PROJECT")
	checkAck(t, m, 3)
	if dataOf(t, m)["projectId"] != "p1" {
		t.Errorf("NOT_IN_PROJECT %v lacks projectId", m)
	}
	c.sendEvent(t, "leave_project", map[string]any{"projectId": "p2"}, -1)
	checkAck(t, c.expectError(t, "NOT_IN_PROJECT"), -1)

	// Rejoin: seq is the current head.
	if d := c.join(t, "p1"); d["seq"] != float64(3) {
		t.Errorf("rejoin: %v, want seq 3", d)
	}
}

// Section 3 table: ping, with and without ack and data.
func TestWSPing(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	c := dialWS(t, s, s.userToken(t, "u1"))
	for i, data := range []any{nil, "hello", map[string]any{"x": 1}} {
		for _, ack := range []int64{-1, int64(i)} {
			before := time.Now().UnixMilli()
			c.sendEvent(t, "ping", data, ack)
			m := c.expectNext(t, "pong")
			after := time.Now().UnixMilli()
			checkAck(t, m, ack)
			if ts := num(t, dataOf(t, m), "ts"); ts < before-1000 || ts > after+1000 {
				t.Errorf("pong ts %d: want server time in ms, near [%d, %d]", ts, before, after)
			}
		}
	}
}

// Section 3 table: typing_start / typing_stop are relayed to the project's
// other members only.
func TestWSTyping(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	alice := dialWS(t, s, s.token(t, auth.Claims{UserID: "alice", Name: "Alice", Projects: []string{"p1"}}, time.Hour), named("alice"))
	bob := dialWS(t, s, s.token(t, auth.Claims{UserID: "bob", Name: "Bob", Projects: []string{"p1"}}, time.Hour), named("bob"))
	carol := dialWS(t, s, s.userToken(t, "carol", "p1"), named("carol (may join, did not)"))
	dave := dialWS(t, s, s.userToken(t, "dave", "p2"), named("dave (other project)"))
	alice.join(t, "p1")
	bob.join(t, "p1")
	dave.join(t, "p2")

	for _, ev := range []string{"typing_start", "typing_stop"} {
		for _, ack := range []int64{-1, 5} {
			alice.sendEvent(t, ev, map[string]any{"projectId": "p1", "storyId": "s1"}, ack)
			m := bob.expectNext(t, ev)
			if m["projectId"] != "p1" {
				t.Errorf("%s: %v lacks projectId p1", ev, m)
			}
			if _, ok := m["ack"]; ok {
				t.Errorf("relayed %v carries the sender's ack", m)
			}
			d := dataOf(t, m)
			if d["storyId"] != "s1" || d["userId"] != "alice" || d["userName"] != "Alice" {
				t.Errorf("%s data %v: want storyId s1, userId alice, userName Alice", ev, d)
			}
			// The sender gets no echo (and no answer: typing has none on
			// success); non-members get nothing.
			alice.expectNothingQueued(t)
			carol.expectNothingQueued(t)
			dave.expectNothingQueued(t)
		}
	}

	// Typing in a project not joined: NOT_IN_PROJECT with projectId.
	carol.sendEvent(t, "typing_start", map[string]any{"projectId": "p1", "storyId": "s1"}, 9)
	m := carol.expectError(t, "NOT_IN_PROJECT")
	checkAck(t, m, 9)
	if dataOf(t, m)["projectId"] != "p1" {
		t.Errorf("%v lacks projectId", m)
	}
	bob.expectNothingQueued(t)
	alice.expectNothingQueued(t)
}

// Section 6: PROJECT_ACCESS_DENIED carries the projectId; the denied project
// delivers nothing.
func TestWSAccessDenied(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	c := dialWS(t, s, s.userToken(t, "u1", "p1"))
	for _, ack := range []int64{-1, 4} {
		c.sendEvent(t, "join_project", map[string]any{"projectId": "secret"}, ack)
		m := c.expectError(t, "PROJECT_ACCESS_DENIED")
		checkAck(t, m, ack)
		if dataOf(t, m)["projectId"] != "secret" {
			t.Errorf("%v lacks projectId", m)
		}
	}
	publish(t, s, s.serviceToken(t), "secret", "story_uploaded", map[string]any{})
	c.expectNothingQueued(t)
	// A token without a projects claim may join nothing in embedded mode.
	c2 := dialWS(t, s, s.userToken(t, "u2"))
	c2.sendEvent(t, "join_project", "p1", 1)
	c2.expectError(t, "PROJECT_ACCESS_DENIED")
}

// Section 6: malformed frames get INVALID_MESSAGE, unknown events
// UNKNOWN_EVENT; none closes the connection or disturbs another client.
func TestWSBadFrames(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	svc := s.serviceToken(t)
	bad := dialWS(t, s, s.userToken(t, "bad", "p1"), named("bad"))
	good := dialWS(t, s, s.userToken(t, "good", "p1"), named("good"))
	bad.join(t, "p1")
	good.join(t, "p1")

	cases := []struct {
		frame string
		code  string
		ack   int64 // -1: the error carries no ack
	}{
		{`hello`, "INVALID_MESSAGE", -1},
		{``, "INVALID_MESSAGE", -1},
		{`[1,2]`, "INVALID_MESSAGE", -1},
		{`"ping"`, "INVALID_MESSAGE", -1},
		{`42`, "INVALID_MESSAGE", -1},
		{`null`, "INVALID_MESSAGE", -1},
		{`{"event":"ping"`, "INVALID_MESSAGE", -1},
		{`{"event":"ping"} trailing`, "INVALID_MESSAGE", -1},
		{"{\"event\":\"\xff\xfe\"}", "INVALID_MESSAGE", -1},
		{`{"data":{},"ack":3}`, "INVALID_MESSAGE", 3},
		{`{"event":null,"ack":4}`, "INVALID_MESSAGE", 4},
		{`{"event":5,"ack":5}`, "INVALID_MESSAGE", 5},
		{`{"event":"","ack":6}`, "INVALID_MESSAGE", 6},
		{`{"event":"ping","ack":"7"}`, "INVALID_MESSAGE", -1},
		{`{"event":"ping","ack":{}}`, "INVALID_MESSAGE", -1},
		{`{"event":"join_project","ack":8}`, "INVALID_MESSAGE", 8},
		{`{"event":"join_project","data":42,"ack":9}`, "INVALID_MESSAGE", 9},
		{`{"event":"join_project","data":{"projectId":""},"ack":10}`, "INVALID_MESSAGE", 10},
		{`{"event":"join_project","data":{"projectId":"p1","since":-1},"ack":11}`, "INVALID_MESSAGE", 11},
		{`{"event":"join_project","data":{"projectId":"p1","since":1.5},"ack":12}`, "INVALID_MESSAGE", 12},
		{`{"event":"join_project","data":{"projectId":"a,b"},"ack":13}`, "INVALID_MESSAGE", 13},
		{`{"event":"leave_project","data":[],"ack":14}`, "INVALID_MESSAGE", 14},
		{`{"event":"typing_start","data":"p1","ack":15}`, "INVALID_MESSAGE", 15},
		{`{"event":"typing_stop","data":{"projectId":5},"ack":16}`, "INVALID_MESSAGE", 16},
		{`{"event":"auth","data":{},"ack":17}`, "INVALID_MESSAGE", 17},
		{`{"event":"auth","data":"token","ack":18}`, "INVALID_MESSAGE", 18},
		{`{"event":"nope","ack":19}`, "UNKNOWN_EVENT", 19},
		{`{"event":"story_uploaded","data":{"story":{}}}`, "UNKNOWN_EVENT", -1},
		{`{"event":"joined_project","data":{},"ack":0}`, "UNKNOWN_EVENT", 0},
	}
	// Meanwhile the other client keeps receiving events.
	var wg sync.WaitGroup
	wg.Add(1)
	var pubErr error
	go func() {
		defer wg.Done()
		for i := 0; i < 20 && pubErr == nil; i++ {
			_, pubErr = publishErr(s, svc, "p1", "story_processing", map[string]any{"storyId": "s", "status": "processing"})
		}
	}()
	for _, tc := range cases {
		bad.sendRaw(t, tc.frame)
		m := bad.read(t)
		for m["projectId"] == "p1" && m["event"] == "story_processing" { // live events interleave
			m = bad.read(t)
		}
		if got := errorCode(t, m); got != tc.code {
			t.Errorf("frame %q: got %v, want %s", tc.frame, m, tc.code)
		}
		checkAck(t, m, tc.ack)
	}
	bad.sendBinary(t, []byte(`{"event":"ping","ack":1}`))
	m := bad.expect(t, "error")
	if code := errorCode(t, m); code != "INVALID_MESSAGE" {
		t.Errorf("binary frame: got %v, want INVALID_MESSAGE", m)
	}
	wg.Wait()
	if pubErr != nil {
		t.Fatal(pubErr)
	}
	for i := int64(1); i <= 20; i++ {
		good.expectEvent(t, "p1", i)
	}
	good.expectNothingQueued(t)
	// The bad client is still open, still joined and still answered.
	for _, m := range bad.sync(t) {
		if m["event"] != "story_processing" {
			t.Errorf("bad client: unexpected %v", m)
		}
	}
	seq := publish(t, s, svc, "p1", "story_processed", map[string]any{"storyId": "s", "status": "done"})
	bad.expect(t, "story_processed")
	good.expectEvent(t, "p1", seq)
}

// Section 6: RATE_LIMIT_EXCEEDED after RATE_LIMIT_MAX_EVENTS frames of one
// user, all of its connections together; the refused frame is not acted on.
func TestWSRateLimit(t *testing.T) {
	t.Parallel()
	// A long window: no token comes back during the test.
	s := startServer(t, "RATE_LIMIT_WINDOW_MS=3600000", "RATE_LIMIT_MAX_EVENTS=100")
	a := dialWS(t, s, s.userToken(t, "u1", "p1"), named("u1 a"))
	b := dialWS(t, s, s.userToken(t, "u1", "p1"), named("u1 b"))
	other := dialWS(t, s, s.userToken(t, "u2", "p1"), named("u2"))

	// 60 frames on a, 40 on b, pipelined.
	for i := 0; i < 60; i++ {
		a.sendEvent(t, "ping", nil, int64(i))
	}
	for i := 0; i < 40; i++ {
		b.sendEvent(t, "ping", nil, int64(i))
	}
	for i := 0; i < 60; i++ {
		checkAck(t, a.expectNext(t, "pong"), int64(i))
	}
	for i := 0; i < 40; i++ {
		checkAck(t, b.expectNext(t, "pong"), int64(i))
	}
	// The 101st, on either connection, is refused.
	for _, c := range []*wsClient{a, b} {
		c.sendEvent(t, "ping", nil, 101)
		m := c.expectError(t, "RATE_LIMIT_EXCEEDED")
		checkAck(t, m, 101)
		if r := num(t, dataOf(t, m), "retryAfterMs"); r <= 0 || r > 3600000 {
			t.Errorf("retryAfterMs %d", r)
		}
	}
	// Not acted on: a refused join joins nothing.
	b.sendEvent(t, "join_project", "p1", -1)
	b.expectError(t, "RATE_LIMIT_EXCEEDED")
	other.join(t, "p1")
	seq := publish(t, s, s.serviceToken(t), "p1", "story_uploaded", map[string]any{})
	other.expectEvent(t, "p1", seq)
	b.expectSilence(t, 300*time.Millisecond)
	// Another user is not limited.
	other.expectNothingQueued(t)
	// Bad frames are answered and do not close the connection (over the
	// limit they count as frames: TestWSRateLimitBadFramesAndAbuse).
	other.sendRaw(t, "garbage")
	other.expectError(t, "INVALID_MESSAGE")
	other.expectNothingQueued(t)
}

// Bad frames count against the limit too (they are client frames), auth
// frames do not, and a client that keeps going after 100 refusals in a row
// is closed with 4429 while another user's connection is untouched.
func TestWSRateLimitBadFramesAndAbuse(t *testing.T) {
	t.Parallel()
	s := startServer(t, "RATE_LIMIT_WINDOW_MS=3600000", "RATE_LIMIT_MAX_EVENTS=3")
	tok := s.userToken(t, "u1")
	c := dialWS(t, s, tok)
	other := dialWS(t, s, s.userToken(t, "u2"))
	c.sendRaw(t, "garbage")
	c.expectError(t, "INVALID_MESSAGE")
	c.authenticate(t, tok) // not counted
	c.call(t, "ping", nil)
	c.call(t, "ping", nil)
	c.sendRaw(t, "garbage") // the 4th counted frame
	c.expectError(t, "RATE_LIMIT_EXCEEDED")
	for i := 0; i < 99; i++ {
		c.sendRaw(t, "garbage")
	}
	for i := 0; i < 99; i++ {
		c.expectNext(t, "error")
	}
	c.expectClose(t, 4429)
	if m := other.call(t, "ping", nil); m["event"] != "pong" {
		t.Fatalf("the other user's connection: %v", m)
	}
}

// The limit refills: after retryAfterMs a frame passes again.
func TestWSRateLimitRefill(t *testing.T) {
	t.Parallel()
	s := startServer(t, "RATE_LIMIT_WINDOW_MS=1500", "RATE_LIMIT_MAX_EVENTS=3")
	c := dialWS(t, s, s.userToken(t, "u1"))
	for i := 0; i < 3; i++ {
		c.call(t, "ping", nil)
	}
	c.sendEvent(t, "ping", nil, 1)
	m := c.expectError(t, "RATE_LIMIT_EXCEEDED")
	retry := time.Duration(num(t, dataOf(t, m), "retryAfterMs")) * time.Millisecond
	if retry <= 0 || retry > 1500*time.Millisecond {
		t.Fatalf("retryAfterMs %v", retry)
	}
	time.Sleep(retry + 50*time.Millisecond) // the documented wait, not a wait for an event
	if m := c.call(t, "ping", nil); m["event"] != "pong" {
		t.Fatalf("after retryAfterMs: %v, want pong", m)
	}
}

// Section 3: members get a published event, a connection that did not join
// does not (it is alive before and after).
func TestWSPublishReachesMembersOnly(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	svc := s.serviceToken(t)
	m1 := dialWS(t, s, s.userToken(t, "u1", "p1"), named("member 1"))
	m2 := dialWS(t, s, s.userToken(t, "u2", "p1"), named("member 2"))
	idle := dialWS(t, s, s.userToken(t, "u3", "p1"), named("allowed, not joined"))
	denied := dialWS(t, s, s.userToken(t, "u4", "p2"), named("denied"))
	m1.join(t, "p1")
	m2.join(t, "p1")
	denied.call(t, "join_project", "p1")
	denied.join(t, "p2")
	idle.expectNothingQueued(t)
	denied.expectNothingQueued(t)

	data := map[string]any{"story": map[string]any{"id": "s1", "projectId": "p1", "title": "First day"}}
	seq := publish(t, s, svc, "p1", "story_uploaded", data)
	for _, c := range []*wsClient{m1, m2} {
		ev := c.expectEvent(t, "p1", seq)
		if ev["event"] != "story_uploaded" {
			t.Errorf("%v", ev)
		}
		b, _ := json.Marshal(ev["data"])
		want, _ := json.Marshal(data)
		if string(b) != string(want) {
			t.Errorf("data %s, want %s", b, want)
		}
		if ts := num(t, ev, "ts"); time.Since(time.UnixMilli(ts)).Abs() > time.Minute {
			t.Errorf("ts %d is not the publish time in ms", ts)
		}
	}
	idle.expectNothingQueued(t)
	denied.expectNothingQueued(t)
}

// Section 3: resume with since.
func TestWSResume(t *testing.T) {
	t.Parallel()
	// The embedded store keeps 10 events per project (trimmed to 5 beyond
	// that), rooms remember 4.
	s := startServer(t, "EMBEDDED_HISTORY=10", "ROOM_HISTORY=4")
	svc := s.serviceToken(t)
	tok := s.userToken(t, "u1", "r1", "r2", "r3", "r4", "r5")
	pub := func(p string, n int) {
		for i := 0; i < n; i++ {
			publish(t, s, svc, p, "transcript_updated", map[string]any{"storyId": "s", "transcript": fmt.Sprint(i)})
		}
	}
	joinSince := func(c *wsClient, p string, since int64) map[string]any {
		t.Helper()
		m := c.call(t, "join_project", map[string]any{"projectId": p, "since": since})
		if m["event"] != "joined_project" {
			t.Fatalf("join %s since %d: %v", p, since, m)
		}
		return dataOf(t, m)
	}
	check := func(d map[string]any, seq int64, recovered bool) {
		t.Helper()
		if d["seq"] != float64(seq) || d["recovered"] != recovered {
			t.Fatalf("joined_project %v: want seq %d, recovered %v", d, seq, recovered)
		}
	}

	t.Run("from the store", func(t *testing.T) {
		pub("r1", 5)
		c := dialWS(t, s, tok)
		check(joinSince(c, "r1", 2), 5, true)
		for seq := int64(3); seq <= 5; seq++ {
			c.expectEvent(t, "r1", seq)
		}
		pub("r1", 1)
		c.expectEvent(t, "r1", 6)
		c.expectNothingQueued(t)
	})
	t.Run("from the room and the store", func(t *testing.T) {
		member := dialWS(t, s, tok, named("member"))
		member.join(t, "r2")
		pub("r2", 8)
		for seq := int64(1); seq <= 8; seq++ {
			member.expectEvent(t, "r2", seq)
		}
		for _, since := range []int64{6, 2} { // within the room's 4, then beyond them
			c := dialWS(t, s, tok)
			check(joinSince(c, "r2", since), 8, true)
			for seq := since + 1; seq <= 8; seq++ {
				c.expectEvent(t, "r2", seq)
			}
			c.expectNothingQueued(t)
		}
	})
	t.Run("since equals seq", func(t *testing.T) {
		pub("r3", 3)
		c := dialWS(t, s, tok)
		check(joinSince(c, "r3", 3), 3, true)
		c.expectNothingQueued(t)
		c2 := dialWS(t, s, tok)
		check(joinSince(c2, "r5", 0), 0, true) // no event at all yet
		c2.expectNothingQueued(t)
	})
	t.Run("since above seq", func(t *testing.T) {
		c := dialWS(t, s, tok)
		check(joinSince(c, "r3", 99), 3, false)
		c.expectNothingQueued(t)
		pub("r3", 1)
		c.expectEvent(t, "r3", 4)
	})
	t.Run("history gone", func(t *testing.T) {
		pub("r4", 30) // the store holds the last 5..10 only
		c := dialWS(t, s, tok)
		check(joinSince(c, "r4", 1), 30, false)
		c.expectNothingQueued(t)
		pub("r4", 1)
		c.expectEvent(t, "r4", 31)
		// What is still held is still recovered.
		c2 := dialWS(t, s, tok)
		check(joinSince(c2, "r4", 29), 31, true)
		c2.expectEvent(t, "r4", 30)
		c2.expectEvent(t, "r4", 31)
	})
}

// Beyond MAX_REPLAY events a join answers recovered:false.
func TestWSResumeMaxReplay(t *testing.T) {
	t.Parallel()
	s := startServer(t, "MAX_REPLAY=5")
	svc := s.serviceToken(t)
	for i := 0; i < 8; i++ {
		publish(t, s, svc, "p1", "export_progress", map[string]any{"exportId": "e", "progress": i})
	}
	c := dialWS(t, s, s.userToken(t, "u1", "p1"))
	m := c.call(t, "join_project", map[string]any{"projectId": "p1", "since": 2})
	if d := dataOf(t, m); d["recovered"] != false || d["seq"] != float64(8) {
		t.Fatalf("6 missed events, MAX_REPLAY 5: %v, want recovered false", d)
	}
	c.expectNothingQueued(t)
	c2 := dialWS(t, s, s.userToken(t, "u1", "p1"))
	m = c2.call(t, "join_project", map[string]any{"projectId": "p1", "since": 3})
	if d := dataOf(t, m); d["recovered"] != true {
		t.Fatalf("5 missed events, MAX_REPLAY 5: %v, want recovered true", d)
	}
	for seq := int64(4); seq <= 8; seq++ {
		c2.expectEvent(t, "p1", seq)
	}
}

// Section 5: concurrent publishers; every member sees each seq once, in order.
func TestWSExactlyOnce(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	svc := s.serviceToken(t)
	var clients []*wsClient
	for i := 0; i < 3; i++ {
		c := dialWS(t, s, s.userToken(t, fmt.Sprintf("u%d", i), "eo"), named(fmt.Sprintf("client %d", i)))
		c.join(t, "eo")
		clients = append(clients, c)
	}
	const publishers, each = 4, 50
	var mu sync.Mutex
	bySeq := map[int64]string{}
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for g := 0; g < publishers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				id := fmt.Sprintf("g%d-%d", g, i)
				seq, err := publishErr(s, svc, "eo", "interaction_added", map[string]any{"storyId": "s1", "id": id})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				bySeq[seq] = id
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(bySeq) != publishers*each {
		t.Fatalf("publish answered %d distinct seqs, want %d", len(bySeq), publishers*each)
	}
	for _, c := range clients {
		for seq := int64(1); seq <= publishers*each; seq++ {
			ev := c.expectEvent(t, "eo", seq)
			if id := dataOf(t, ev)["id"]; id != bySeq[seq] {
				t.Fatalf("%s: seq %d carries %v, publish answered seq %d for %s", c.name, seq, id, seq, bySeq[seq])
			}
		}
		c.expectNothingQueued(t)
	}
}

// Section 3: a handshake with a bad header or query token gets HTTP 401 and a
// JSON error, without upgrade.
func TestWSHandshakeRefused(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	cases := []struct {
		name, token, code string
	}{
		{"garbage", "garbage", "UNAUTHORIZED"},
		{"bad signature", startServerSecretToken(t, "u1"), "UNAUTHORIZED"},
		{"alg none", algNoneToken("u1"), "UNAUTHORIZED"},
		{"expired", s.expiredToken(t, "u1"), "TOKEN_EXPIRED"},
	}
	for _, tc := range cases {
		for _, header := range []bool{false, true} {
			opts := []dialOpt{}
			if header {
				opts = append(opts, withTokenHeader())
			}
			c, resp, err := tryDialWS(t, s, tc.token, opts...)
			if err == nil {
				c.Conn.CloseNow()
				t.Errorf("%s (header %v): upgraded, want 401", tc.name, header)
				continue
			}
			if resp == nil || resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s (header %v): %v, want HTTP 401", tc.name, header, err)
				continue
			}
			var body struct {
				Error struct{ Code, Message string }
			}
			b := readBody(t, resp)
			if json.Unmarshal(b, &body) != nil || body.Error.Code != tc.code || body.Error.Message == "" {
				t.Errorf("%s (header %v): body %s, want {\"error\":{\"code\":%q,...}}", tc.name, header, b, tc.code)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("%s: Content-Type %q", tc.name, ct)
			}
		}
	}
	// "Bearer" is case-insensitive and the header wins over a bad query.
	c := dialWS(t, s, "garbage", withHeader("Authorization", "bearer "+s.userToken(t, "u1", "p1")))
	c.join(t, "p1")
}

// Close 1008: an Origin that is not allowed.
func TestWSOrigin(t *testing.T) {
	t.Parallel()
	t.Run("configured", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "WEBSOCKET_CORS_ORIGIN=https://app.example.com, https://other.example.com")
		tok := s.userToken(t, "u1")
		dialWS(t, s, tok, withOrigin("https://evil.example.com")).expectClose(t, websocket.StatusPolicyViolation)
		dialWS(t, s, "", withoutToken(), withOrigin("https://evil.example.com")).expectClose(t, websocket.StatusPolicyViolation)
		dialWS(t, s, tok, withOrigin("https://app.example.com")).expectNothingQueued(t)
		dialWS(t, s, tok, withOrigin("https://other.example.com")).expectNothingQueued(t)
		dialWS(t, s, tok).expectNothingQueued(t) // no Origin: not a browser
	})
	t.Run("same origin by default", func(t *testing.T) {
		t.Parallel()
		s := startServer(t)
		tok := s.userToken(t, "u1")
		dialWS(t, s, tok, withOrigin("https://evil.example.com")).expectClose(t, websocket.StatusPolicyViolation)
		dialWS(t, s, tok, withOrigin(s.URL)).expectNothingQueued(t)
		dialWS(t, s, tok).expectNothingQueued(t)
	})
}

// Close 1009: a frame over 16 KiB; 10 KiB passes.
func TestWSFrameTooBig(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	c := dialWS(t, s, s.userToken(t, "u1"))
	pad := func(n int) string {
		f := `{"event":"ping","data":{"pad":"%s"},"ack":1}`
		return fmt.Sprintf(f, strings.Repeat("x", n-len(f)+2))
	}
	ok := pad(10 << 10)
	if len(ok) != 10<<10 {
		t.Fatalf("frame is %d bytes", len(ok))
	}
	c.sendRaw(t, ok)
	checkAck(t, c.expectNext(t, "pong"), 1)
	c.sendRaw(t, pad(16<<10)) // exactly 16 KiB: still fine
	c.expectNext(t, "pong")
	// The server may close (and reset) before the whole frame is written:
	// the write's own error does not matter, the close code does.
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := c.Conn.Write(ctx, websocket.MessageText, []byte(pad(16<<10+1))); err != nil {
		t.Logf("writing the big frame: %v", err)
	}
	c.expectClose(t, websocket.StatusMessageTooBig)
}

// Close 4401 when the token expires; TOKEN_EXPIRED comes first.
func TestWSTokenExpiry(t *testing.T) {
	t.Parallel()
	s := startServer(t, "JWT_LEEWAY_MS=0") // the close comes at exp + leeway
	tok := s.token(t, auth.Claims{UserID: "u1", Projects: []string{"p1"}}, 2*time.Second)
	exp := tokenExp(t, tok)
	c := dialWS(t, s, tok)
	c.join(t, "p1")
	c.expectError(t, "TOKEN_EXPIRED")
	if time.Now().Before(exp.Add(-100 * time.Millisecond)) {
		t.Errorf("closed at %v, before the token's exp %v", time.Now(), exp)
	}
	c.expectClose(t, 4401)
}

// A token accepted inside the leeway (its exp already past) lives until exp
// plus the leeway, not less: it is not cut the moment it is accepted.
func TestWSTokenLeeway(t *testing.T) {
	t.Parallel()
	s := startServer(t, "JWT_LEEWAY_MS=3000")
	exp := time.Now().Add(-time.Second).Truncate(time.Second)
	tok := s.rawToken(t, jwt.MapClaims{"userId": "u1", "projects": []string{"p1"}, "exp": exp.Unix()})
	c := dialWS(t, s, tok)
	c.join(t, "p1")
	c.expectError(t, "TOKEN_EXPIRED")
	if end := exp.Add(3 * time.Second); time.Now().Before(end.Add(-100 * time.Millisecond)) {
		t.Errorf("closed at %v, before the token's exp + leeway %v", time.Now(), end)
	}
	c.expectClose(t, 4401)
}

// An auth frame with a new token before expiry keeps the connection open; a
// token of another user is refused.
func TestWSTokenRefresh(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	short := s.token(t, auth.Claims{UserID: "u1", Projects: []string{"p1"}}, 3*time.Second)
	exp := tokenExp(t, short)
	c := dialWS(t, s, short)
	c.join(t, "p1")

	m := c.call(t, "auth", map[string]any{"token": s.userToken(t, "u2", "p1")})
	if errorCode(t, m) != "UNAUTHORIZED" {
		t.Fatalf("refresh naming another user: %v, want UNAUTHORIZED", m)
	}
	d := c.authenticate(t, s.token(t, auth.Claims{UserID: "u1", Projects: []string{"p1"}}, time.Hour))
	if d["userId"] != "u1" || num(t, d, "expiresAt") < time.Now().Add(50*time.Minute).UnixMilli() {
		t.Errorf("authenticated %v", d)
	}
	// Past the first token's expiry: still open, nothing came.
	c.expectSilence(t, time.Until(exp)+time.Second)
	c.expectNothingQueued(t)
	seq := publish(t, s, s.serviceToken(t), "p1", "story_uploaded", map[string]any{})
	c.expectEvent(t, "p1", seq)
}

// Close 4408: no auth frame in time (AUTH_TIMEOUT_MS, 10 s by default).
func TestWSAuthTimeout(t *testing.T) {
	t.Parallel()
	s := startServer(t, "AUTH_TIMEOUT_MS=2000")
	start := time.Now()
	late := dialWS(t, s, "", withoutToken(), named("no auth"))
	ontime := dialWS(t, s, "", withoutToken(), named("auth in time"))
	ontime.authenticate(t, s.userToken(t, "u1"))
	late.expectClose(t, 4408)
	if d := time.Since(start); d < 1900*time.Millisecond {
		t.Errorf("closed after %v, before the 2 s deadline", d)
	}
	ontime.expectSilence(t, time.Until(start.Add(2500*time.Millisecond)))
	ontime.expectNothingQueued(t)
}

// Close 4429 / HTTP 429: MAX_CONNECTIONS_PER_USER.
func TestWSTooManyConnections(t *testing.T) {
	t.Parallel()
	s := startServer(t, "MAX_CONNECTIONS_PER_USER=2")
	tok := s.userToken(t, "u1")
	a := dialWS(t, s, tok)
	dialWS(t, s, "", withoutToken()).authenticate(t, tok)

	// Third by query token: refused before the upgrade.
	c, resp, err := tryDialWS(t, s, tok)
	if err == nil {
		c.Conn.CloseNow()
		t.Fatal("third connection upgraded, want HTTP 429")
	}
	if resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third connection: %v, want HTTP 429", err)
	}
	var body struct{ Error struct{ Code string } }
	if b := readBody(t, resp); json.Unmarshal(b, &body) != nil || body.Error.Code == "" {
		t.Errorf("429 body %s: want a JSON error", b)
	}

	// Third by auth frame: an error, then close 4429.
	third := dialWS(t, s, "", withoutToken())
	third.sendEvent(t, "auth", map[string]any{"token": tok}, 1)
	checkAck(t, third.expectError(t, "RATE_LIMIT_EXCEEDED"), 1)
	third.expectClose(t, 4429)

	// Others are not affected, and a slot frees when a connection closes.
	dialWS(t, s, s.userToken(t, "u2")).expectNothingQueued(t)
	a.expectNothingQueued(t)
	a.Conn.Close(websocket.StatusNormalClosure, "")
	eventually(t, waitTimeout, "a slot of u1 to free", func() bool {
		c, _, err := tryDialWS(t, s, tok)
		if err == nil {
			c.Conn.CloseNow()
		}
		return err == nil
	})
}

// Close 4001: a client that does not read while events pile up.
func TestWSSlowClient(t *testing.T) {
	t.Parallel()
	// QUEUE_LIMIT must stay above MAX_REPLAY (the hub raises it otherwise).
	s := startServer(t, "QUEUE_LIMIT=8", "MAX_REPLAY=4", "ROOM_HISTORY=4", "EMBEDDED_HISTORY=16")
	svc := s.serviceToken(t)
	tok := s.userToken(t, "slow", "p1")
	slow := dialWS(t, s, tok, manualRead(), named("slow"))
	slow.join(t, "p1")
	other := dialWS(t, s, s.userToken(t, "other", "p2"), named("other project"))
	other.join(t, "p2")

	// ~60 KB events: the socket buffers (several MB on loopback) must fill
	// before the server's queue does.
	blob := make([]byte, 45000)
	rand.Read(blob)
	data := map[string]any{"storyId": "s1", "transcript": base64.StdEncoding.EncodeToString(blob)}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var pubErr error
	var errOnce sync.Once
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := publishErr(s, svc, "p1", "transcript_updated", data); err != nil {
					errOnce.Do(func() { pubErr = err })
					return
				}
			}
		}()
	}
	eventually(t, 60*time.Second, "the server to close the slow client (sagapush_slow_closed_total)", func() bool {
		return s.metric(t, "sagapush_slow_closed_total") >= 1
	})
	close(stop)
	wg.Wait()
	if pubErr != nil {
		t.Fatal(pubErr)
	}
	// The client was stalled; it reads again a while later (a paused tab, a
	// phone back from background) and learns why it was closed.
	time.Sleep(2 * time.Second)
	slow.startReading()
	var last int64
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for done := false; !done; {
		select {
		case m := <-slow.msgs:
			var ev struct {
				Seq int64 `json:"seq"`
			}
			json.Unmarshal(m.data, &ev)
			if ev.Seq != last+1 {
				t.Fatalf("slow client got seq %d after %d", ev.Seq, last)
			}
			last = ev.Seq
		case <-slow.done:
			done = true
		case <-timer.C:
			t.Fatal("slow client still open")
		}
	}
	if got := websocket.CloseStatus(slow.err); got != 4001 {
		t.Fatalf("slow client ended with %v (close status %d) after seq %d, want 4001", slow.err, got, last)
	}
	t.Logf("the slow client got %d events before 4001", last)
	// Nobody else is affected.
	other.expectNothingQueued(t)
}

// A client that answers no ping (it stopped reading) is closed after
// WEBSOCKET_PING_TIMEOUT; a reading client stays.
func TestWSPingTimeout(t *testing.T) {
	t.Parallel()
	s := startServer(t, "WEBSOCKET_PING_INTERVAL=250", "WEBSOCKET_PING_TIMEOUT=1500")
	admin := s.token(t, auth.Claims{UserID: "admin", Role: auth.RoleAdmin}, time.Hour)
	wsCount := func() float64 {
		_, body := s.getJSON(t, "/api/websocket/stats", admin)
		d, _ := body["data"].(map[string]any)
		tr, _ := d["transports"].(map[string]any)
		n, _ := tr["websocket"].(float64)
		return n
	}
	start := time.Now()
	dead := dialWS(t, s, s.userToken(t, "u1"), manualRead(), named("not reading"))
	alive := dialWS(t, s, s.userToken(t, "u2"), named("reading"))
	if n := wsCount(); n != 2 {
		t.Fatalf("%v WebSocket connections, want 2", n)
	}
	eventually(t, waitTimeout, "the silent client to be dropped", func() bool { return wsCount() == 1 })
	if d := time.Since(start); d < 1400*time.Millisecond {
		t.Errorf("dropped after %v, before WEBSOCKET_PING_TIMEOUT", d)
	}
	if err := dead.expectEnd(t); websocket.CloseStatus(err) == websocket.StatusNormalClosure {
		t.Errorf("silent client: %v", err)
	}
	// The reading client answered pings all along: open after 3 timeouts.
	alive.expectSilence(t, time.Until(start.Add(4500*time.Millisecond)))
	alive.expectNothingQueued(t)
}

// A client frame counts as a sign of life too (docs/protocol.md section 4.5: "without any client
// frame or pong").
func TestWSClientFramesKeepAlive(t *testing.T) {
	t.Parallel()
	// Pings far apart: only frames can keep the connection alive.
	s := startServer(t, "WEBSOCKET_PING_INTERVAL=60000", "WEBSOCKET_PING_TIMEOUT=1500")
	c := dialWS(t, s, s.userToken(t, "u1"))
	start := time.Now()
	for time.Since(start) < 3500*time.Millisecond {
		c.sendEvent(t, "ping", nil, -1)
		c.expectNext(t, "pong")
		c.expectSilence(t, 300*time.Millisecond)
	}
	// Silent now: closed within the timeout.
	if err := c.expectEnd(t); err == nil {
		t.Fatal("no error")
	}
}

// Joins racing with concurrent publishers: a join with since gets every
// event once, in order (replay then live, no gap, no duplicate); a join
// without since gets every event after its seq. Rooms remember only 4
// events, so replays are stitched from the store and the room.
func TestWSJoinDuringPublish(t *testing.T) {
	t.Parallel()
	s := startServer(t, "ROOM_HISTORY=4")
	svc := s.serviceToken(t)
	tok := s.userToken(t, "u1", "jp")
	anchor := dialWS(t, s, tok, named("anchor"))
	anchor.join(t, "jp")

	const publishers, each = 4, 100
	const total = publishers * each
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for g := 0; g < publishers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if _, err := publishErr(s, svc, "jp", "export_progress", map[string]any{"exportId": "e", "progress": i}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	type joiner struct {
		c     *wsClient
		first int64 // first seq it must get
	}
	var joiners []joiner
	var seen int64
	for i, at := range []int64{10, 60, 120, 200, 290, 370} {
		for seen < at {
			seen = num(t, anchor.expectEvent(t, "jp", seen+1), "seq")
		}
		c := dialWS(t, s, tok, named(fmt.Sprintf("joiner %d", i)))
		if i%2 == 0 {
			d := dataOf(t, c.call(t, "join_project", map[string]any{"projectId": "jp", "since": 0}))
			if d["recovered"] != true {
				t.Fatalf("%s: %v, want recovered true", c.name, d)
			}
			joiners = append(joiners, joiner{c, 1})
		} else {
			d := c.join(t, "jp")
			joiners = append(joiners, joiner{c, num(t, d, "seq") + 1})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for seen < total {
		seen = num(t, anchor.expectEvent(t, "jp", seen+1), "seq")
	}
	for _, j := range joiners {
		for seq := j.first; seq <= total; seq++ {
			j.c.expectEvent(t, "jp", seq)
		}
		j.c.expectNothingQueued(t)
	}
	anchor.expectNothingQueued(t)
}

// Embedded mode: the token's projects claim is the access list. A refreshed
// token without a joined project removes the connection from that room.
func TestWSRefreshDropsProject(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	svc := s.serviceToken(t)
	c := dialWS(t, s, s.userToken(t, "u1", "p1", "p2"))
	other := dialWS(t, s, s.userToken(t, "u1", "p1", "p2"), named("same user, old token"))
	c.join(t, "p1")
	c.join(t, "p2")
	other.join(t, "p2")
	c.authenticate(t, s.userToken(t, "u1", "p1"))
	m := c.expectNext(t, "left_project")
	if d := dataOf(t, m); d["projectId"] != "p2" || d["reason"] != "access_revoked" {
		t.Fatalf("left_project %v: want p2, access_revoked", d)
	}
	seq := publish(t, s, svc, "p2", "story_uploaded", map[string]any{})
	other.expectEvent(t, "p2", seq) // its own token still allows p2
	c.expectNothingQueued(t)
	seq = publish(t, s, svc, "p1", "story_uploaded", map[string]any{})
	c.expectEvent(t, "p1", seq)
	c.sendEvent(t, "join_project", "p2", 1)
	c.expectError(t, "PROJECT_ACCESS_DENIED")
}

// Answers come in the order of the frames they answer, whatever the frame
// (text or binary, valid or not).
func TestWSAnswersInOrder(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	c := dialWS(t, s, s.userToken(t, "u1", "p1"))
	type want struct {
		event, code string
		ack         int64
	}
	var wants []want
	for i := int64(0); i < 10; i++ {
		c.sendEvent(t, "ping", nil, 3*i)
		wants = append(wants, want{"pong", "", 3 * i})
		c.sendBinary(t, []byte(`{"event":"ping"}`))
		wants = append(wants, want{"error", "INVALID_MESSAGE", -1})
		c.sendEvent(t, "join_project", "p1", 3*i+1)
		wants = append(wants, want{"joined_project", "", 3*i + 1})
		c.sendRaw(t, "{")
		wants = append(wants, want{"error", "INVALID_MESSAGE", -1})
		c.sendEvent(t, "nope", nil, 3*i+2)
		wants = append(wants, want{"error", "UNKNOWN_EVENT", 3*i + 2})
	}
	for i, w := range wants {
		m := c.read(t)
		if m["event"] != w.event || (w.code != "" && errorCode(t, m) != w.code) {
			t.Fatalf("answer %d: got %v, want %s %s", i, m, w.event, w.code)
		}
		checkAck(t, m, w.ack)
	}
	c.expectNothingQueued(t)
}

// A client that goes away right after its frames leaves nothing behind: no
// connection, user or room is left in the hub.
func TestWSAbruptCloseLeavesNothing(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	tok := s.userToken(t, "u1", "p1")
	admin := s.token(t, auth.Claims{UserID: "ops", Role: auth.RoleAdmin}, time.Hour)
	for i := 0; i < 30; i++ {
		c := dialWS(t, s, "", withoutToken())
		c.sendEvent(t, "auth", map[string]any{"token": tok}, -1)
		c.sendEvent(t, "join_project", "p1", -1)
		c.Conn.CloseNow()
		q := dialWS(t, s, tok)
		q.sendEvent(t, "join_project", "p1", -1)
		q.Conn.CloseNow()
	}
	for deadline := time.Now().Add(waitTimeout); ; {
		_, body := s.getJSON(t, "/api/websocket/stats", admin)
		d := dataOf(t, body)
		if d["totalConnections"] == float64(0) && d["projectCount"] == float64(0) && d["userCount"] == float64(0) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %v: connections left in the hub after their sockets closed", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A connection joins at most 200 projects: JOIN_PROJECT_ERROR beyond.
func TestWSTooManyProjects(t *testing.T) {
	t.Parallel()
	s := startServer(t, "RATE_LIMIT_MAX_EVENTS=1000")
	var projects []string
	for i := 0; i <= 200; i++ {
		projects = append(projects, fmt.Sprintf("p%d", i))
	}
	c := dialWS(t, s, s.userToken(t, "u1", projects...))
	for i, p := range projects[:200] {
		c.sendEvent(t, "join_project", p, int64(i))
	}
	for i := range projects[:200] {
		checkAck(t, c.expectNext(t, "joined_project"), int64(i))
	}
	c.sendEvent(t, "join_project", "p200", 200)
	m := c.expectError(t, "JOIN_PROJECT_ERROR")
	checkAck(t, m, 200)
	if dataOf(t, m)["projectId"] != "p200" {
		t.Errorf("%v lacks projectId", m)
	}
	// Leaving one makes room.
	c.call(t, "leave_project", "p0")
	if d := c.join(t, "p200"); d["projectId"] != "p200" {
		t.Errorf("joined %v", d)
	}
}

// HANDSHAKES_PER_SECOND / HANDSHAKE_BURST cap new connections per address.
func TestWSHandshakeRate(t *testing.T) {
	t.Parallel()
	s := startServer(t, "HANDSHAKES_PER_SECOND=1", "HANDSHAKE_BURST=2")
	tok := s.userToken(t, "u1")
	dialWS(t, s, tok)
	dialWS(t, s, tok)
	c, resp, err := tryDialWS(t, s, tok)
	if err == nil {
		c.Conn.CloseNow()
		t.Fatal("third handshake within the burst upgraded, want HTTP 429")
	}
	if resp == nil || resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third handshake: %v, want HTTP 429 with Retry-After", err)
	}
}

// auth frames have a limit of their own per connection (10 per window, the
// first included): more are refused without being verified, and the
// user's own frame limit is untouched.
func TestWSAuthFrameLimit(t *testing.T) {
	t.Parallel()
	s := startServer(t, "RATE_LIMIT_MAX_EVENTS=5")
	tok := s.userToken(t, "u1", "p1")
	c := dialWS(t, s, tok)
	for i := 1; i <= 10; i++ {
		if m := c.call(t, "auth", map[string]any{"token": tok}); m["event"] != "authenticated" {
			t.Fatalf("auth frame %d: %v", i, m)
		}
	}
	for i := 11; i <= 20; i++ {
		m := c.call(t, "auth", map[string]any{"token": tok})
		if errorCode(t, m) != "RATE_LIMIT_EXCEEDED" || dataOf(t, m)["retryAfterMs"] == nil {
			t.Fatalf("auth frame %d: %v, want RATE_LIMIT_EXCEEDED with retryAfterMs", i, m)
		}
	}
	if m := c.call(t, "ping", nil); m["event"] != "pong" {
		t.Fatalf("a ping after the refused auth frames: %v", m)
	}
}

// A typing relay of a sender whose name is not known (a token without
// name) carries userName null, not an empty string.
func TestWSTypingUnknownName(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	anon := dialWS(t, s, s.token(t, auth.Claims{UserID: "anon", Projects: []string{"p1"}}, time.Hour), named("anon"))
	bob := dialWS(t, s, s.userToken(t, "bob", "p1"), named("bob"))
	anon.join(t, "p1")
	bob.join(t, "p1")
	anon.sendEvent(t, "typing_start", map[string]any{"projectId": "p1", "storyId": "s1"}, 1)
	d := dataOf(t, bob.expectNext(t, "typing_start"))
	if v, ok := d["userName"]; !ok || v != nil {
		t.Fatalf("typing data %v: want userName null", d)
	}
}
