package hub

import (
	"context"
	"encoding/json"
	"time"

	"github.com/saga-family/sagapush/internal/protocol"
)

// Join adds c to the project's room. When since is set it replays every
// event after it, or answers recovered:false when that is impossible. The
// joined_project reply (carrying ack) is queued first, then the replay, then
// live events: no gap and no duplicate, whatever is published meanwhile.
//
// A replay that fits in half of what the connection's queue may still take
// comes from the room's memory at once. A longer one is streamed: the
// member joins behind the room, the fan-out passes it by, and catchUp feeds
// it from the store as its transport drains the queue, then hands it over
// to the fan-out. So a resume costs at most the queue's budget in memory,
// however far back it starts, and never closes the client with 4001 for
// being given more than it could take.
//
// A join of a project the connection has already joined answers as a fresh
// join would: with since, the old membership goes (with what it queued and
// the transport has not taken yet) and the replay after since replaces it;
// without since, it answers where the membership stands.
func (h *Hub) Join(ctx context.Context, c *Conn, projectID string, since *int64, ack json.RawMessage) (protocol.Joined, error) {
	revocations := h.revocations.Load()
	role, err := h.opts.Access.Role(ctx, c.User(), projectID)
	if err != nil {
		return protocol.Joined{}, err
	}
	return h.join(ctx, c, projectID, role, revocations, since, ack)
}

// RolesAccess is an Access that decides several projects in one look-up.
type RolesAccess interface {
	// Roles returns the user's role in each listed project it may access;
	// the others are missing from the map.
	Roles(ctx context.Context, u *User, projectIDs []string) (map[string]string, error)
}

// JoinOutcome is what JoinAll did for one project.
type JoinOutcome struct {
	ProjectID string
	Joined    protocol.Joined
	Err       error
}

// JoinAll joins c to each project, with the since given for it (none: live
// from now), deciding access for all of them in one look-up when the
// Access is a RolesAccess: a stream that lists many projects costs one
// access query, not one per project.
func (h *Hub) JoinAll(ctx context.Context, c *Conn, projectIDs []string, since map[string]int64) []JoinOutcome {
	revocations := h.revocations.Load()
	out := make([]JoinOutcome, len(projectIDs))
	var roles map[string]string
	var rolesErr error
	if ra, ok := h.opts.Access.(RolesAccess); ok {
		roles, rolesErr = ra.Roles(ctx, c.User(), projectIDs)
	}
	for i, p := range projectIDs {
		out[i].ProjectID = p
		var role string
		var err error
		switch {
		case rolesErr != nil:
			err = rolesErr
		case roles != nil:
			var ok bool
			if role, ok = roles[p]; !ok {
				err = ErrAccessDenied
			}
		default:
			role, err = h.opts.Access.Role(ctx, c.User(), p)
		}
		if err != nil {
			out[i].Err = err
			continue
		}
		var from *int64
		if n, ok := since[p]; ok {
			from = &n
		}
		out[i].Joined, out[i].Err = h.join(ctx, c, p, role, revocations, from, nil)
	}
	return out
}

