package client

import (
	"context"
	"sync"
)

// latestQueue hands a project's news to a channel without ever blocking the
// client: while nobody reads, it keeps the latest value of each project, in
// the order projects first came. It serves news that is a state, where only
// the latest counts (resyncs, presence changes).
type latestQueue[T any] struct {
	out    chan T
	wake   chan struct{}
	ctx    context.Context
	mu     sync.Mutex
	order  []string
	latest map[string]queued[T]
	serial uint64 // tells a value from a newer one of the same project
	done   chan struct{}
}

type queued[T any] struct {
	v      T
	serial uint64
}

func newLatestQueue[T any](ctx context.Context) *latestQueue[T] {
	q := &latestQueue[T]{out: make(chan T), wake: make(chan struct{}, 1), ctx: ctx, latest: map[string]queued[T]{}, done: make(chan struct{})}
	go q.pump()
	return q
}

func (q *latestQueue[T]) push(projectID string, v T) {
	q.mu.Lock()
	if _, ok := q.latest[projectID]; !ok {
		q.order = append(q.order, projectID)
	}
	q.serial++
	q.latest[projectID] = queued[T]{v, q.serial}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *latestQueue[T]) pump() {
	defer close(q.done)
	defer close(q.out)
	for {
		q.mu.Lock()
		var id string
		var e queued[T]
		ok := len(q.order) > 0
		if ok {
			id = q.order[0]
			e = q.latest[id]
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
		case q.out <- e.v:
			q.mu.Lock()
			// A newer value that came meanwhile stays, first in line.
			if cur, ok := q.latest[id]; ok && cur.serial == e.serial {
				delete(q.latest, id)
				q.order = q.order[1:]
			}
			q.mu.Unlock()
		case <-q.wake:
		case <-q.ctx.Done():
			return
		}
	}
}

// close waits for the pump to end (once the client's context is done) and
// the channel to be closed.
func (q *latestQueue[T]) close() { <-q.done }
