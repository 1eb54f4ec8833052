package e2e

// One-time connect tickets (docs/protocol.md sections 2 and 8): POST
// /api/tickets, /ws?ticket= and /sse?ticket=, on one instance and across
// instances, and ALLOW_TOKEN_IN_URL.

import (
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/saga-family/sagapush/auth"
)

// mintTicket asks the server for a ticket with token in the Authorization
// header and returns it with its expiresAt (epoch ms).
func mintTicket(t testing.TB, s *testServer, token string) (string, int64) {
	t.Helper()
	resp := s.request(t, "POST", "/api/tickets", token, nil)
	b := readBody(t, resp)
	var body map[string]any
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(b, &body) != nil {
		t.Fatalf("POST /api/tickets: status %d, body %s; want 201 {\"ticket\",\"expiresAt\"}", resp.StatusCode, b)
	}
	ticket, _ := body["ticket"].(string)
	exp, _ := body["expiresAt"].(float64)
	if ticket == "" || exp <= 0 || len(body) != 2 {
		t.Fatalf("POST /api/tickets: body %s; want exactly {\"ticket\",\"expiresAt\"}", b)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("POST /api/tickets: Cache-Control %q, want no-store", cc)
	}
	return ticket, int64(exp)
}

// wsRefused dials /ws with opts and checks for HTTP 401 UNAUTHORIZED with
// the JSON error body, without upgrade.
func wsRefused(t testing.TB, s *testServer, token, what string, opts ...dialOpt) {
	t.Helper()
	c, resp, err := tryDialWS(t, s, token, opts...)
	if err == nil {
		c.Conn.CloseNow()
		t.Errorf("%s: upgraded, want HTTP 401", what)
		return
	}
	if resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("%s: %v, want HTTP 401", what, err)
		return
	}
	var body struct {
		Error struct{ Code, Message string }
	}
	if b := readBody(t, resp); json.Unmarshal(b, &body) != nil || body.Error.Code != "UNAUTHORIZED" || body.Error.Message == "" {
		t.Errorf("%s: body %s, want {\"error\":{\"code\":\"UNAUTHORIZED\",...}}", what, b)
	}
}

// openJoined opens /sse (token in the header unless "") and reads its
// retry: block and the joined_project of each project.
func openJoined(t testing.TB, s *testServer, path, token string, projects ...string) *sseConn {
	t.Helper()
	c := openSSE(t, s, path, token, nil)
	c.read(t) // retry
	c.expectJoined(t, projects...)
	return c
}

func sseTicketPath(projects, ticket string) string {
	return "/sse?projects=" + projects + "&ticket=" + url.QueryEscape(ticket)
}

