package e2e

// Presence (docs/protocol.md, presence): joined_project.online, user_online
// and user_offline on both transports, the grace, service connections, the
// API, and, with Postgres, several instances, a killed one, a revoked
// member and a listener that reconnects.

import (
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/saga-family/sagapush/auth"
)

// presenceMsg is a presence message as a client of either transport reads
// it: the event and its data.
type presenceMsg struct {
	Event     string
	ProjectID string
	UserID    string
	UserName  any // nil for null
}

func (m presenceMsg) String() string {
	return fmt.Sprintf("%s %s %s (%v)", m.Event, m.ProjectID, m.UserID, m.UserName)
}

func toPresence(t testing.TB, m map[string]any) (presenceMsg, bool) {
	ev, _ := m["event"].(string)
	if ev != "user_online" && ev != "user_offline" {
		return presenceMsg{}, false
	}
	d := dataOf(t, m)
	if _, seq := m["seq"]; seq {
		t.Fatalf("presence message %v carries a seq", m)
	}
	p, _ := m["projectId"].(string)
	u, _ := d["userId"].(string)
	return presenceMsg{Event: ev, ProjectID: p, UserID: u, UserName: d["userName"]}, true
}

// wsPresence reads c until a presence message comes.
func wsPresence(t testing.TB, c *wsClient) presenceMsg {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		m := c.read(t)
		if p, ok := toPresence(t, m); ok {
			return p
		}
		t.Logf("%s: skipping %v", c.name, m)
	}
	t.Fatalf("%s: no presence message within %v", c.name, waitTimeout)
	return presenceMsg{}
}

// ssePresence reads c until a presence message comes.
func ssePresence(t testing.TB, c *sseConn) presenceMsg {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		msg, m := c.read(t)
		if m == nil {
			continue
		}
		if p, ok := toPresence(t, m); ok {
			if msg.HasID {
				t.Fatalf("%s: presence message %v has an id: field", c.name, msg)
			}
			return p
		}
	}
	t.Fatalf("%s: no presence message within %v", c.name, waitTimeout)
	return presenceMsg{}
}

func expectPresence(t testing.TB, who string, got presenceMsg, event, projectID, userID string) {
	t.Helper()
	if got.Event != event || got.ProjectID != projectID || got.UserID != userID {
		t.Fatalf("%s: got %v, want %s %s %s", who, got, event, projectID, userID)
	}
}

// onlineOf returns a joined_project's online list as "id:name" strings
// (name "null" for null), in the order given, and fails unless it is
// sorted by userId.
func onlineOf(t testing.TB, joined map[string]any) []string {
	t.Helper()
	raw, ok := joined["online"].([]any)
	if !ok {
		t.Fatalf("joined_project %v has no online list", joined)
	}
	var out, ids []string
	for _, e := range raw {
		m := e.(map[string]any)
		name := "null"
		if n, ok := m["userName"].(string); ok {
			name = n
		} else if _, present := m["userName"]; !present {
			t.Fatalf("online entry %v lacks userName", m)
		}
		id, _ := m["userId"].(string)
		ids = append(ids, id)
		out = append(out, id+":"+name)
	}
	if !slices.IsSorted(ids) {
		t.Fatalf("online %v is not sorted by userId", ids)
	}
	return out
}

func wsJoinOnline(t testing.TB, c *wsClient, projectID string) []string {
	t.Helper()
	return onlineOf(t, c.join(t, projectID))
}

func (s *testServer) named(t testing.TB, id, name string, projects ...string) string {
	t.Helper()
	return s.token(t, auth.Claims{UserID: id, Name: name, Projects: projects}, time.Hour)
}

// presenceAPI returns GET /api/projects/{p}/presence's online list as
// "id:name:connections" strings.
func presenceAPI(t testing.TB, s *testServer, projectID, token string) []string {
	t.Helper()
	status, body := s.getJSON(t, "/api/projects/"+projectID+"/presence", token)
	if status != http.StatusOK {
		t.Fatalf("presence of %s: status %d, body %v", projectID, status, body)
	}
	if body["projectId"] != projectID {
		t.Fatalf("presence of %s: body %v", projectID, body)
	}
	raw, ok := body["online"].([]any)
	if !ok {
		t.Fatalf("presence of %s: no online list in %v", projectID, body)
	}
	var out []string
	for _, e := range raw {
		m := e.(map[string]any)
		name := "null"
		if n, ok := m["userName"].(string); ok {
			name = n
		}
		out = append(out, fmt.Sprintf("%v:%s:%v", m["userId"], name, m["connections"]))
	}
	return out
}

