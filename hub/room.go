package hub

import (
	"context"
	"sync"
	"time"
)

// room is a project's set of local members and the memory of its latest
// events. seq is the last event fanned out; every member has been given
// every event up to it (or more, from a replay read ahead of the room).
type room struct {
	id      string
	mu      sync.Mutex
	ready   bool // seq loaded from the store
	joining int  // joins reading the store: the room must outlive them
	dead    bool // removed from the hub; openRoom makes a new one
	seq     int64
	members []*member

	// ring holds the frames of the last n events, (seq-n, seq]; it grows
	// up to size, so a quiet room costs nothing.
	ring  []*Frame
	size  int
	start int // index of the oldest frame
	n     int

	pumping bool // a pump goroutine is reading from the store
	dirty   bool // the doorbell rang while it was reading
}

// member is one connection's membership of a room. last and idx belong to
// the room's lock; the connection lists its members under its own lock.
type member struct {
	conn *Conn
	room *room
	last int64 // last seq handed to this member
	idx  int   // position in room.members; -1 once removed
}

// covers reports whether the ring holds every event after s.
func (r *room) covers(s int64) bool { return s >= r.seq-int64(r.n) && s <= r.seq }

// since returns the ring's frames with seq > s; covers(s) must hold.
func (r *room) since(s int64) []*Frame {
	k := int(r.seq - s)
	out := make([]*Frame, 0, k)
	for i := r.n - k; i < r.n; i++ {
		out = append(out, r.ring[(r.start+i)%len(r.ring)])
	}
	return out
}

func (r *room) remember(f *Frame) {
	if r.size == 0 {
		return
	}
	if len(r.ring) < r.size { // still growing: start is 0
		r.ring = append(r.ring, f)
		r.n++
		return
	}
	r.ring[r.start] = f
	r.start = (r.start + 1) % len(r.ring)
}

// addLocked queues frames to c and makes it a member, atomically with
// respect to fan-out (r.mu is held) and to Disconnect (c.mu is taken here).
func (r *room) addLocked(c *Conn, last int64, frames []*Frame) bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	wasEmpty := len(c.queue) == 0
	c.queue = append(c.queue, frames...)
	m := &member{conn: c, room: r, last: last, idx: len(r.members)}
	c.rooms = append(c.rooms, m)
	c.mu.Unlock()
	r.members = append(r.members, m)
	if wasEmpty {
		c.out.Wake()
	}
	return true
}

func (r *room) removeLocked(m *member) {
	i := m.idx
	if i < 0 {
		return
	}
	last := len(r.members) - 1
	r.members[i] = r.members[last]
	r.members[i].idx = i
	r.members[last] = nil
	r.members = r.members[:last]
	m.idx = -1
}

// roomOf returns the project's room, or nil when nobody here joined it.
func (h *Hub) roomOf(projectID string) *room {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.rooms[projectID]
}

// openRoom returns the project's room, created when missing, with r.mu held.
// A new room learns its seq from the store while holding its lock, so a
// doorbell that rings meanwhile waits and then reads from the right place.
func (h *Hub) openRoom(ctx context.Context, projectID string) (*room, error) {
	for {
		h.mu.Lock()
		r := h.rooms[projectID]
		if r == nil {
			r = &room{id: projectID, size: h.opts.HistorySize}
			h.rooms[projectID] = r
		}
		h.mu.Unlock()
		r.mu.Lock()
		if r.dead {
			r.mu.Unlock()
			continue
		}
		if !r.ready {
			head, err := h.opts.Source.Head(ctx, projectID)
			if err != nil {
				r.mu.Unlock()
				h.releaseRoom(r)
				return nil, err
			}
			r.seq, r.ready = head, true
		}
		return r, nil
	}
}

// releaseRoom forgets an empty room.
func (h *Hub) releaseRoom(r *room) {
	h.mu.Lock()
	r.mu.Lock()
	if len(r.members) == 0 && r.joining == 0 && !r.dead {
		r.dead = true
		if h.rooms[r.id] == r {
			delete(h.rooms, r.id)
		}
	}
	r.mu.Unlock()
	h.mu.Unlock()
}

func (h *Hub) removeMember(m *member) {
	r := m.room
	r.mu.Lock()
	r.removeLocked(m)
	empty := len(r.members) == 0
	r.mu.Unlock()
	if empty {
		h.releaseRoom(r)
	}
}

func (h *Hub) wakeRoom(r *room) {
	r.mu.Lock()
	if r.dead || !r.ready {
		r.mu.Unlock()
		return
	}
	if r.pumping {
		r.dirty = true
		r.mu.Unlock()
		return
	}
	r.pumping = true
	r.mu.Unlock()
	go h.pump(r)
}

// pump reads the room's new events from the store and fans them out, until
// no doorbell rang during the last read. One pump per room at a time keeps
// each project's events in seq order.
func (h *Hub) pump(r *room) {
	for {
		r.mu.Lock()
		after := r.seq
		r.dirty = false
		r.mu.Unlock()

		ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
		evs, complete, err := h.opts.Source.After(ctx, r.id, after, h.opts.FetchBatch)
		cancel()
		if err != nil {
			r.mu.Lock()
			r.pumping = false
			r.mu.Unlock()
			if h.ctx.Err() == nil {
				h.log.Warn("reading events failed; retrying", "project", r.id, "err", err)
				time.AfterFunc(time.Second, func() { h.wakeRoom(r) })
			}
			return
		}
		frames := make([]*Frame, 0, len(evs))
		for _, e := range evs {
			frames = append(frames, EventFrame(e))
		}

		r.mu.Lock()
		if !complete && r.seq == after {
			// The room's own position was pruned from the store: its members
			// cannot be given what they missed. Close them with 4001; they
			// resume and learn recovered:false.
			h.log.Warn("room fell behind the store's retention", "project", r.id, "seq", after)
			for _, m := range r.members {
				m.conn.out.Abort(CloseTooSlow, "history lost")
			}
			r.ready = false
		}
		for _, f := range frames {
			if f.Seq != r.seq+1 {
				if f.Seq > r.seq+1 {
					r.dirty = true // a hole: read again from r.seq
					break
				}
				continue
			}
			r.fanout(f)
		}
		if len(evs) == h.opts.FetchBatch {
			r.dirty = true
		}
		if !r.dirty || r.dead || !r.ready {
			r.pumping = false
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
	}
}

// fanout hands one event's frame, encoded once, to every member that has not
// had it yet.
func (r *room) fanout(f *Frame) {
	r.seq = f.Seq
	r.remember(f)
	for _, m := range r.members {
		if f.Seq > m.last {
			m.last = f.Seq
			m.conn.enqueue(f, false)
		}
	}
}
