package hub

import (
	"context"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/saga-family/sagapush/internal/protocol"
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

	// offered holds events the store handed over with their doorbell
	// (Hub.Offer), in arrival order, for the pump; under offerMu, not mu,
	// so that offering never waits for a fan-out.
	offerMu  sync.Mutex
	offered  []Event
	mustRead atomic.Bool // a ring without its events came: read the store

	// bell is the doorbell's state, changed without the room lock so that
	// a publisher never waits for a fan-out: bellIdle, bellPumping (a pump
	// goroutine runs) or bellRung (it rang again while the pump ran).
	bell atomic.Int32
}

// member is one connection's membership of a room. last and idx belong to
// the room's lock; the connection lists its members under its own lock.
type member struct {
	conn *Conn
	room *room
	last int64 // last seq handed to this member
	idx  int   // position in room.members; -1 once removed
	// behind marks a member whose replay is streamed (Hub.catchUp): the
	// fan-out passes it by until it has caught up.
	behind bool
	// counted: Presence was told of this member (not a service connection).
	counted bool
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

// maxOffered bounds a room's offered events; beyond it offers are dropped
// and the pump reads the store instead.
const maxOffered = 1024

func (r *room) offer(e Event) {
	r.offerMu.Lock()
	if len(r.offered) < maxOffered {
		r.offered = append(r.offered, e)
	}
	r.offerMu.Unlock()
}

// takeOffered returns the offered events that follow on from after without
// a gap, and forgets those and older ones. hole reports offered events left
// behind a gap: the store must be read for what is missing.
func (r *room) takeOffered(after int64) (evs []Event, hole bool) {
	r.offerMu.Lock()
	defer r.offerMu.Unlock()
	i := 0
	for i < len(r.offered) && r.offered[i].Seq <= after {
		i++
	}
	j := i
	for j < len(r.offered) && r.offered[j].Seq == after+1+int64(j-i) {
		j++
	}
	evs = append([]Event(nil), r.offered[i:j]...)
	rest := copy(r.offered, r.offered[j:])
	clear(r.offered[rest:])
	r.offered = r.offered[:rest]
	if rest == 0 && cap(r.offered) > 64 {
		r.offered = nil // a burst's backing array goes once drained
	}
	return evs, rest > 0
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
// respect to fan-out (r.mu is held) and to Disconnect (c.mu is taken here);
// nil when c is closed. wake reports that the caller must wake c once it
// lets go of r.mu.
func (r *room) addLocked(c *Conn, last int64, frames []*Frame) (m *member, wake bool) {
	c.mu.Lock()
	if c.closedLocked() {
		c.mu.Unlock()
		return nil, false
	}
	wake = len(c.queue) == 0
	c.queue = append(c.queue, frames...)
	c.budget -= int32(min(frameBytes(frames), math.MaxInt32/2))
	m = &member{conn: c, room: r, last: last, idx: len(r.members)}
	c.rooms = append(c.rooms, m)
	c.mu.Unlock()
	r.members = append(r.members, m)
	return m, wake
}

// removeLocked takes m out of the room, telling Presence when it counted.
func (h *Hub) removeLocked(r *room, m *member) {
	if r.removeLocked(m) && m.counted && h.opts.Presence != nil {
		h.opts.Presence.Left(r.id, m.conn.User().ID)
	}
}

// removeLocked takes m out of the room; false when it was out already.
func (r *room) removeLocked(m *member) bool {
	i := m.idx
	if i < 0 {
		return false
	}
	last := len(r.members) - 1
	r.members[i] = r.members[last]
	r.members[i].idx = i
	r.members[last] = nil
	r.members = r.members[:last]
	m.idx = -1
	return true
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
			if h.opts.Presence != nil {
				h.opts.Presence.Watch(ctx, projectID)
			}
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
		if r.ready && h.opts.Presence != nil {
			// Under h.mu: a room opened again for the project is
			// watched after this.
			h.opts.Presence.Unwatch(r.id)
		}
	}
	r.mu.Unlock()
	h.mu.Unlock()
}

func (h *Hub) removeMember(m *member) {
	r := m.room
	r.mu.Lock()
	h.removeLocked(r, m)
	empty := len(r.members) == 0
	r.mu.Unlock()
	if empty {
		h.releaseRoom(r)
	}
}

const (
	bellIdle int32 = iota
	bellPumping
	bellRung
)

// wakeRoom rings the room's doorbell. It never blocks: it starts a pump, or
// tells the running one to look once more. read says the store must be read:
// the ring came without its events (they are not all offered).
func (h *Hub) wakeRoom(r *room, read bool) {
	if read {
		r.mustRead.Store(true)
	}
	for {
		switch r.bell.Load() {
		case bellIdle:
			if r.bell.CompareAndSwap(bellIdle, bellPumping) {
				go h.pump(r)
				return
			}
		case bellPumping:
			if r.bell.CompareAndSwap(bellPumping, bellRung) {
				return
			}
		default:
			return // rung already
		}
	}
}

// pump reads the room's new events from the store and fans them out, until
// the doorbell stayed silent during a read. One pump per room at a time keeps
// each project's events in seq order. The room lock is held for one event's
// fan-out at a time, so joins and other work interleave with a long backlog.
func (h *Hub) pump(r *room) {
	for {
		r.bell.Store(bellPumping) // this read covers every ring so far
		r.mu.Lock()
		after, live := r.seq, r.ready && !r.dead
		r.mu.Unlock()
		if !live {
			// A new room reads its position from the store when it is
			// opened; a dead one is gone.
			if r.bell.CompareAndSwap(bellPumping, bellIdle) {
				return
			}
			continue
		}

		// Events the store offered (from their notifications) spare a read
		// when they follow on from the room's position; anything else, a
		// hole included, is read from the store.
		var evs []Event
		var hole bool
		if !r.mustRead.Swap(false) {
			evs, hole = r.takeOffered(after)
		}
		complete, more := true, hole
		var err error
		if len(evs) == 0 {
			ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
			evs, complete, err = h.opts.Source.After(ctx, r.id, after, h.opts.FetchBatch)
			cancel()
			more = len(evs) == h.opts.FetchBatch
		}
		if err != nil {
			r.bell.Store(bellIdle)
			if h.ctx.Err() == nil {
				h.log.Warn("reading events failed; retrying", "project", r.id, "err", err)
				time.AfterFunc(time.Second, func() { h.wakeRoom(r, true) })
			}
			return
		}
		if !complete {
			r.mu.Lock()
			if r.seq == after {
				// The room's own position was pruned from the store: its
				// members cannot be given what they missed. Close them with
				// 4001; they resume and learn recovered:false.
				h.log.Warn("room fell behind the store's retention", "project", r.id, "seq", after)
				for _, m := range r.members {
					m.conn.abort(protocol.CloseTooSlow, "history lost")
				}
				r.ready = false
			}
			r.mu.Unlock()
		}
		took := time.Now() // the fan-out's start, for its latency
		frames := make([]*Frame, len(evs))
		var wakes []*Conn
		for i, e := range evs {
			frames[i] = EventFrame(e) // encoded once, outside the lock
		}
		// Runs of up to fanoutRun events per lock: a backlog reaches each
		// member as one batch (one wake, and one write when its transport
		// coalesces), while joins still interleave between runs.
		for len(frames) > 0 {
			n := min(len(frames), fanoutRun)
			r.mu.Lock()
			run := frames[:n]
			for len(run) > 0 && run[0].Seq <= r.seq {
				run = run[1:] // already fanned out (the room moved meanwhile)
			}
			k := 0
			for k < len(run) && run[k].Seq == r.seq+1+int64(k) {
				k++
			}
			if k < len(run) {
				more = true // a hole: read again from r.seq
			}
			wakes = wakes[:0]
			if k > 0 {
				wakes = r.fanout(run[:k], wakes)
			}
			r.mu.Unlock()
			wakeAll(wakes)
			// Once per event, never per member: a big room's fan-out must
			// not pay for its metrics per delivery.
			now := time.Now()
			fanout := now.Sub(took).Seconds()
			for _, f := range run[:k] {
				h.metrics.commitToClient.Observe(now.Sub(f.created).Seconds())
				h.metrics.fanoutLatency.Observe(fanout)
			}
			if k < len(run) {
				break
			}
			frames = frames[n:]
		}
		if more {
			continue
		}
		if r.bell.CompareAndSwap(bellPumping, bellIdle) {
			return
		}
	}
}

// fanoutRun bounds the events fanned out under one hold of the room lock.
const fanoutRun = 64

// fanout hands consecutive events (fs[0].Seq == r.seq+1), each encoded once,
// to every member that has not had them, as one batch per member. It returns
// wakes with the connections to wake appended.
func (r *room) fanout(fs []*Frame, wakes []*Conn) []*Conn {
	for _, f := range fs {
		r.remember(f)
	}
	r.seq = fs[len(fs)-1].Seq
	// after[i] is what fs[i:] counts against a member's byte budget,
	// computed once for every member.
	var after [fanoutRun + 1]int
	for i := len(fs) - 1; i >= 0; i-- {
		after[i] = after[i+1] + len(fs[i].JSON)
	}
	for members := r.members; len(members) > 0; {
		chunk := members[:min(len(members), fanoutChunk)]
		members = members[len(chunk):]
		warmMembers(chunk)
		for _, m := range chunk {
			if m.behind {
				continue
			}
			i := 0
			for i < len(fs) && fs[i].Seq <= m.last {
				i++
			}
			if i < len(fs) {
				m.last = r.seq
				if _, wake := m.conn.push(fs[i:], after[i], false); wake {
					wakes = append(wakes, m.conn)
				}
			}
		}
	}
	return wakes
}

// warmMembers loads each member and the line of its Conn that push locks,
// before any push: the fan-out runs under the room lock on one core, and a
// lock waits for the miss before it, so unwarmed the misses would queue.
// The load is atomic so that the compiler keeps it; it does not wait.
func warmMembers(ms []*member) {
	for _, m := range ms {
		atomic.LoadInt32(&m.conn.limit)
	}
}

// wakesPerWorker is the fewest wakes worth a goroutine of their own: a
// transport may write to the socket in Wake, one syscall per connection.
const wakesPerWorker = 256

// wakeAll wakes the transports of conns, outside any room lock. A big room's
// wakes run on all cores at once, taking slices of fanoutChunk from a shared
// cursor, so a core that the scheduler gives less time to does less of the
// work and all finish together. Each connection is woken by one goroutine,
// so its frames still go out in order.
func wakeAll(conns []*Conn) {
	workers := min(runtime.GOMAXPROCS(0), len(conns)/wakesPerWorker)
	if workers <= 1 {
		for start := 0; start < len(conns); start += fanoutChunk {
			wakeEach(conns[start:min(start+fanoutChunk, len(conns))])
		}
		return
	}
	var next atomic.Int64
	work := func() {
		for {
			end := int(next.Add(fanoutChunk))
			start := end - fanoutChunk
			if start >= len(conns) {
				return
			}
			wakeEach(conns[start:min(end, len(conns))])
		}
	}
	var wg sync.WaitGroup
	for range workers - 1 {
		wg.Go(work)
	}
	work()
	wg.Wait()
}

// wakeEach wakes a chunk of conns after having each outlet that is a Warmer
// load what its Wake touches first. A fan-out to a big room is bound by
// cache misses, and each Wake takes a lock, which waits for the miss before
// it; loaded ahead, a chunk's misses overlap. The type assertion reads the
// outlet's type, which all outlets of a transport share, not its memory.
func wakeEach(chunk []*Conn) {
	for _, c := range chunk {
		if w, ok := c.out.(Warmer); ok {
			w.Warm()
		}
	}
	for _, c := range chunk {
		c.out.Wake()
	}
}

// fanoutChunk is how many members a fan-out warms at a time before pushing
// to them, and how many wakes a worker takes from the cursor at a time.
const fanoutChunk = 64