func same(got []string, want ...string) bool { return slices.Equal(got, want) }

// family seeds project p1 with the users (named as their id, capitalized):
// the first its storyteller, the others facilitators.
func (e *pgEnv) family(t testing.TB, users ...string) {
	t.Helper()
	e.exec(t, `INSERT INTO projects (id, name) VALUES ('p1', 'One')`)
	for i, u := range users {
		role := "facilitator"
		if i == 0 {
			role = "storyteller"
		}
		e.exec(t, `INSERT INTO users (id, name) VALUES ($1, $2)`, u, strings.ToUpper(u[:1])+u[1:])
		e.exec(t, `INSERT INTO project_roles (project_id, user_id, role) VALUES ('p1', $1, $2)`, u, role)
	}
}

// watching names a client that keeps presence messages.
func watching(name string) dialOpt {
	return func(c *dialConfig) { named(name)(c); seePresence()(c) }
}

// waitRows waits until the database holds n presence rows of the project:
// an instance writes its rows just after the joins, so another instance's
// join lists a user only once its row is there (before, it hears
// user_online instead).
func (e *pgEnv) waitRows(t testing.TB, projectID string, n int) {
	t.Helper()
	eventually(t, waitTimeout, fmt.Sprintf("%d presence rows of %s", n, projectID), func() bool {
		var got int
		err := e.db.QueryRow(`SELECT count(*) FROM push_presence WHERE project_id = $1`, projectID).Scan(&got)
		return err == nil && got == n
	})
}

// The list at join, arrivals, a second connection, departures after the
// grace and a reconnect inside it, on WebSocket.
func TestPresenceWebSocket(t *testing.T) {
	t.Parallel()
	s := startServer(t, "PRESENCE_GRACE_MS=1500")
	alice := dialWS(t, s, s.named(t, "alice", "Alice", "p1"), watching("alice"))
	if got := wsJoinOnline(t, alice, "p1"); !same(got, "alice:Alice") {
		t.Fatalf("alice's list %v, want herself", got)
	}
	bob := dialWS(t, s, s.named(t, "bob", "", "p1"), watching("bob"))
	if got := wsJoinOnline(t, bob, "p1"); !same(got, "alice:Alice", "bob:null") {
		t.Fatalf("bob's list %v", got)
	}
	on := wsPresence(t, alice)
	expectPresence(t, "alice", on, "user_online", "p1", "bob")
	if on.UserName != nil {
		t.Fatalf("bob has no name: userName %v, want null", on.UserName)
	}

	// Alice's second connection, named otherwise: nobody hears of it, and
	// the name she came online with stands.
	alice2 := dialWS(t, s, s.named(t, "alice", "Alice B.", "p1"), watching("alice2"))
	if got := wsJoinOnline(t, alice2, "p1"); !same(got, "alice:Alice", "bob:null") {
		t.Fatalf("alice2's list %v", got)
	}
	if got := presenceAPI(t, s, "p1", s.named(t, "bob", "", "p1")); !same(got, "alice:Alice:2", "bob:null:1") {
		t.Fatalf("API %v", got)
	}
	alice2.Conn.Close(websocket.StatusNormalClosure, "")
	// Bob goes and comes back within the grace: nothing at all.
	bob.Conn.Close(websocket.StatusNormalClosure, "")
	bob = dialWS(t, s, s.named(t, "bob", "", "p1"), watching("bob again"))
	if got := wsJoinOnline(t, bob, "p1"); !same(got, "alice:Alice", "bob:null") {
		t.Fatalf("bob's list after his reconnect %v", got)
	}
	alice.expectSilence(t, 2500*time.Millisecond)

	// Bob leaves the project (his connection stays): offline after the
	// grace; during it, the API and a join still list him.
	left := time.Now() // before the server can start the grace
	if m := bob.call(t, "leave_project", map[string]any{"projectId": "p1"}); m["event"] != "left_project" {
		t.Fatalf("leave: %v", m)
	}
	carol := dialWS(t, s, s.named(t, "carol", "Carol", "p1"), watching("carol"))
	if got := wsJoinOnline(t, carol, "p1"); !same(got, "alice:Alice", "bob:null", "carol:Carol") {
		t.Fatalf("carol's list during bob's grace %v", got)
	}
	if got := presenceAPI(t, s, "p1", s.serviceToken(t)); !same(got, "alice:Alice:1", "bob:null:0", "carol:Carol:1") {
		t.Fatalf("API during bob's grace %v", got)
	}
	expectPresence(t, "alice", wsPresence(t, alice), "user_online", "p1", "carol")
	expectPresence(t, "alice", wsPresence(t, alice), "user_offline", "p1", "bob")
	if d := time.Since(left); d < 1500*time.Millisecond {
		t.Fatalf("user_offline %v after bob left, before the grace of 1.5s", d)
	}
	expectPresence(t, "carol", wsPresence(t, carol), "user_offline", "p1", "bob")
	bob.expectSilence(t, 200*time.Millisecond) // he is not in the room
	if got := presenceAPI(t, s, "p1", s.serviceToken(t)); !same(got, "alice:Alice:1", "carol:Carol:1") {
		t.Fatalf("API after bob's grace %v", got)
	}
}