// A ticket opens one connection, on /ws or /sse, and no second one on
// either; the connection is the token's user (its projects). Unknown and
// empty tickets are refused; minting needs a valid header token.
func TestTicketOnce(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	tok := s.userToken(t, "u1", "p1")
	before := time.Now().UnixMilli()

	ticket, exp := mintTicket(t, s, tok)
	if exp < before+25_000 || exp > time.Now().UnixMilli()+31_000 {
		t.Errorf("expiresAt %d: want about 30 s from now (TICKET_TTL_MS default)", exp)
	}
	c := dialWS(t, s, "", withTicket(ticket))
	c.join(t, "p1")
	if m := c.call(t, "join_project", "p2"); errorCode(t, m) != "PROJECT_ACCESS_DENIED" {
		t.Errorf("join p2 (not in the token): %v", m)
	}
	wsRefused(t, s, "", "the ticket again on /ws", withTicket(ticket))
	sseRefused(t, s, sseTicketPath("p1", ticket), "", http.StatusUnauthorized, "UNAUTHORIZED")

	ticket, _ = mintTicket(t, s, tok)
	sc := openJoined(t, s, sseTicketPath("p1", ticket), "", "p1")
	sseRefused(t, s, sseTicketPath("p1", ticket), "", http.StatusUnauthorized, "UNAUTHORIZED")
	wsRefused(t, s, "", "a ticket spent on /sse, on /ws", withTicket(ticket))

	// Both connections are live: an event reaches each.
	seq := publish(t, s, s.serviceToken(t), "p1", "story_uploaded", map[string]any{"storyId": "s1"})
	c.expectEvent(t, "p1", seq)
	sc.expectEvents(t, nil, map[string]int64{"p1": seq})

	wsRefused(t, s, "", "an unknown ticket", withTicket("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))
	wsRefused(t, s, "", "an empty ticket", withTicket(""))
	sseRefused(t, s, "/sse?projects=p1&ticket=garbage", "", http.StatusUnauthorized, "UNAUTHORIZED")

	// POST /api/tickets takes the token from the Authorization header only.
	for _, tc := range []struct {
		name, path, token, code string
	}{
		{"no token", "/api/tickets", "", "UNAUTHORIZED"},
		{"token in the URL", "/api/tickets?token=" + tok, "", "UNAUTHORIZED"},
		{"expired token", "/api/tickets", s.expiredToken(t, "u1"), "TOKEN_EXPIRED"},
	} {
		status, body := s.doJSON(t, "POST", tc.path, tc.token, nil)
		if e, _ := body["error"].(map[string]any); status != http.StatusUnauthorized || e["code"] != tc.code {
			t.Errorf("%s: %d %v, want 401 %s", tc.name, status, body, tc.code)
		}
	}
}

// A ticket past TICKET_TTL_MS is refused on both transports.
func TestTicketExpired(t *testing.T) {
	t.Parallel()
	s := startServer(t, "TICKET_TTL_MS=300")
	tok := s.userToken(t, "u1", "p1")
	ws, exp := mintTicket(t, s, tok)
	sse, _ := mintTicket(t, s, tok)
	if d := time.Until(time.UnixMilli(exp)); d > 300*time.Millisecond {
		t.Errorf("expires in %v, want at most TICKET_TTL_MS", d)
	}
	// Expiry is the event under test: nothing else to wait on.
	time.Sleep(time.Until(time.UnixMilli(exp)) + 50*time.Millisecond)
	wsRefused(t, s, "", "an expired ticket", withTicket(ws))
	sseRefused(t, s, sseTicketPath("p1", sse), "", http.StatusUnauthorized, "UNAUTHORIZED")
}

// The connection a ticket opens ends when the token it was minted from
// expires, as if it had come with the token: the ticket itself expires no
// later.
func TestTicketKeepsTokenExpiry(t *testing.T) {
	t.Parallel()
	s := startServer(t, "JWT_LEEWAY_MS=0") // the close comes at exp + leeway
	tok := s.token(t, auth.Claims{UserID: "u1", Projects: []string{"p1"}}, 2*time.Second)
	tokExp := tokenExp(t, tok)
	wsTicket, exp := mintTicket(t, s, tok)
	if exp != tokExp.UnixMilli() {
		t.Errorf("ticket expires at %d, want the token's exp %d (before TICKET_TTL_MS)", exp, tokExp.UnixMilli())
	}
	sseTicket, _ := mintTicket(t, s, tok)

	c := dialWS(t, s, "", withTicket(wsTicket))
	c.join(t, "p1")
	sc := openJoined(t, s, sseTicketPath("p1", sseTicket), "", "p1")
	c.expectError(t, "TOKEN_EXPIRED")
	if time.Now().Before(tokExp.Add(-100 * time.Millisecond)) {
		t.Errorf("TOKEN_EXPIRED at %v, before the token's exp %v", time.Now(), tokExp)
	}
	c.expectClose(t, 4401)
	sc.expectEnd(t)
	if time.Now().Before(tokExp.Add(-100 * time.Millisecond)) {
		t.Errorf("stream ended at %v, before the token's exp %v", time.Now(), tokExp)
	}
}

// With a database: a ticket minted on instance A opens a connection on B,
// as the token's user (who alone may join the project), and then none on A.
// A service token's ticket keeps its role (no users row needed); the ticket
// of a user deleted meanwhile is refused.
func TestTicketAcrossInstances(t *testing.T) {
	t.Parallel()
	d := newPGEnv(t)
	d.exec(t, `INSERT INTO users (id, name) VALUES ('u1', 'Ann'), ('u2', 'Bob')`)
	d.exec(t, `INSERT INTO projects (id, name, facilitator_id) VALUES ('p1', 'Family', 'u1')`)
	a, b := d.start(t), d.start(t)
	tok := a.token(t, auth.Claims{UserID: "u1"}, time.Hour)

	ticket, _ := mintTicket(t, a, tok)
	c := dialWS(t, b, "", withTicket(ticket))
	if j := c.join(t, "p1"); j["role"] != "facilitator" {
		t.Errorf("joined %v, want u1's role facilitator", j)
	}
	wsRefused(t, a, "", "the ticket again, on the instance that minted it", withTicket(ticket))
	wsRefused(t, b, "", "the ticket again, on the instance that took it", withTicket(ticket))

	ticket, _ = mintTicket(t, b, tok)
	openJoined(t, a, sseTicketPath("p1", ticket), "", "p1")
	sseRefused(t, b, sseTicketPath("p1", ticket), "", http.StatusUnauthorized, "UNAUTHORIZED")

	// u2 may not join p1, with a ticket as with a token.
	ticket, _ = mintTicket(t, a, a.token(t, auth.Claims{UserID: "u2"}, time.Hour))
	sseRefused(t, b, sseTicketPath("p1", ticket), "", http.StatusForbidden, "PROJECT_ACCESS_DENIED")

	ticket, _ = mintTicket(t, a, a.serviceToken(t))
	dialWS(t, b, "", withTicket(ticket)).expectNothingQueued(t)

	ticket, _ = mintTicket(t, a, a.token(t, auth.Claims{UserID: "u2"}, time.Hour))
	d.exec(t, `DELETE FROM users WHERE id = 'u2'`)
	wsRefused(t, b, "", "the ticket of a deleted user", withTicket(ticket))
}

// ALLOW_TOKEN_IN_URL=false: ?token= gets 401 on /ws and /sse; the header
// token, tickets and the auth frame still work.
func TestTokenInURLOff(t *testing.T) {
	t.Parallel()
	s := startServer(t, "ALLOW_TOKEN_IN_URL=false")
	tok := s.userToken(t, "u1", "p1")

	wsRefused(t, s, tok, "?token= on /ws")
	sseRefused(t, s, "/sse?projects=p1&token="+url.QueryEscape(tok), "", http.StatusUnauthorized, "UNAUTHORIZED")

	dialWS(t, s, tok, withTokenHeader()).join(t, "p1")
	openJoined(t, s, "/sse?projects=p1", tok, "p1")
	ticket, _ := mintTicket(t, s, tok)
	dialWS(t, s, "", withTicket(ticket)).join(t, "p1")
	ticket, _ = mintTicket(t, s, tok)
	openJoined(t, s, sseTicketPath("p1", ticket), "", "p1")
	c := dialWS(t, s, "", withoutToken())
	c.authenticate(t, tok)
	c.join(t, "p1")

	// The default takes ?token=.
	dialWS(t, startServer(t), tok).expectNothingQueued(t)
}

// A browser-origin handshake that is refused (close 1008) spends no ticket.
func TestTicketNotSpentOnRefusedOrigin(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	ticket, _ := mintTicket(t, s, s.userToken(t, "u1", "p1"))
	dialWS(t, s, "", withTicket(ticket), withOrigin("https://evil.example.com")).expectClose(t, websocket.StatusPolicyViolation)
	dialWS(t, s, "", withTicket(ticket)).join(t, "p1")
}
