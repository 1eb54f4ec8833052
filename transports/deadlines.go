package transports

import (
	"container/heap"
	"sync"
	"time"
)

// deadlines runs the WebSocket connections' timed checks (the auth frame's
// deadline, token expiry) from one heap and one timer: a timer and a
// closure per connection would cost more than the rest of an idle
// connection's bookkeeping. A connection whose deadline moved (token
// refreshed) or that is gone leaves a stale entry, which is skipped.
type deadlines struct {
	mu    sync.Mutex
	h     deadlineHeap
	timer *time.Timer
	next  time.Time // when the timer fires; zero when stopped
}

type deadline struct {
	at time.Time
	c  *wsClient
}

type deadlineHeap []deadline

func (h deadlineHeap) Len() int           { return len(h) }
func (h deadlineHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h deadlineHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *deadlineHeap) Push(x any)        { *h = append(*h, x.(deadline)) }
func (h *deadlineHeap) Pop() any {
	old := *h
	d := old[len(old)-1]
	old[len(old)-1] = deadline{}
	*h = old[:len(old)-1]
	return d
}

// add schedules c.due(at) at time at.
func (d *deadlines) add(c *wsClient, at time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	heap.Push(&d.h, deadline{at, c})
	if d.next.IsZero() || at.Before(d.next) {
		d.armLocked(at)
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

// fire runs every deadline that has come, outside the lock.
func (d *deadlines) fire() {
	now := time.Now()
	var due []deadline
	d.mu.Lock()
	for len(d.h) > 0 && !d.h[0].at.After(now) {
		due = append(due, heap.Pop(&d.h).(deadline))
	}
	d.next = time.Time{}
	if len(d.h) > 0 {
		d.armLocked(d.h[0].at)
	}
	if cap(d.h) > 1024 && len(d.h) < cap(d.h)/4 {
		d.h = append(deadlineHeap(nil), d.h...) // give back a drained burst
	}
	d.mu.Unlock()
	for _, e := range due {
		e.c.due(e.at)
	}
}