// SSE: the list on each project's joined_project, presence messages as
// event: user_online / user_offline without an id, and a switch of
// transport inside the grace that says nothing.
func TestPresenceSSE(t *testing.T) {
	t.Parallel()
	s := startServer(t, "PRESENCE_GRACE_MS=1500")
	alice := openPresenceSSE(t, s, "p1,p2", s.named(t, "alice", "Alice", "p1", "p2"))
	joined := alice.expectJoined(t, "p1", "p2")
	for _, p := range []string{"p1", "p2"} {
		if got := onlineOf(t, joined[p]); !same(got, "alice:Alice") {
			t.Fatalf("alice's list of %s: %v", p, got)
		}
	}
	bob := dialWS(t, s, s.named(t, "bob", "Bob", "p1"), watching("bob"))
	if got := wsJoinOnline(t, bob, "p1"); !same(got, "alice:Alice", "bob:Bob") {
		t.Fatalf("bob's list %v", got)
	}
	on := ssePresence(t, alice)
	expectPresence(t, "alice", on, "user_online", "p1", "bob")
	if on.UserName != "Bob" {
		t.Fatalf("userName %v, want Bob", on.UserName)
	}
	// Bob moves from WebSocket to SSE inside the grace: nothing.
	bob.Conn.Close(websocket.StatusNormalClosure, "")
	bobSSE := openPresenceSSE(t, s, "p1", s.named(t, "bob", "Bob", "p1"))
	if got := onlineOf(t, bobSSE.expectJoined(t, "p1")["p1"]); !same(got, "alice:Alice", "bob:Bob") {
		t.Fatalf("bob's SSE list %v", got)
	}
	// Alice hears nothing but heartbeats; then bob's stream closes and
	// she hears user_offline after the grace.
	if m, ok, _ := alice.nextMessage(2500 * time.Millisecond); ok {
		t.Fatalf("alice got %v during bob's switch, want nothing", m)
	}
	bobSSE.close()
	expectPresence(t, "alice", ssePresence(t, alice), "user_offline", "p1", "bob")
	// Alice's own stream going: a WebSocket member hears it.
	carol := dialWS(t, s, s.named(t, "carol", "Carol", "p2"), watching("carol"))
	if got := wsJoinOnline(t, carol, "p2"); !same(got, "alice:Alice", "carol:Carol") {
		t.Fatalf("carol's list %v", got)
	}
	alice.close()
	expectPresence(t, "carol", wsPresence(t, carol), "user_offline", "p2", "alice")
}

// openPresenceSSE opens a stream and reads its retry: block.
func openPresenceSSE(t testing.TB, s *testServer, projects, token string) *sseConn {
	t.Helper()
	c := openSSEWith(t, s, "/sse?projects="+projects, token, nil, true)
	if m, _ := c.read(t); m.Retry == "" {
		t.Fatalf("first message %v, want retry", m)
	}
	return c
}

