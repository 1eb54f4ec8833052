package hub

import (
	"context"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/saga-family/sagapush/internal/protocol"
)

// User is an authenticated identity, as the transport learned it from a token.
type User struct {
	ID       string
	Name     string
	Role     string   // "admin", "service" or ""
	Projects []string // the token's projects claim (embedded mode access)
}

// Outlet is what the hub needs from a transport's connection. Neither method
// may block: the hub calls them while fanning out. Wake is never called with
// a room lock held, so a transport may write to its socket in Wake, as long
// as the write cannot wait (a non-blocking write).
type Outlet interface {
	// Wake says frames are waiting in the queue; the transport takes them
	// with Conn.Pull.
	Wake()
	// Abort closes the connection at once with the given close code,
	// dropping whatever is still queued.
	Abort(code int, reason string)
}

// Warmer is an Outlet whose Wake touches memory of its own first (a lock,
// the socket's state). The hub then has it load that memory, without taking
// a lock or waiting for the load, before waking it: a big room's fan-out
// warms a chunk of members before it wakes them, so that the chunk's cache
// misses overlap instead of each waiting behind a Wake's lock. An outlet
// whose Wake only signals a goroutine has nothing to warm.
type Warmer interface {
	Warm()
}

// Conn is one client connection, of any transport. Its outgoing queue is
// bounded in frames (QueueLimit) and in bytes (QueueLimitBytes): a
// connection that falls that far behind is aborted with 4001 (the client
// resumes from its last seq), so a slow reader never blocks a publisher,
// never holds more memory than its budget, and never loses an event
// silently.
type Conn struct {
	// What a fan-out touches comes first, in one cache line (Conn is 128
	// bytes on 64-bit platforms, so its allocations are 64-byte aligned;
	// TestConnLayout): in a big room a fan-out is bound by cache
	// misses, one per line per member.
	mu sync.Mutex
	// limit is how many frames the queue may hold (the hub's QueueLimit),
	// and -1 once the connection is closed: one word for both leaves room
	// in the line for budget.
	limit int32
	// budget is how many more bytes the queue may take: QueueLimitBytes
	// less what it holds. Forced frames may take it below zero.
	budget int32
	queue  []*Frame
	// first is queue's backing array until a burst outgrows it: a member
	// that gets one event at a time never touches another line for it.
	first [1]*Frame
	out   Outlet

	hub       *Hub
	ID        uint64
	Transport string
	user      atomic.Pointer[User]
	rooms     []*member // joined projects: a few per connection, so a slice
}

// User returns the connection's current identity.
func (c *Conn) User() *User { return c.user.Load() }

// SetUser replaces the identity after a token refresh; the user id must not
// change (the transport checks it).
func (c *Conn) SetUser(u *User) { c.user.Store(u) }

func (c *Conn) closedLocked() bool { return c.limit < 0 }

// Send queues a frame for this connection alone (replies, errors, pongs).
// It reports false when the connection is closed or was just aborted.
func (c *Conn) Send(f *Frame) bool {
	return c.enqueue(f, false)
}

// CloseAfterFlush queues a close: the transport closes with code once the
// frames queued before it are written.
func (c *Conn) CloseAfterFlush(code int, reason string) {
	c.mu.Lock()
	if !c.closedLocked() {
		c.decidedLocked(code)
	}
	c.mu.Unlock()
	c.logClose(code, reason)
	c.enqueue(&Frame{CloseCode: code, CloseReason: reason}, true)
}

// logClose logs a close the server decides, at info unless it is a
// shutdown's (1001): an operator sees every abnormal close once.
func (c *Conn) logClose(code int, reason string) {
	level := slog.LevelInfo
	if code == protocol.CloseGoingAway {
		level = slog.LevelDebug
	}
	c.hub.log.Log(context.Background(), level, "connection closed by the server", "conn", c.ID, "user", c.User().ID, "transport", c.Transport, "code", code, "reason", reason)
}

// Pull moves up to max queued frames (all when max <= 0) into dst and returns
// it. The transport calls it after Wake, and again whenever it can write more.
func (c *Conn) Pull(dst []*Frame, max int) []*Frame {
	c.mu.Lock()
	n := len(c.queue)
	if max > 0 && n > max {
		n = max
	}
	dst = append(dst, c.queue[:n]...)
	c.budget += int32(frameBytes(c.queue[:n]))
	clear(c.queue[:n])
	if n == len(c.queue) {
		if cap(c.queue) > 64 {
			c.queue = c.first[:0] // release a burst's backing array once drained
		} else {
			c.queue = c.queue[:0]
		}
	} else {
		c.queue = c.queue[n:]
	}
	c.mu.Unlock()
	return dst
}