// join is Join once the user's role in the project is known; revocations
// is the count of revocations before access was decided.
func (h *Hub) join(ctx context.Context, c *Conn, projectID, role string, revocations uint64, since *int64, ack json.RawMessage) (protocol.Joined, error) {
	c.mu.Lock()
	already := c.memberLocked(projectID) >= 0
	tooMany := !already && len(c.rooms) >= h.opts.MaxRoomsPerConn
	closed := c.closedLocked()
	c.mu.Unlock()
	if closed {
		return protocol.Joined{}, ErrClosed
	}
	if tooMany {
		return protocol.Joined{}, ErrTooManyRooms
	}
	if already && since == nil {
		// The subscription delivers every event in order already: the
		// answer says how far it has gone.
		res := protocol.Joined{ProjectID: projectID, Role: role}
		if r := h.roomOf(projectID); r != nil {
			r.mu.Lock()
			res.Seq = r.seq
			res.Online = h.online(projectID)
			r.mu.Unlock()
		}
		c.Send(Reply(protocol.JoinedProject, "", res, ack))
		return res, nil
	}
	if already {
		h.dropMembership(c, projectID)
	}

	// Whether the store still holds the events after since is learned
	// outside the room lock. The room is pinned meanwhile so that it keeps
	// its position and memory.
	held := -1 // unknown; 0: pruned; 1: held
	var storeHead int64 = -1
	var pinned *room
	defer func() {
		if pinned != nil {
			pinned.mu.Lock()
			pinned.joining--
			pinned.mu.Unlock()
			h.releaseRoom(pinned)
		}
	}()
	for attempt := 0; ; attempt++ {
		r, err := h.openRoom(ctx, projectID) // returns r locked
		if err != nil {
			return protocol.Joined{}, err
		}
		if pinned == nil {
			pinned = r
			r.joining++
		}
		head := r.seq
		last := head // the member's position: it has had every event up to it
		res := protocol.Joined{ProjectID: projectID, Role: role, Seq: head}
		var replay []*Frame
		stream := false
		if since != nil {
			s := *since
			recovered := true
			switch {
			case s > head && storeHead < 0 && attempt < 5:
				// The room may only lag the store (its pump is reading).
				r.mu.Unlock()
				if storeHead, err = h.opts.Source.Head(ctx, projectID); err != nil {
					return protocol.Joined{}, err
				}
				continue
			case s > head && s <= storeHead:
				// The client has seen more than the room has fanned out yet:
				// it starts from there and the room's catch-up skips the rest.
				last, res.Seq = s, s
			case s < 0 || s > head || head-s > int64(h.opts.MaxReplay):
				recovered = false
			case s == head:
			case r.covers(s) && h.fits(c, r.since(s)):
				replay = r.since(s)
			case held < 0 && attempt < 5:
				r.mu.Unlock()
				if held, err = h.holds(ctx, projectID, s); err != nil {
					return protocol.Joined{}, err
				}
				continue
			case held == 1:
				last, stream = s, true
			default:
				recovered = false
			}
			res.Recovered = &recovered
		}
		// Presence hears of the member before the answer is built: its
		// list has the joining user in it.
		counted := h.opts.Presence != nil && c.User().Role != roleService
		if counted {
			h.opts.Presence.Joined(projectID, c.User())
		}
		res.Online = h.online(projectID)
		frames := make([]*Frame, 0, 1+len(replay))
		frames = append(frames, Reply(protocol.JoinedProject, "", res, ack))
		frames = append(frames, replay...)
		m, wake := r.addLocked(c, last, frames)
		if m != nil {
			m.behind, m.counted = stream, counted
		} else if counted {
			h.opts.Presence.Left(projectID, c.User().ID)
		}
		r.mu.Unlock()
		if m == nil {
			return protocol.Joined{}, ErrClosed
		}
		if wake {
			c.out.Wake()
		}
		if stream {
			h.metrics.storeReplays.Inc()
			go h.catchUp(m)
		}
		h.metrics.joins.Inc()
		if h.revocations.Load() != revocations {
			// Access was granted before a revocation that may have missed
			// this member (it was not in the room yet): check again.
			h.recheck(ctx, c, projectID)
		}
		return res, nil
	}
}

// online is the project's online users for a join's answer: nil without
// Presence.
func (h *Hub) online(projectID string) []protocol.OnlineUser {
	if h.opts.Presence == nil {
		return nil
	}
	return h.opts.Presence.Online(projectID)
}

// fits reports whether frames fit in half of what c's queue may still take,
// in frames and in bytes: such a replay is queued at once.
func (h *Hub) fits(c *Conn, frames []*Frame) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)+len(frames) <= int(c.limit)/2 && frameBytes(frames) <= int(c.budget)/2
}

// holds tells whether the store still has the project's event after s (1)
// or pruned it (0): whether a resume from s can be served.
func (h *Hub) holds(ctx context.Context, projectID string, s int64) (int, error) {
	evs, complete, err := h.opts.Source.After(ctx, projectID, s, 1)
	if err != nil {
		return -1, err
	}
	if !complete || (len(evs) > 0 && evs[0].Seq != s+1) {
		return 0, nil
	}
	return 1, nil
}