// nextMessage returns the next item that is not a comment.
func (c *sseConn) nextMessage(d time.Duration) (sseMsg, bool, bool) {
	deadline := time.Now().Add(d)
	for {
		m, ok, ended := c.next(time.Until(deadline))
		if !ok || !m.IsComment {
			return m, ok, ended
		}
	}
}

// Service connections never count: they are not listed, announce nothing,
// and hear everybody else.
func TestPresenceService(t *testing.T) {
	t.Parallel()
	s := startServer(t, "PRESENCE_GRACE_MS=300")
	alice := dialWS(t, s, s.named(t, "alice", "Alice", "p1"), watching("alice"))
	wsJoinOnline(t, alice, "p1")
	// Embedded mode: a token's projects claim is its access, the
	// service's too.
	svcTok := s.token(t, auth.Claims{UserID: "backend", Role: auth.RoleService, Projects: []string{"p1", "empty"}}, time.Hour)
	svc := dialWS(t, s, svcTok, watching("service"))
	if got := wsJoinOnline(t, svc, "p1"); !same(got, "alice:Alice") {
		t.Fatalf("the service's list %v, want alice only", got)
	}
	svcSSE := openPresenceSSE(t, s, "p1", svcTok)
	if got := onlineOf(t, svcSSE.expectJoined(t, "p1")["p1"]); !same(got, "alice:Alice") {
		t.Fatalf("the service's SSE list %v", got)
	}
	alice.expectSilence(t, 500*time.Millisecond)
	svc.Conn.Close(websocket.StatusNormalClosure, "")
	svcSSE.close()
	alice.expectSilence(t, 700*time.Millisecond)
	// A service connection in an empty project gets an empty list.
	svc2 := dialWS(t, s, svcTok, watching("service 2"))
	if got := svc2.join(t, "empty")["online"]; got == nil || len(got.([]any)) != 0 {
		t.Fatalf("online of an empty project %v, want []", got)
	}
	bob := dialWS(t, s, s.named(t, "bob", "Bob", "p1"), watching("bob"))
	wsJoinOnline(t, bob, "p1")
	expectPresence(t, "alice", wsPresence(t, alice), "user_online", "p1", "bob")
	if got := presenceAPI(t, s, "p1", s.serviceToken(t)); !same(got, "alice:Alice:1", "bob:Bob:1") {
		t.Fatalf("API %v", got)
	}
}

// The API: 401 without a valid token, 403 for a user who is not a member,
// 200 for a member, an admin and the service; connections count every
// connection that joined.
func TestPresenceAPI(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	path := "/api/projects/p1/presence"
	if status, body := s.getJSON(t, path, ""); status != http.StatusUnauthorized || errorOf(body) != "UNAUTHORIZED" {
		t.Fatalf("no token: %d %v", status, body)
	}
	if status, body := s.getJSON(t, path, "not-a-token"); status != http.StatusUnauthorized {
		t.Fatalf("bad token: %d %v", status, body)
	}
	if status, body := s.getJSON(t, path, s.expiredToken(t, "alice", "p1")); status != http.StatusUnauthorized {
		t.Fatalf("expired token: %d %v", status, body)
	}
	if status, body := s.getJSON(t, path, s.userToken(t, "mallory", "p2")); status != http.StatusForbidden || errorOf(body) != "FORBIDDEN" {
		t.Fatalf("not a member: %d %v", status, body)
	}
	// The token goes in the Authorization header only.
	if status, _ := s.getJSON(t, path+"?token="+s.userToken(t, "alice", "p1"), ""); status != http.StatusUnauthorized {
		t.Fatalf("token in the URL: %d", status)
	}
	for range 2 {
		dialWS(t, s, s.named(t, "alice", "Alice", "p1")).join(t, "p1")
	}
	sc := openPresenceSSE(t, s, "p1", s.named(t, "alice", "Alice", "p1"))
	sc.expectJoined(t, "p1")
	dialWS(t, s, s.named(t, "bob", "Bob", "p1"), watching("bob, not joined"))
	for _, tok := range []string{
		s.named(t, "alice", "Alice", "p1"),
		s.token(t, auth.Claims{UserID: "root", Role: "admin"}, time.Minute),
		s.serviceToken(t),
	} {
		if got := presenceAPI(t, s, "p1", tok); !same(got, "alice:Alice:3") {
			t.Fatalf("API %v, want alice with 3 connections (bob did not join)", got)
		}
	}
	if got := presenceAPI(t, s, "nobody-here", s.serviceToken(t)); len(got) != 0 {
		t.Fatalf("API of an empty project %v", got)
	}
}

