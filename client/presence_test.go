package client

import (
	"fmt"
	"testing"
	"time"
)

// presenceClient is a client that is never connected: messages are handed
// to handle as a connection's reader would, for the projects given (as if
// joined).
func presenceClient(t *testing.T, projects ...string) (*Client, func(string)) {
	t.Helper()
	c, err := New(Options{URL: "http://127.0.0.1:1", Token: "t", OnEvent: func(Event) {}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	src := &wsConn{}
	c.cur = src
	for _, id := range projects {
		c.projects[id] = &project{}
	}
	return c, func(msg string) { c.handle([]byte(msg), src, "") }
}

// online renders a list as "id:name" strings ("-" for no name).
func online(list []OnlineUser) string {
	if list == nil {
		return "unknown"
	}
	s := "["
	for i, u := range list {
		if i > 0 {
			s += " "
		}
		name := u.UserName
		if name == "" {
			name = "-"
		}
		s += u.UserID + ":" + name
	}
	return s + "]"
}

func presenceOf(c *Client, id string) string {
	list, ok := c.Presence(id)
	if ok != (list != nil) {
		return fmt.Sprintf("ok %v with %v", ok, list)
	}
	return online(list)
}

// nextChange reads the next presence change, or fails.
func nextChange(t *testing.T, c *Client) PresenceChange {
	t.Helper()
	select {
	case ch := <-c.PresenceChanges():
		return ch
	case <-time.After(5 * time.Second):
		t.Fatal("no presence change")
		return PresenceChange{}
	}
}

// noChange fails when a presence change is waiting.
func noChange(t *testing.T, c *Client) {
	t.Helper()
	select {
	case ch := <-c.PresenceChanges():
		t.Fatalf("unexpected presence change %s %s", ch.ProjectID, online(ch.Online))
	case <-time.After(50 * time.Millisecond):
	}
}

func expectChange(t *testing.T, c *Client, project, want string) {
	t.Helper()
	ch := nextChange(t, c)
	if ch.ProjectID != project || online(ch.Online) != want {
		t.Fatalf("change %s %s, want %s %s", ch.ProjectID, online(ch.Online), project, want)
	}
	if got := presenceOf(c, project); got != want {
		t.Fatalf("Presence(%s) = %s after the change, want %s", project, got, want)
	}
}

// The list follows joined_project, user_online and user_offline as state
// changes; messages that change nothing send nothing.
func TestPresenceList(t *testing.T) {
	c, recv := presenceClient(t, "p1", "p2")
	if got := presenceOf(c, "p1"); got != "unknown" {
		t.Fatalf("before the join: %s", got)
	}
	// Before the join's answer, a message cannot change a list not known.
	recv(`{"event":"user_online","projectId":"p1","data":{"userId":"zed","userName":"Zed"}}`)
	noChange(t, c)
	recv(`{"event":"joined_project","data":{"projectId":"p1","role":"member","seq":0,"online":[{"userId":"bob","userName":null},{"userId":"alice","userName":"Alice"}]}}`)
	expectChange(t, c, "p1", "[alice:Alice bob:-]")

	recv(`{"event":"user_online","projectId":"p1","data":{"userId":"bob","userName":"Bob"}}`) // already listed
	recv(`{"event":"user_offline","projectId":"p1","data":{"userId":"carol"}}`)               // not listed
	recv(`{"event":"user_online","projectId":"nope","data":{"userId":"carol","userName":"Carol"}}`)
	noChange(t, c)
	if got := presenceOf(c, "p1"); got != "[alice:Alice bob:-]" {
		t.Fatalf("after messages that change nothing: %s", got)
	}

	recv(`{"event":"user_online","projectId":"p1","data":{"userId":"ann","userName":"Ann"}}`)
	expectChange(t, c, "p1", "[alice:Alice ann:Ann bob:-]")
	recv(`{"event":"user_offline","projectId":"p1","data":{"userId":"alice"}}`)
	expectChange(t, c, "p1", "[ann:Ann bob:-]")

	// A copy: changing what Presence returned changes nothing.
	list, _ := c.Presence("p1")
	list[0].UserName = "changed"
	if got := presenceOf(c, "p1"); got != "[ann:Ann bob:-]" {
		t.Fatalf("Presence handed out its own list: %s", got)
	}

	// A rejoin (a reconnect) replaces the list; the same list is no change.
	recv(`{"event":"joined_project","data":{"projectId":"p1","role":"member","seq":0,"recovered":true,"online":[{"userId":"ann","userName":"Ann"},{"userId":"bob","userName":null}]}}`)
	noChange(t, c)
	recv(`{"event":"joined_project","data":{"projectId":"p1","role":"member","seq":0,"recovered":true,"online":[{"userId":"dan","userName":"Dan"}]}}`)
	expectChange(t, c, "p1", "[dan:Dan]")
	recv(`{"event":"user_offline","projectId":"p1","data":{"userId":"dan"}}`)
	expectChange(t, c, "p1", "[]") // known, and empty
	// A join without a list: no longer known, and messages cannot change it.
	recv(`{"event":"joined_project","data":{"projectId":"p1","role":"member","seq":0}}`)
	expectChange(t, c, "p1", "unknown")
	recv(`{"event":"user_online","projectId":"p1","data":{"userId":"eve","userName":"Eve"}}`)
	noChange(t, c)

	// An empty list is known (a service token's).
	recv(`{"event":"joined_project","data":{"projectId":"p2","role":"member","seq":0,"online":[]}}`)
	expectChange(t, c, "p2", "[]")
	// Leaving forgets the list.
	recv(`{"event":"left_project","data":{"projectId":"p2","reason":"access_revoked"}}`)
	if got := presenceOf(c, "p2"); got != "unknown" {
		t.Fatalf("after left_project: %s", got)
	}
}

// Nobody reading: the latest change of each project waits, nothing blocks.
func TestPresenceChangesKeepLatest(t *testing.T) {
	c, recv := presenceClient(t, "p1", "p2")
	recv(`{"event":"joined_project","data":{"projectId":"p1","role":"member","seq":0,"online":[{"userId":"a","userName":"A"}]}}`)
	recv(`{"event":"joined_project","data":{"projectId":"p2","role":"member","seq":0,"online":[]}}`)
	for i := range 1000 {
		recv(fmt.Sprintf(`{"event":"user_online","projectId":"p1","data":{"userId":"u%04d","userName":null}}`, i))
	}
	recv(`{"event":"user_online","projectId":"p2","data":{"userId":"b","userName":"B"}}`)
	ch := nextChange(t, c)
	if ch.ProjectID == "p1" && len(ch.Online) == 1 {
		// The pump may have been offering the first change when the others
		// came: it may go out before the latest, never after it.
		ch = nextChange(t, c)
	}
	if ch.ProjectID != "p1" || len(ch.Online) != 1001 {
		t.Fatalf("first change: %s with %d users, want p1's latest (1001)", ch.ProjectID, len(ch.Online))
	}
	expectChange(t, c, "p2", "[b:B]")
	noChange(t, c)
}
