package client

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"
)

// JoinResult is the data of joined_project.
type JoinResult struct {
	ProjectID string `json:"projectId"`
	Role      string `json:"role"`
	// Seq is the project's latest event seq at the join.
	Seq int64 `json:"seq"`
	// Recovered is set when the join resumed from a known seq.
	Recovered *bool `json:"recovered,omitempty"`
	// Online lists who was online in the project at the join, the joining
	// user included, sorted by user id; nil when the server sent no list
	// (more online users than it tells of one by one). [Client.Presence]
	// keeps it up to date.
	Online []OnlineUser `json:"online,omitempty"`
}

// project is one project the application wants joined.
type project struct {
	lastSeq int64
	hasSeq  bool
	joined  bool // joined on the current connection
	info    JoinResult
	online  []OnlineUser // who is online, sorted by user id; nil: not known (presence.go)
	waiters []chan joinReply
}

type joinReply struct {
	res JoinResult
	err error
}

func (p *project) settle(res JoinResult, err error) {
	for _, w := range p.waiters {
		w <- joinReply{res, err}
	}
	p.waiters = nil
}

// Join joins a project and returns the joined_project data. It may be called
// before Connect or while reconnecting: the join is sent once connected.
// ctx (and RequestTimeout) bound the wait; when it ends before the server
// answered, the join is given up. A refusal is an *Error such as
// PROJECT_ACCESS_DENIED. Joining a joined project returns its last answer.
func (c *Client) Join(ctx context.Context, projectID string) (JoinResult, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()
	ch := make(chan joinReply, 1)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return JoinResult{}, ErrClosed
	}
	p := c.projects[projectID]
	if p != nil && p.joined && c.state == StateConnected {
		res := p.info
		c.mu.Unlock()
		return res, nil
	}
	isNew := p == nil
	if isNew {
		p = &project{}
		c.projects[projectID] = p
	}
	p.waiters = append(p.waiters, ch)
	ws, sse := c.ws, c.sse
	c.mu.Unlock()
	if isNew {
		if ws != nil {
			go c.sendJoin(ws, projectID, p)
		} else if sse != nil {
			sse.reopen()
		}
	}
	select {
	case r := <-ch:
		return r.res, r.err
	case <-ctx.Done():
	}
	// Give the join up, unless it was answered meanwhile.
	c.mu.Lock()
	select {
	case r := <-ch:
		c.mu.Unlock()
		return r.res, r.err
	default:
	}
	p.waiters = slices.DeleteFunc(p.waiters, func(w chan joinReply) bool { return w == ch })
	giveUp := !p.joined && len(p.waiters) == 0 && c.projects[projectID] == p
	if giveUp {
		delete(c.projects, projectID)
	}
	ws, sse = c.ws, c.sse
	c.mu.Unlock()
	if giveUp {
		if ws != nil { // tell the server, in case it joined after all
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), c.opts.RequestTimeout)
				defer cancel()
				ws.request(ctx, "leave_project", map[string]string{"projectId": projectID})
			}()
		} else if sse != nil {
			sse.reopen()
		}
	}
	return JoinResult{}, ctx.Err()
}

// Leave leaves a project. A Join of it still waiting returns ErrLeft. Over
// WebSocket it waits for the server's answer (bounded by ctx and
// RequestTimeout); a connection lost meanwhile takes the membership with it
// and is no error. Leaving a project that is not joined gives an *Error with
// code NOT_IN_PROJECT.
func (c *Client) Leave(ctx context.Context, projectID string) error {
	c.mu.Lock()
	p := c.projects[projectID]
	if p == nil {
		c.mu.Unlock()
		return &Error{Code: "NOT_IN_PROJECT", Message: "project " + projectID + " is not joined", ProjectID: projectID}
	}
	delete(c.projects, projectID)
	p.settle(JoinResult{}, ErrLeft)
	ws, sse := c.ws, c.sse
	c.mu.Unlock()
	switch {
	case ws != nil:
		ctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
		defer cancel()
		_, err := ws.request(ctx, "leave_project", map[string]string{"projectId": projectID})
		if errors.Is(err, errConnClosed) {
			return nil
		}
		return err
	case sse != nil:
		sse.reopen()
	}
	return nil
}