func errorOf(body map[string]any) string {
	e, _ := body["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

// Two instances on one database: each instance's members hear of users
// online on the other, joins list them, the API counts connections on
// both, and names come from users.name when the token has none.
func TestPGPresenceTwoInstances(t *testing.T) {
	t.Parallel()
	e := newPGEnv(t)
	e.exec(t, `INSERT INTO users (id, name) VALUES ('alice', 'Alice Row'), ('bob', 'Bob Row'), ('eve', 'Eve')`)
	e.exec(t, `INSERT INTO projects (id, name) VALUES ('p1', 'One')`)
	e.exec(t, `INSERT INTO project_roles (project_id, user_id, role) VALUES ('p1', 'alice', 'storyteller'), ('p1', 'bob', 'facilitator')`)
	a := e.start(t, "PRESENCE_GRACE_MS=1000")
	b := e.start(t, "PRESENCE_GRACE_MS=1000")

	alice := dialWS(t, a, a.named(t, "alice", "Alice"), watching("alice@A"))
	if got := wsJoinOnline(t, alice, "p1"); !same(got, "alice:Alice") {
		t.Fatalf("alice's list %v", got)
	}
	e.waitRows(t, "p1", 1)
	bob := dialWS(t, b, b.named(t, "bob", ""), watching("bob@B"))
	if got := wsJoinOnline(t, bob, "p1"); !same(got, "alice:Alice", "bob:Bob Row") {
		t.Fatalf("bob's list on B %v, want alice from A and his users.name", got)
	}
	on := wsPresence(t, alice)
	expectPresence(t, "alice", on, "user_online", "p1", "bob")
	if on.UserName != "Bob Row" {
		t.Fatalf("bob's userName %v, want his users.name", on.UserName)
	}
	// Bob on A too: nobody hears of it; the API counts both instances
	// (counts of the other instance are written within a second).
	bob2 := dialWS(t, a, a.named(t, "bob", ""), watching("bob@A"))
	wsJoinOnline(t, bob2, "p1")
	for _, s := range []*testServer{a, b} {
		eventually(t, waitTimeout, "the API to count bob's two connections", func() bool {
			return same(presenceAPI(t, s, "p1", s.serviceToken(t)), "alice:Alice:1", "bob:Bob Row:2")
		})
	}
	// Bob leaves B; his connection on A keeps him online.
	bob.Conn.Close(websocket.StatusNormalClosure, "")
	alice.expectSilence(t, 1800*time.Millisecond)
	eventually(t, waitTimeout, "the API to count bob's one connection", func() bool {
		return same(presenceAPI(t, b, "p1", b.serviceToken(t)), "alice:Alice:1", "bob:Bob Row:1")
	})
	// Alice leaves A: bob on A and a member on B hear it after the grace.
	watcher := dialWS(t, b, b.named(t, "bob", ""), watching("bob@B again"))
	wsJoinOnline(t, watcher, "p1")
	alice.Conn.Close(websocket.StatusNormalClosure, "")
	expectPresence(t, "bob@A", wsPresence(t, bob2), "user_offline", "p1", "alice")
	expectPresence(t, "bob@B", wsPresence(t, watcher), "user_offline", "p1", "alice")
	// Eve is not a member: 403 on both instances.
	for _, s := range []*testServer{a, b} {
		if status, _ := s.getJSON(t, "/api/projects/p1/presence", s.named(t, "eve", "Eve")); status != http.StatusForbidden {
			t.Fatalf("eve: status %d, want 403", status)
		}
	}
}

// An instance killed with SIGKILL says no goodbye: within PRESENCE_TTL_MS
// its users are offline on the others, and gone from joins and the API.
func TestPGPresenceKilledInstance(t *testing.T) {
	t.Parallel()
	e := newPGEnv(t)
	e.family(t, "alice", "bob", "carol")
	const ttl = 3 * time.Second
	env := []string{"PRESENCE_GRACE_MS=1000", fmt.Sprintf("PRESENCE_TTL_MS=%d", ttl.Milliseconds())}
	a := e.start(t, env...)
	b := e.start(t, env...)
	alice := dialWS(t, a, a.named(t, "alice", ""), watching("alice@A"))
	wsJoinOnline(t, alice, "p1")
	e.waitRows(t, "p1", 1)
	bob := dialWS(t, b, b.named(t, "bob", ""), watching("bob@B"))
	if got := wsJoinOnline(t, bob, "p1"); !same(got, "alice:Alice", "bob:Bob") {
		t.Fatalf("bob's list %v", got)
	}
	expectPresence(t, "alice", wsPresence(t, alice), "user_online", "p1", "bob")
	b.signal(t, os.Kill)
	killed := time.Now()
	off := wsPresence(t, alice)
	expectPresence(t, "alice", off, "user_offline", "p1", "bob")
	if d := time.Since(killed); d > ttl {
		t.Fatalf("user_offline %v after the kill, want within PRESENCE_TTL_MS %v", d, ttl)
	}
	t.Logf("bob offline %v after his instance was killed", time.Since(killed).Round(time.Millisecond))
	carol := dialWS(t, a, a.named(t, "carol", ""), watching("carol@A"))
	if got := wsJoinOnline(t, carol, "p1"); !same(got, "alice:Alice", "carol:Carol") {
		t.Fatalf("carol's list after the kill %v", got)
	}
	if got := presenceAPI(t, a, "p1", a.serviceToken(t)); !same(got, "alice:Alice:1", "carol:Carol:1") {
		t.Fatalf("API after the kill %v", got)
	}
}

// A revoked member's connections leave the room; the user goes offline
// after the grace like any departure.
func TestPGPresenceRevoked(t *testing.T) {
	t.Parallel()
	e := newPGEnv(t)
	e.family(t, "alice", "bob")
	a := e.start(t, "PRESENCE_GRACE_MS=500")
	b := e.start(t, "PRESENCE_GRACE_MS=500")
	alice := dialWS(t, a, a.named(t, "alice", ""), watching("alice@A"))
	wsJoinOnline(t, alice, "p1")
	e.waitRows(t, "p1", 1)
	bob := dialWS(t, b, b.named(t, "bob", ""), watching("bob@B"))
	wsJoinOnline(t, bob, "p1")
	expectPresence(t, "alice", wsPresence(t, alice), "user_online", "p1", "bob")
	e.exec(t, `DELETE FROM project_roles WHERE project_id = 'p1' AND user_id = 'bob'`)
	if m := bob.expect(t, "left_project"); dataOf(t, m)["reason"] != "access_revoked" {
		t.Fatalf("bob: %v", m)
	}
	expectPresence(t, "alice", wsPresence(t, alice), "user_offline", "p1", "bob")
	if got := presenceAPI(t, a, "p1", a.serviceToken(t)); !same(got, "alice:Alice:1") {
		t.Fatalf("API %v", got)
	}
}

// A listener that loses its connection re-reads presence when it is back
// and announces only what changed: here nothing did, so nothing comes;
// a change after it is heard as usual.
func TestPGPresenceListenerReconnect(t *testing.T) {
	t.Parallel()
	e := newPGEnv(t)
	e.family(t, "alice", "bob", "carol")
	a := e.start(t)
	b := e.start(t)
	alice := dialWS(t, a, a.named(t, "alice", ""), watching("alice@A"))
	wsJoinOnline(t, alice, "p1")
	e.waitRows(t, "p1", 1)
	bob := dialWS(t, b, b.named(t, "bob", ""), watching("bob@B"))
	wsJoinOnline(t, bob, "p1")
	expectPresence(t, "alice", wsPresence(t, alice), "user_online", "p1", "bob")
	reads := a.metric(t, "sagapush_presence_db_reads_total")
	if _, listeners := e.terminate(t); listeners == 0 {
		t.Fatal("no listener connection was terminated")
	}
	e.waitListening(t, 2)
	eventually(t, waitTimeout, "instance A to read presence again", func() bool {
		return a.metric(t, "sagapush_presence_db_reads_total") > reads
	})
	alice.expectSilence(t, time.Second)
	bob.expectSilence(t, 10*time.Millisecond)
	carol := dialWS(t, b, b.named(t, "carol", ""), watching("carol@B"))
	wsJoinOnline(t, carol, "p1")
	expectPresence(t, "alice", wsPresence(t, alice), "user_online", "p1", "carol")
	expectPresence(t, "bob", wsPresence(t, bob), "user_online", "p1", "carol")
}

// A user whose connections come and go while it stays online writes
// nothing but its first row: the database sees transitions, not
// connections.
func TestPGPresenceWritesTransitionsOnly(t *testing.T) {
	t.Parallel()
	e := newPGEnv(t)
	e.family(t, "alice")
	// A long TTL: no lease renewal falls inside the test.
	a := e.start(t, "PRESENCE_TTL_MS=600000")
	alice := dialWS(t, a, a.named(t, "alice", ""), watching("alice"))
	wsJoinOnline(t, alice, "p1")
	eventually(t, waitTimeout, "alice's row", func() bool {
		var n int
		e.db.QueryRow(`SELECT count(*) FROM push_presence WHERE user_id = 'alice'`).Scan(&n)
		return n == 1
	})
	writes := a.metric(t, "sagapush_presence_db_writes_total")
	for i := range 20 {
		c := dialWS(t, a, a.named(t, "alice", ""), watching(fmt.Sprint("alice ", i)))
		wsJoinOnline(t, c, "p1")
		c.Conn.Close(websocket.StatusNormalClosure, "")
	}
	// Each join and leave inside one second: the count went up and back.
	time.Sleep(1500 * time.Millisecond) // let a count write come, if one were owed
	if got := a.metric(t, "sagapush_presence_db_writes_total"); got != writes {
		t.Fatalf("%v presence writes for 20 connections that came and went, want none", got-writes)
	}
}

// An instance stopped with SIGTERM says goodbye: its users stay online for
// the grace, so one whose client reconnects to another instance meanwhile
// never shows as offline, and one who does not goes offline after it.
func TestPGPresenceGoodbye(t *testing.T) {
	t.Parallel()
	e := newPGEnv(t)
	e.family(t, "alice", "bob", "carol")
	const grace = 2 * time.Second
	env := fmt.Sprintf("PRESENCE_GRACE_MS=%d", grace.Milliseconds())
	a := e.start(t, env)
	b := e.start(t, env)
	alice := dialWS(t, a, a.named(t, "alice", ""), watching("alice@A"))
	wsJoinOnline(t, alice, "p1")
	carol := dialWS(t, a, a.named(t, "carol", ""), watching("carol@A"))
	wsJoinOnline(t, carol, "p1")
	e.waitRows(t, "p1", 2)
	bob := dialWS(t, b, b.named(t, "bob", ""), watching("bob@B"))
	if got := wsJoinOnline(t, bob, "p1"); !same(got, "alice:Alice", "bob:Bob", "carol:Carol") {
		t.Fatalf("bob's list %v", got)
	}
	stopped := time.Now()
	if code := a.stop(t); code != 0 {
		t.Fatalf("instance A exited with %d", code)
	}
	// Alice comes back on B within the grace; carol does not.
	alice = dialWS(t, b, b.named(t, "alice", ""), watching("alice@B"))
	if got := wsJoinOnline(t, alice, "p1"); !same(got, "alice:Alice", "bob:Bob", "carol:Carol") {
		t.Fatalf("alice's list on B %v", got)
	}
	expectPresence(t, "bob", wsPresence(t, bob), "user_offline", "p1", "carol")
	if d := time.Since(stopped); d < grace {
		t.Fatalf("carol offline %v after A stopped, before the grace", d)
	}
	expectPresence(t, "alice", wsPresence(t, alice), "user_offline", "p1", "carol")
	bob.expectSilence(t, time.Second) // nothing about alice
	if got := presenceAPI(t, b, "p1", b.serviceToken(t)); !same(got, "alice:Alice:1", "bob:Bob:1") {
		t.Fatalf("API %v", got)
	}
}
