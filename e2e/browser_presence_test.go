package e2e

// Presence in the browser: web/client.js's presence() and 'presence' event
// in two tabs of two users, and the demo page's "Online now" panel.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"
)

// presenceEvent is one 'presence' event a test page recorded.
type presenceEvent struct {
	ProjectID string
	Online    []map[string]any
	At        float64 // the page's Date.now()
}

func (e presenceEvent) String() string {
	var ids []string
	for _, u := range e.Online {
		ids = append(ids, fmt.Sprint(u["userId"]))
	}
	return e.ProjectID + " [" + strings.Join(ids, " ") + "]"
}

// Two tabs, two users, one project: bob's page sees alice come online
// (presence() and the 'presence' event), then alice's tab closes and bob's
// page sees her go once the grace has passed. Bob's page on each transport;
// alice's on WebSocket, whose close the server notices at once.
func TestBrowserPresence(t *testing.T) {
	t.Parallel()
	const grace = 500 * time.Millisecond
	s := startServer(t, fmt.Sprintf("PRESENCE_GRACE_MS=%d", grace.Milliseconds()))
	for _, transport := range []string{"websocket", "sse"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			p := "family-" + transport
			presence := fmt.Sprintf(`JSON.stringify(window.__t.client.presence(%q))`, p)
			bobOnly := `[{"userId":"bob","userName":"Bob"}]`
			both := `[{"userId":"alice","userName":"Alice Martin"},{"userId":"bob","userName":"Bob"}]`

			bob := newBrowser(t)
			console := watchConsole(bob)
			browserRun(t, bob, "opening bob's page", chromedp.Navigate(s.URL+"/?autoconnect=0"))
			startTestClient(t, bob, s.named(t, "bob", "Bob", p), p, transport)
			if got := browserEval[string](t, bob, presence); got != bobOnly {
				t.Fatalf("bob's presence() after his join: %s, want %s", got, bobOnly)
			}

			// A second tab of the same browser (closing it leaves the first).
			alice, closeAlice := newTab(t, bob)
			browserRun(t, alice, "opening alice's page", chromedp.Navigate(s.URL+"/?autoconnect=0"))
			startTestClient(t, alice, s.named(t, "alice", "Alice Martin", p), p, "websocket")
			if got := browserEval[string](t, alice, presence); got != both {
				t.Fatalf("alice's presence() after her join: %s, want %s", got, both)
			}
			browserUntil(t, bob, "alice in bob's presence()", presence+` === `+jsLiteral(t, both), browserWait)

			closed := time.Now()
			closeAlice()
			browserUntil(t, bob, "alice gone from bob's presence()", presence+` === `+jsLiteral(t, bobOnly), browserWait)
			events := browserEval[[]presenceEvent](t, bob, `window.__t.presence`)
			want := []string{p + " [bob]", p + " [alice bob]", p + " [bob]"}
			if fmt.Sprint(events) != fmt.Sprint(want) {
				t.Fatalf("bob's 'presence' events %v, want %v: one per change", events, want)
			}
			if d := time.UnixMilli(int64(events[2].At)).Sub(closed); d < grace {
				t.Errorf("alice went %v after her tab closed, before the grace of %v", d, grace)
			}
			if errs := console.errors(); len(errs) > 0 {
				t.Errorf("console errors on bob's page:\n  %s", strings.Join(errs, "\n  "))
			}
		})
	}
}

