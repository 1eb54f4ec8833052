package session

import (
	"container/heap"
	"sync"
	"time"
)

// deadlines runs the sessions' timed checks (the auth frame's
// deadline, then the token's expiry) from one heap and one timer: a timer and
// a closure per connection would cost more than the rest of an idle
// connection's bookkeeping. A client has at most one entry: setting a new
// deadline moves it, and a client that goes is removed at once (an entry
// left behind would keep the whole connection alive until it fired).
type deadlines struct {
	mu    sync.Mutex
	h     deadlineHeap
	timer *time.Timer
	next  time.Time // when the timer fires; zero when stopped
}

type deadlineHeap []*Session // ordered by deadlineAt; each knows its index

func (h deadlineHeap) Len() int           { return len(h) }
func (h deadlineHeap) Less(i, j int) bool { return h[i].deadlineAt.Before(h[j].deadlineAt) }
func (h deadlineHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].deadlineIdx, h[j].deadlineIdx = i, j
}
func (h *deadlineHeap) Push(x any) {
	c := x.(*Session)
	c.deadlineIdx = len(*h)
	*h = append(*h, c)
}
func (h *deadlineHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	c.deadlineIdx = -1
	return c
}

// set schedules c.due(at), replacing c's earlier deadline.
func (d *deadlines) set(c *Session, at time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c.deadlineAt = at
	if c.deadlineIdx >= 0 {
		heap.Fix(&d.h, c.deadlineIdx)
	} else {
		heap.Push(&d.h, c)
	}
	if d.next.IsZero() || at.Before(d.next) {
		d.armLocked(at)
	}
}

// remove forgets c's deadline, if any.
func (d *deadlines) remove(c *Session) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c.deadlineIdx >= 0 {
		heap.Remove(&d.h, c.deadlineIdx)
	}
}

func (d *deadlines) armLocked(at time.Time) {
	d.next = at
	if d.timer == nil {
		d.timer = time.AfterFunc(time.Until(at), d.fire)
	} else {
		d.timer.Reset(time.Until(at))
	}
}

// len counts scheduled deadlines.
func (d *deadlines) len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.h)
}

// fire runs every deadline that has come, outside the lock.
func (d *deadlines) fire() {
	now := time.Now()
	type dueAt struct {
		c  *Session
		at time.Time
	}
	var due []dueAt
	d.mu.Lock()
	for len(d.h) > 0 && !d.h[0].deadlineAt.After(now) {
		c := heap.Pop(&d.h).(*Session)
		due = append(due, dueAt{c, c.deadlineAt})
	}
	d.next = time.Time{}
	if len(d.h) > 0 {
		d.armLocked(d.h[0].deadlineAt)
	}
	if cap(d.h) > 1024 && len(d.h) < cap(d.h)/4 {
		d.h = append(deadlineHeap(nil), d.h...) // give back a drained burst
	}
	d.mu.Unlock()
	for _, e := range due {
		e.c.due(e.at)
	}
}
