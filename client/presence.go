package client

import (
	"encoding/json"
	"slices"
	"strings"
)

// OnlineUser is a user online in a project: an entry of joined_project's
// online list and of [Client.Presence], the data of user_online.
type OnlineUser struct {
	UserID string `json:"userId"`
	// UserName is "" when the server does not know the user's name (null
	// on the wire).
	UserName string `json:"userName"`
}

// PresenceChange tells that the users online in a joined project changed.
type PresenceChange struct {
	ProjectID string
	// Online is the new list, sorted by user id. It is nil when the list is
	// no longer known: a join answered without one (the project has more
	// online users than the server tells of one by one).
	Online []OnlineUser
}

// Presence returns who is online in a joined project, sorted by user id (a
// copy), kept up to date from joined_project (which replaces the list, after
// a reconnect too) and the user_online and user_offline messages. ok is false
// when the project is not joined, its join is not answered yet, or the
// server sent no list (too many online users); a known list may be empty (a
// service token's). While the client reconnects, the last list stays.
func (c *Client) Presence(projectID string) (online []OnlineUser, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.projects[projectID]
	if p == nil || p.online == nil {
		return nil, false
	}
	return slices.Clone(p.online), true
}

// PresenceChanges returns the channel of presence changes: one for every
// change of a joined project's online list (a user_online for a user already
// listed, or a user_offline for one not listed, changes nothing; leaving a
// project forgets its list and sends nothing). Like Resyncs it never blocks
// the client: while nobody reads it, it keeps the latest change of each
// project, which is the project's list at that time. It is closed by Close.
func (c *Client) PresenceChanges() <-chan PresenceChange { return c.presence.out }

// onJoinedOnlineLocked replaces the project's list with a join's: the fresh
// state, nil when the answer had none. It returns the change, nil when the
// list is the same.
func (c *Client) onJoinedOnlineLocked(id string, p *project, online []OnlineUser) *PresenceChange {
	if online != nil {
		online = slices.Clone(online) // the JoinResult handed to Join keeps its own
		slices.SortFunc(online, func(a, b OnlineUser) int { return strings.Compare(a.UserID, b.UserID) })
	}
	if (online == nil) == (p.online == nil) && slices.Equal(online, p.online) {
		return nil
	}
	return c.setOnlineLocked(id, p, online)
}

// onPresenceLocked applies user_online or user_offline to the project's list
// as a change of state: one that is already true changes nothing (a join's
// list and a message already on its way may overlap), and a list that is not
// known stays unknown.
func (c *Client) onPresenceLocked(event, id string, data []byte) *PresenceChange {
	p := c.projects[id]
	if p == nil || p.online == nil {
		return nil
	}
	var u OnlineUser
	if json.Unmarshal(data, &u) != nil || u.UserID == "" {
		return nil
	}
	i, listed := slices.BinarySearchFunc(p.online, u.UserID, func(e OnlineUser, id string) int { return strings.Compare(e.UserID, id) })
	switch {
	case event == "user_online" && !listed:
		return c.setOnlineLocked(id, p, slices.Insert(slices.Clone(p.online), i, u))
	case event == "user_offline" && listed:
		return c.setOnlineLocked(id, p, slices.Delete(slices.Clone(p.online), i, i+1))
	}
	return nil
}

// setOnlineLocked sets the project's list. Lists are replaced, never changed
// in place, and the change carries its own copy: what a reader holds is its
// own.
func (c *Client) setOnlineLocked(id string, p *project, online []OnlineUser) *PresenceChange {
	p.online = online
	return &PresenceChange{ProjectID: id, Online: slices.Clone(online)}
}