// The demo page's "Online now": avatars with initials, the name below and
// on hover, the page's own user first and marked, updated live as others
// come and go. A screenshot with three people online is saved.
func TestBrowserDemoPresence(t *testing.T) {
	t.Parallel()
	s := startServer(t, "PRESENCE_GRACE_MS=500")
	const p = "ellis-family"
	ctx := newBrowser(t)
	console := watchConsole(ctx)
	q := fmt.Sprintf("token=%s&project=%s", s.named(t, "margaret", "Margaret Ellis", p), p)
	browserRun(t, ctx, "opening the demo page", chromedp.Navigate(s.URL+"/#"+q))
	people := fmt.Sprintf(`[...document.querySelectorAll('#presence .presence-project[data-project-id=%q] .person')]`, p)
	shown := people + `.map((e) => [e.dataset.userId, e.querySelector('.avatar').textContent, e.title, e.classList.contains('me')].join('|')).join(' ')`
	browserUntil(t, ctx, "margaret alone", shown+` === 'margaret|ME|Margaret Ellis (you)|true'`, browserWait)

	daniel := dialWS(t, s, s.named(t, "daniel", "Daniel Ellis", p), named("daniel"))
	daniel.join(t, p)
	sofia := dialWS(t, s, s.named(t, "sofia", "Sofía Ellis", p), named("sofia"))
	sofia.join(t, p)
	three := `margaret|ME|Margaret Ellis (you)|true daniel|DE|Daniel Ellis|false sofia|SE|Sofía Ellis|false`
	browserUntil(t, ctx, "daniel and sofía beside margaret", shown+` === `+jsLiteral(t, three), browserWait)
	if note := browserEval[string](t, ctx, `document.querySelector('#presence .presence-head small').textContent`); note != "3 online" {
		t.Errorf("note %q, want 3 online", note)
	}
	if you := browserEval[int](t, ctx, `document.querySelectorAll('#presence .person .you').length`); you != 1 {
		t.Errorf("%d people marked you, want 1", you)
	}

	// A story, so that the picture shows the page at work.
	svc := s.serviceToken(t)
	publish(t, s, svc, p, "story_uploaded", map[string]any{"story": map[string]any{"id": "story-1", "projectId": p,
		"title": "The summer we moved to the coast", "status": "completed", "createdAt": time.Now().UTC().Format(time.RFC3339)}})
	publish(t, s, svc, p, "transcript_updated", map[string]any{"storyId": "story-1",
		"transcript": "We packed everything we owned into Grandpa's old truck and drove all night."})
	browserUntil(t, ctx, "the story card", `document.querySelector('#stories .card .transcript.updated')`, browserWait)
	browserUntil(t, ctx, "the entrances to end", `document.getAnimations().every((a) => a.playState === 'finished')`, browserWait)
	saveScreenshot(t, ctx, "browser-demo-presence.png", "the demo page with people online")

	// Sofía goes: gone after the grace. A user without a name shows its id.
	sofia.Conn.Close(websocket.StatusNormalClosure, "")
	browserUntil(t, ctx, "sofía gone", people+`.length === 2 && !`+people+`.some((e) => e.dataset.userId === 'sofia')`, browserWait)
	guest := dialWS(t, s, s.named(t, "guest-7", "", p), named("guest"))
	guest.join(t, p)
	browserUntil(t, ctx, "the guest by id", shown+`.endsWith(' guest-7|G|guest-7|false')`, browserWait)

	expectCleanDemoPage(t, ctx, console)
}

