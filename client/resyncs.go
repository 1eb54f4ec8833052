package client

import (
	"context"
	"sync"
)

// Resync tells that the events of a project after the last seq seen could not
// be replayed (joined_project with recovered:false). Reload the project's
// state from the API; the events that follow have a seq above Seq.
type Resync struct {
	ProjectID string
	Seq       int64
}

// Resyncs returns the channel of resync notifications. It never blocks the
// client: while nobody reads it, it keeps the latest notification of each
// project. It is closed by Close.
func (c *Client) Resyncs() <-chan Resync { return c.resyncs.out }

// resyncQueue hands resyncs to a channel without ever blocking the client:
// pending ones are kept, the latest per project, until read.
type resyncQueue struct {
	out    chan Resync
	wake   chan struct{}
	ctx    context.Context
	mu     sync.Mutex
	order  []string
	latest map[string]Resync
	done   chan struct{}
}

func newResyncQueue(ctx context.Context) *resyncQueue {
	q := &resyncQueue{out: make(chan Resync), wake: make(chan struct{}, 1), ctx: ctx, latest: map[string]Resync{}, done: make(chan struct{})}
	go q.pump()
	return q
}

func (q *resyncQueue) push(r Resync) {
	q.mu.Lock()
	if _, ok := q.latest[r.ProjectID]; !ok {
		q.order = append(q.order, r.ProjectID)
	}
	q.latest[r.ProjectID] = r
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *resyncQueue) pump() {
	defer close(q.done)
	defer close(q.out)
	for {
		q.mu.Lock()
		var r Resync
		ok := len(q.order) > 0
		if ok {
			r = q.latest[q.order[0]]
		}
		q.mu.Unlock()
		if !ok {
			select {
			case <-q.wake:
				continue
			case <-q.ctx.Done():
				return
			}
		}
		select {
		case q.out <- r:
			q.mu.Lock()
			if cur, ok := q.latest[r.ProjectID]; ok && cur == r {
				delete(q.latest, r.ProjectID)
				q.order = q.order[1:]
			}
			q.mu.Unlock()
		case <-q.wake:
		case <-q.ctx.Done():
			return
		}
	}
}

func (q *resyncQueue) close() { <-q.done }