// dropMembership ends c's membership of the project and takes back the
// project's events it queued that the transport has not taken yet: a
// re-join's replay gives them again, in order after its joined_project.
func (h *Hub) dropMembership(c *Conn, projectID string) {
	c.mu.Lock()
	var m *member
	if i := c.memberLocked(projectID); i >= 0 {
		m = c.dropLocked(i)
	}
	c.mu.Unlock()
	if m == nil {
		return
	}
	h.removeMember(m) // from here on, no fan-out pushes to it
	c.mu.Lock()
	kept := c.queue[:0]
	for _, f := range c.queue {
		if f.Seq > 0 && f.ProjectID == projectID {
			c.budget += int32(len(f.JSON))
			continue
		}
		kept = append(kept, f)
	}
	clear(c.queue[len(kept):])
	c.queue = kept
	c.mu.Unlock()
}

// catchUpPoll is how often a streamed replay looks whether its connection
// drained its queue.
const catchUpPoll = 5 * time.Millisecond

// catchUpBatch bounds the events read from the store at once for a
// streamed replay: they wait in memory until the queue has room.
const catchUpBatch = 16

// catchUp feeds a member that joined behind its room (Join) from the store
// and the room's memory, never more than half its queue's budget at a time,
// until it has caught up with the room, then hands it to the fan-out.
func (h *Hub) catchUp(m *member) {
	c, r := m.conn, m.room
	tick := time.NewTicker(catchUpPoll)
	defer tick.Stop()
	var page []*Frame // read from the store, not queued yet
	for {
		// Wait until the transport took most of what it was given.
		for {
			room, closed := c.room()
			if closed {
				return
			}
			if room >= int(h.budgetBytes)/2 {
				break
			}
			select {
			case <-tick.C:
			case <-h.ctx.Done():
				return
			}
		}
		r.mu.Lock()
		if m.idx < 0 {
			r.mu.Unlock() // it left, was revoked or disconnected
			return
		}
		if len(page) == 0 && (m.last >= r.seq || r.covers(m.last)) {
			var rest []*Frame
			if m.last < r.seq {
				rest = r.since(m.last)
			}
			if frameBytes(rest) <= int(h.budgetBytes)/2 {
				// The rest fits: from here on the fan-out feeds it.
				_, wake := c.push(rest, frameBytes(rest), true)
				m.last = max(m.last, r.seq)
				m.behind = false
				r.mu.Unlock()
				if wake {
					c.out.Wake()
				}
				return
			}
			page = rest
		}
		if len(page) > 0 {
			n, size := 1, len(page[0].JSON) // one at least, however big
			for n < len(page) && size+len(page[n].JSON) <= int(h.budgetBytes)/2 {
				size += len(page[n].JSON)
				n++
			}
			_, wake := c.push(page[:n], size, true)
			m.last = page[n-1].Seq
			clear(page[:n])
			page = page[n:]
			r.mu.Unlock()
			if wake {
				c.out.Wake()
			}
			continue
		}
		from := m.last
		r.mu.Unlock()
		ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
		evs, complete, err := h.opts.Source.After(ctx, r.id, from, catchUpBatch)
		cancel()
		switch {
		case err != nil:
			if h.ctx.Err() != nil {
				return
			}
			h.log.Warn("reading a replay failed; retrying", "project", r.id, "err", err)
			select {
			case <-time.After(time.Second):
			case <-h.ctx.Done():
				return
			}
		case !complete || (len(evs) > 0 && evs[0].Seq != from+1):
			// Pruned while streaming: the client resumes and learns
			// recovered:false.
			c.abort(protocol.CloseTooSlow, "history lost")
			return
		case len(evs) == 0:
			// The store has no more yet than the room: wait for it.
			select {
			case <-tick.C:
			case <-h.ctx.Done():
				return
			}
		default:
			for i, e := range evs {
				if e.Seq != from+1+int64(i) {
					break // a hole: read again from there
				}
				page = append(page, EventFrame(e))
			}
		}
	}
}