// Pending returns how many frames wait in the queue.
func (c *Conn) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

// Joined reports whether the connection is a member of the project's room.
func (c *Conn) Joined(projectID string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.memberLocked(projectID) >= 0
}

// memberLocked returns the index in c.rooms of the project's membership, or -1.
func (c *Conn) memberLocked(projectID string) int {
	for i, m := range c.rooms {
		if m.room.id == projectID {
			return i
		}
	}
	return -1
}

// dropLocked forgets membership i.
func (c *Conn) dropLocked(i int) *member {
	m := c.rooms[i]
	last := len(c.rooms) - 1
	c.rooms[i] = c.rooms[last]
	c.rooms[last] = nil
	c.rooms = c.rooms[:last]
	return m
}

// Projects lists the joined projects.
func (c *Conn) Projects() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]string, 0, len(c.rooms))
	for _, m := range c.rooms {
		ids = append(ids, m.room.id)
	}
	return ids
}

// enqueue appends f and wakes the transport when the queue was empty.
func (c *Conn) enqueue(f *Frame, force bool) bool {
	ok, wake := c.push([]*Frame{f}, len(f.JSON), force)
	if wake {
		c.out.Wake()
	}
	return ok
}

// push appends frames holding size bytes (frameBytes(fs): a fan-out
// computes it once for all its members) without waking the transport: a
// fan-out wakes its members after letting go of the room lock. A
// connection the frames would take past QueueLimit frames or its byte
// budget is aborted with 4001 instead, unless its queue is empty (a single
// event larger than the budget still reaches readers that keep up). force
// skips the limits (replies to joins and control frames are bounded by
// their own limits). wake reports that the queue was empty, so the
// transport needs a Wake.
func (c *Conn) push(fs []*Frame, size int, force bool) (ok, wake bool) {
	c.mu.Lock()
	if c.closedLocked() {
		c.mu.Unlock()
		return false, false
	}
	if !force && len(c.queue) > 0 && (len(c.queue)+len(fs) > int(c.limit) || size > int(c.budget)) {
		c.limit = -1
		c.discardLocked(len(fs))
		c.decidedLocked(protocol.CloseTooSlow)
		c.mu.Unlock()
		c.hub.metrics.slowClosed.Inc()
		c.logClose(protocol.CloseTooSlow, "too slow")
		c.out.Abort(protocol.CloseTooSlow, "too slow")
		return false, false
	}
	wake = len(c.queue) == 0
	c.queue = append(c.queue, fs...)
	c.budget -= int32(min(size, math.MaxInt32/2))
	c.mu.Unlock()
	return true, wake
}

// room returns how many more bytes the queue may take, and whether the
// connection is closed.
func (c *Conn) room() (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return int(c.budget), c.closedLocked()
}

// abort closes the connection at once with code, dropping its queue.
func (c *Conn) abort(code int, reason string) {
	c.mu.Lock()
	if c.closedLocked() {
		c.mu.Unlock()
		return
	}
	c.limit = -1
	c.discardLocked(0)
	c.decidedLocked(code)
	c.mu.Unlock()
	c.logClose(code, reason)
	c.out.Abort(code, reason)
}

// decidedLocked records the close the server decided for c, the first one
// only, for the disconnects metric (Conn has no room left in its two cache
// lines for it). c.mu is held and c is not closed yet: Disconnect closes c
// under c.mu before it takes the record, so it always finds it and none is
// left behind.
func (c *Conn) decidedLocked(code int) {
	c.hub.closes.LoadOrStore(c, code)
}

// frameBytes is what frames count against a connection's byte budget.
func frameBytes(fs []*Frame) int {
	n := 0
	for _, f := range fs {
		n += len(f.JSON)
	}
	return n
}

// QueuedBytes returns the bytes waiting in the queue.
func (c *Conn) QueuedBytes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return int(c.hub.budgetBytes) - int(c.budget)
}

// discardLocked empties the queue of a closing connection, counting what
// it held and the extra frames that will not be queued either.
func (c *Conn) discardLocked(extra int) {
	if n := len(c.queue) + extra; n > 0 {
		c.hub.metrics.Dropped.WithLabelValues(c.Transport).Add(float64(n))
	}
	c.queue = nil
	c.budget = c.hub.budgetBytes
}

// userState is what the hub keeps per user across all of its connections.
type userState struct {
	// conns is a slice: most users have one or a few connections, which a
	// map would hold at several times the memory.
	conns   []*Conn
	limiter *rate.Limiter
}

// allow takes one token from the user's bucket: MaxEvents tokens, refilled
// evenly over the window, shared by all of the user's connections. It returns
// how long until a token is free when there is none.
func allow(l *rate.Limiter, now time.Time) (bool, time.Duration) {
	r := l.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}
