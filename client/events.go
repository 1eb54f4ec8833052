package client

import (
	"encoding/json"
	"time"
)

// Event is one message from the server: a domain event (Seq > 0) or another
// message delivered to the application (typing, user-targeted events, ...).
type Event struct {
	Name      string          // the message's "event"
	ProjectID string          // "" for a user-targeted event
	Seq       int64           // the project's seq for a domain event, else 0
	TS        int64           // server time in ms since the epoch (0 when absent)
	Data      json.RawMessage // the message's "data"
	Raw       []byte          // the whole message as received
}

// Time returns TS as a time.Time (the zero Time when TS is 0).
func (e Event) Time() time.Time {
	if e.TS == 0 {
		return time.Time{}
	}
	return time.UnixMilli(e.TS)
}

// Events returns the channel of events (see the package documentation). It is
// closed by Close. It is nil when Options.OnEvent is set.
func (c *Client) Events() <-chan Event { return c.events }

// wire is one server message.
type wire struct {
	Event     string          `json:"event"`
	ProjectID string          `json:"projectId"`
	Seq       int64           `json:"seq"`
	TS        int64           `json:"ts"`
	Data      json.RawMessage `json:"data"`
	Ack       json.RawMessage `json:"ack"`
}

// handle routes one message read by src (a *wsConn or *sseStream); sseID is
// the SSE event id ("" when none).
func (c *Client) handle(raw []byte, src any, sseID string) {
	var m wire
	if err := json.Unmarshal(raw, &m); err != nil || m.Event == "" {
		c.log.Warn("saga push: unreadable server message", "message", truncate(raw, 200))
		return
	}
	c.readMu.Lock()
	defer c.readMu.Unlock()

	c.mu.Lock()
	if c.cur != src {
		c.mu.Unlock()
		return // a connection that was replaced
	}
	if sseID != "" {
		c.cursor = sseID
		c.cursorKey = src.(*sseStream).key
	}
	answered := false
	if len(m.Ack) > 0 {
		if ws, ok := src.(*wsConn); ok {
			answered = ws.answer(string(m.Ack), &m)
		}
	}
	var resync *Resync
	var presence *PresenceChange
	deliver := true
	switch m.Event {
	case "joined_project":
		resync, presence = c.onJoinedLocked(m.Data)
		deliver = false
	case "user_online", "user_offline":
		presence = c.onPresenceLocked(m.Event, m.ProjectID, m.Data) // and delivered as it came
	case "left_project":
		deliver = c.onLeftLocked(m.Data)
	case "server_shutdown":
		c.onShutdownLocked(m.Data)
	case "pong", "authenticated":
		deliver = false
	case "error":
		if answered {
			deliver = false
		} else {
			var e Error
			if json.Unmarshal(m.Data, &e) == nil && e.Code == "PROJECT_ACCESS_DENIED" && e.ProjectID != "" {
				deliver = !c.failProjectLocked(e.ProjectID, &e)
			}
		}
	default:
		if m.Seq > 0 && m.ProjectID != "" {
			p := c.projects[m.ProjectID]
			if p == nil || (p.hasSeq && m.Seq <= p.lastSeq) {
				c.mu.Unlock()
				return // not joined, or already seen
			}
			p.lastSeq, p.hasSeq = m.Seq, true
		} else if answered {
			deliver = false
		}
	}
	c.mu.Unlock()

	if resync != nil {
		c.resyncs.push(resync.ProjectID, *resync)
	}
	if presence != nil {
		c.presence.push(presence.ProjectID, *presence)
	}
	if !deliver {
		return
	}
	ev := Event{Name: m.Event, ProjectID: m.ProjectID, Seq: m.Seq, TS: m.TS, Data: m.Data, Raw: raw}
	if c.opts.OnEvent != nil {
		c.opts.OnEvent(ev)
		return
	}
	select {
	case c.events <- ev:
	case <-c.closeCtx.Done():
	}
}

func (c *Client) onShutdownLocked(data []byte) {
	var d struct {
		ReconnectAfterMs int64 `json:"reconnectAfterMs"`
	}
	if json.Unmarshal(data, &d) != nil || d.ReconnectAfterMs <= 0 {
		return
	}
	ms := time.Duration(d.ReconnectAfterMs) * time.Millisecond
	// At least what the server asks, plus up to as much again (capped by
	// MaxReconnectDelay), so that clients do not return together.
	c.shutdownIn = ms + jitter(min(ms, c.opts.MaxReconnectDelay))
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