// client.js applies presence messages as state changes, against a fake
// WebSocket that answers like the server and lets the test send what it
// wants: a user_online for a user already listed or a user_offline for one
// not listed changes nothing and fires nothing; a rejoin's list replaces
// the list (and fires only when it differs); leaving forgets it.
func TestBrowserPresenceMessages(t *testing.T) {
	t.Parallel()
	s := startServer(t) // serves /client.js; the client never talks to it
	ctx := newBrowser(t)
	console := watchConsole(ctx)
	browserRun(t, ctx, "opening a page of the server", chromedp.Navigate(s.URL+"/?autoconnect=0"))
	browserEval[chromedp.Void](t, ctx, `import('/client.js').then(({ SagaClient }) => {
		const t = window.__p = { fired: [] }
		class FakeWS {
			constructor() { this.readyState = 0; t.ws = this; setTimeout(() => { this.readyState = 1; this.onopen() }) }
			send(raw) {
				const f = JSON.parse(raw)
				const answer = (m) => setTimeout(() => this.onmessage({ data: JSON.stringify({ ...m, ack: f.ack }) }))
				if (f.event === 'ping') answer({ event: 'pong', data: { ts: Date.now() } })
				if (f.event === 'join_project') answer({ event: 'joined_project', data: { projectId: f.data.projectId, role: 'member', seq: 0,
					online: [{ userId: 'me', userName: 'Me' }, { userId: 'bob', userName: null }] } })
				if (f.event === 'leave_project') answer({ event: 'left_project', data: { projectId: f.data.projectId, reason: 'requested' } })
			}
			close() { this.readyState = 3 }
		}
		const fetch = async () => ({ status: 201, json: async () => ({ ticket: 'fake' }) })
		const c = t.client = new SagaClient({ url: location.origin, token: 'fake', transports: ['websocket'], WebSocket: FakeWS, fetch })
		c.on('presence', (projectId, online) => t.fired.push(projectId + ' ' + (online ? online.map((u) => u.userId + ':' + u.userName).join(',') : 'null')))
		t.send = (m) => t.ws.onmessage({ data: JSON.stringify(m) })
		t.list = (p) => { const l = c.presence(p); return l ? l.map((u) => u.userId + ':' + u.userName).join(',') : 'null' }
		return c.connect().then(() => c.joinProject('p1'))
	})`)
	step := func(what, js, wantList string, wantFired ...string) {
		t.Helper()
		browserEval[chromedp.Void](t, ctx, `(() => { window.__p.fired = []; `+js+` })()`)
		if got := browserEval[string](t, ctx, `window.__p.list('p1')`); got != wantList {
			t.Errorf("%s: presence('p1') = %s, want %s", what, got, wantList)
		}
		if got := browserEval[[]string](t, ctx, `window.__p.fired`); fmt.Sprint(got) != fmt.Sprint(wantFired) {
			t.Errorf("%s: 'presence' fired %q, want %q", what, got, wantFired)
		}
	}
	if got := browserEval[string](t, ctx, `window.__p.list('p1')`); got != "bob:null,me:Me" {
		t.Fatalf("after the join: %s, want the join's list sorted by userId", got)
	}
	if got := browserEval[any](t, ctx, `window.__p.client.presence('other')`); got != nil {
		t.Errorf("presence of a project not joined: %v, want null", got)
	}
	step("bob online again", `__p.send({ event: 'user_online', projectId: 'p1', data: { userId: 'bob', userName: 'Bob' } })`, "bob:null,me:Me")
	step("carol offline, never listed", `__p.send({ event: 'user_offline', projectId: 'p1', data: { userId: 'carol' } })`, "bob:null,me:Me")
	step("carol online", `__p.send({ event: 'user_online', projectId: 'p1', data: { userId: 'carol', userName: 'Carol' } })`,
		"bob:null,carol:Carol,me:Me", "p1 bob:null,carol:Carol,me:Me")
	step("a project not joined", `__p.send({ event: 'user_online', projectId: 'p2', data: { userId: 'dan', userName: 'Dan' } })`, "bob:null,carol:Carol,me:Me")
	step("bob offline", `__p.send({ event: 'user_offline', projectId: 'p1', data: { userId: 'bob' } })`, "carol:Carol,me:Me", "p1 carol:Carol,me:Me")
	step("a copy", `__p.client.presence('p1')[0].userName = 'changed'`, "carol:Carol,me:Me")
	step("a rejoin with the same list", `__p.send({ event: 'joined_project', data: { projectId: 'p1', role: 'member', seq: 0, recovered: true,
		online: [{ userId: 'me', userName: 'Me' }, { userId: 'carol', userName: 'Carol' }] } })`, "carol:Carol,me:Me")
	step("a rejoin with another list", `__p.send({ event: 'joined_project', data: { projectId: 'p1', role: 'member', seq: 0, recovered: true,
		online: [{ userId: 'me', userName: 'Me' }] } })`, "me:Me", "p1 me:Me")
	step("a rejoin without a list", `__p.send({ event: 'joined_project', data: { projectId: 'p1', role: 'member', seq: 0, recovered: true } })`, "null", "p1 null")
	step("a message for a list not known", `__p.send({ event: 'user_online', projectId: 'p1', data: { userId: 'eve', userName: null } })`, "null")
	step("a rejoin with a list again", `__p.send({ event: 'joined_project', data: { projectId: 'p1', role: 'member', seq: 0, recovered: true,
		online: [{ userId: 'me', userName: 'Me' }] } })`, "me:Me", "p1 me:Me")
	browserEval[bool](t, ctx, `window.__p.client.leaveProject('p1').then(() => true)`)
	step("after leaving", ``, "null")
	if errs := console.errors(); len(errs) > 0 {
		t.Errorf("console errors:\n  %s", strings.Join(errs, "\n  "))
	}
}