// LastSeq returns the last seq seen for a joined project (ok is false when the
// project is not joined or no seq is known yet).
func (c *Client) LastSeq(projectID string) (seq int64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.projects[projectID]; p != nil && p.hasSeq {
		return p.lastSeq, true
	}
	return 0, false
}

// Projects returns the projects joined or being joined, sorted.
func (c *Client) Projects() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.projectIDsLocked()
}

func (c *Client) projectIDsLocked() []string {
	ids := make([]string, 0, len(c.projects))
	for id := range c.projects {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// sendJoin sends join_project for a wanted project, with since when a seq is
// known, and handles a refusal. joined_project itself is handled by handle.
func (c *Client) sendJoin(ws *wsConn, id string, p *project) {
	for {
		c.mu.Lock()
		if c.projects[id] != p || c.ws != ws && c.cur != ws {
			c.mu.Unlock()
			return
		}
		data := map[string]any{"projectId": id}
		if p.hasSeq {
			data["since"] = p.lastSeq
		}
		c.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.RequestTimeout)
		_, err := ws.request(ctx, "join_project", data)
		cancel()
		if err == nil || errors.Is(err, errConnClosed) {
			return // joined (handled as it came), or rejoined on reconnect
		}
		c.mu.Lock()
		if c.projects[id] != p || c.ws != ws {
			c.mu.Unlock()
			return
		}
		if errors.Is(err, context.DeadlineExceeded) && p.joined {
			c.mu.Unlock()
			return // joined_project came without its ack
		}
		var e *Error
		if errors.As(err, &e) && e.Code == "RATE_LIMIT_EXCEEDED" {
			c.mu.Unlock()
			wait := time.Duration(e.RetryAfterMs) * time.Millisecond
			if wait <= 0 {
				wait = time.Second
			}
			select {
			case <-time.After(wait):
				continue
			case <-ws.done:
				return
			}
		}
		if e == nil {
			e = &Error{Code: "JOIN_PROJECT_ERROR", Message: err.Error()}
		}
		if e.ProjectID == "" {
			e.ProjectID = id
		}
		c.failProjectLocked(id, e)
		c.mu.Unlock()
		c.log.Warn("saga push: join refused", "project", id, "err", e)
		return
	}
}

// onJoinedLocked records a joined_project and returns a resync when the
// project could not be recovered, and the change of its online list.
func (c *Client) onJoinedLocked(data []byte) (*Resync, *PresenceChange) {
	var d JoinResult
	if json.Unmarshal(data, &d) != nil {
		return nil, nil
	}
	p := c.projects[d.ProjectID]
	if p == nil {
		return nil, nil // left, or given up, meanwhile
	}
	var resync *Resync
	switch {
	case d.Recovered != nil && !*d.Recovered:
		p.lastSeq, p.hasSeq = d.Seq, true
		resync = &Resync{ProjectID: d.ProjectID, Seq: d.Seq}
	case !p.hasSeq:
		p.lastSeq, p.hasSeq = d.Seq, true // first join: live from here
	}
	// recovered: the events after lastSeq follow.
	p.joined = true
	p.info = d
	p.settle(d, nil)
	return resync, c.onJoinedOnlineLocked(d.ProjectID, p, d.Online)
}

// onLeftLocked handles left_project; it reports whether the application
// should hear of it (not when it answers our own leave).
func (c *Client) onLeftLocked(data []byte) bool {
	var d struct {
		ProjectID string `json:"projectId"`
		Reason    string `json:"reason"`
	}
	if json.Unmarshal(data, &d) != nil || d.Reason == "requested" {
		return false
	}
	if p := c.projects[d.ProjectID]; p != nil {
		delete(c.projects, d.ProjectID)
		p.settle(JoinResult{}, &Error{Code: "LEFT_PROJECT", Message: "left project " + d.ProjectID + ": " + d.Reason, ProjectID: d.ProjectID})
	}
	return true
}

// failProjectLocked drops a project the server refused; it reports whether a
// Join was waiting for it (and now returns err).
func (c *Client) failProjectLocked(id string, err error) bool {
	p := c.projects[id]
	if p == nil {
		return false
	}
	delete(c.projects, id)
	waited := len(p.waiters) > 0
	p.settle(JoinResult{}, err)
	return waited
}
