package store

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"
)

// maxMemTickets bounds the tickets an embedded server keeps: live ones and
// spent ones not yet expired (their place in the expiry queue). Beyond it
// minting fails until some expire, rather than memory growing with every
// POST /api/tickets.
const maxMemTickets = 100_000

// ErrTooManyTickets refuses a ticket beyond the embedded store's bound.
var ErrTooManyTickets = errors.New("too many tickets outstanding")

// memTickets is the embedded mode's ticket table: a map by hash and a queue
// in minting order for pruning. Every ticket expires at most its TTL after
// it was minted, so popping expired tickets off the queue's front frees
// each one at most a TTL late, at O(1) per ticket.
type memTickets struct {
	mu    sync.Mutex
	byKey map[string]memTicket // key: string(hash)
	queue []memTicketRef
	limit int // maxMemTickets when 0
}

type memTicket struct {
	claims  []byte
	expires time.Time
}

type memTicketRef struct {
	key     string
	expires time.Time
}

// PutTicket implements session.TicketStore with this process's clock.
func (m *Memory) PutTicket(_ context.Context, hash, claims []byte, ttl time.Duration, notAfter time.Time) (time.Time, error) {
	now := time.Now()
	exp := now.Add(ttl)
	if !notAfter.IsZero() && notAfter.Before(exp) {
		exp = notAfter
	}
	t := &m.tickets
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pruneLocked(now)
	limit := t.limit
	if limit <= 0 {
		limit = maxMemTickets
	}
	if len(t.queue) >= limit {
		return time.Time{}, ErrTooManyTickets
	}
	if t.byKey == nil {
		t.byKey = make(map[string]memTicket)
	}
	key := string(hash)
	t.byKey[key] = memTicket{claims: slices.Clone(claims), expires: exp}
	t.queue = append(t.queue, memTicketRef{key: key, expires: exp})
	return exp, nil
}

// TakeTicket implements session.TicketStore: under the lock, the first
// taker deletes the ticket and every later one finds nothing.
func (m *Memory) TakeTicket(_ context.Context, hash []byte) ([]byte, bool, error) {
	t := &m.tickets
	t.mu.Lock()
	defer t.mu.Unlock()
	tk, ok := t.byKey[string(hash)]
	if !ok {
		return nil, false, nil
	}
	delete(t.byKey, string(hash))
	if !time.Now().Before(tk.expires) {
		return nil, false, nil
	}
	return tk.claims, true, nil
}

// pruneLocked forgets the tickets at the queue's front that have expired.
func (t *memTickets) pruneLocked(now time.Time) {
	n := 0
	for n < len(t.queue) && !now.Before(t.queue[n].expires) {
		delete(t.byKey, t.queue[n].key) // a no-op for a ticket already taken
		t.queue[n] = memTicketRef{}     // let the key go before the array does
		n++
	}
	t.queue = t.queue[n:]
}
