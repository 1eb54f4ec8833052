package presence

import (
	"context"
	"errors"
	"time"
)

// key is a (project, user) of this instance.
type key = Key

// writes is what the writer owes the Backend. Under Tracker.mu.
type writes struct {
	dirty  map[key]struct{} // rows whose wanted state may differ from db
	urgent bool             // a row comes or goes: write now
	// countAt is when a count-only change was first marked since the last
	// write: it is written within countDelay of it.
	countAt time.Time
	sig     chan struct{}
}

func (w *writes) init() {
	w.dirty = make(map[key]struct{})
	w.sig = make(chan struct{}, 1)
}

// mark notes that the row of k may have changed; urgent when it comes or
// goes (others must hear at once), not when only its count moved (written
// within countDelay, and not at all when it moves back meanwhile).
func (w *writes) mark(k key, urgent bool) {
	w.dirty[k] = struct{}{}
	switch {
	case urgent:
		w.urgent = true
		signal(w.sig)
	case w.countAt.IsZero():
		w.countAt = time.Now()
		signal(w.sig)
	}
}

// countDelay is how long a count-only change may wait to be written: the
// API's counts of other instances lag by at most about this.
const countDelay = time.Second

// writeLoop writes this instance's rows: at once when a user comes or goes,
// within countDelay when only counts moved, and an empty write (a lease
// renewal) when nothing was written for renewEvery. Every write renews the
// lease.
func (t *Tracker) writeLoop() {
	defer t.wg.Done()
	b := t.opts.Backend
	registered := false
	var lastWrite time.Time
	timer := time.NewTimer(0)
	defer timer.Stop()
	var backoff time.Duration
	var retryAt time.Time // after a failure, nothing is tried before it
	retry := func(what string, err error) {
		backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
		retryAt = time.Now().Add(backoff)
		t.log.Warn("presence: "+what+" failed; retrying", "in", backoff, "err", err)
		timer.Reset(backoff)
	}
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-t.w.sig:
		case <-timer.C:
		}
		if wait := time.Until(retryAt); wait > 0 {
			timer.Reset(wait)
			continue
		}
		if !registered {
			ctx, cancel := context.WithTimeout(t.ctx, 10*time.Second)
			created, err := b.Register(ctx, t.lease())
			cancel()
			t.metrics.writes.Inc()
			if t.ctx.Err() != nil {
				return
			}
			if err != nil {
				retry("taking the lease", err)
				continue
			}
			registered, lastWrite, backoff = true, time.Now(), 0
			if created {
				t.resync()
			}
		}
		t.mu.Lock()
		urgent, countAt := t.w.urgent, t.w.countAt
		t.mu.Unlock()
		now := time.Now()
		next := lastWrite.Add(t.renewEvery())
		if c := countAt.Add(countDelay); !countAt.IsZero() && c.Before(next) {
			next = c
		}
		if !urgent && now.Before(next) {
			timer.Reset(next.Sub(now))
			continue
		}
		set, del, taken := t.takeWrites()
		if len(set)+len(del) == 0 && now.Before(lastWrite.Add(t.renewEvery())) {
			// Counts that moved back: nothing to write yet.
			timer.Reset(lastWrite.Add(t.renewEvery()).Sub(now))
			continue
		}
		ctx, cancel := context.WithTimeout(t.ctx, 10*time.Second)
		err := b.Write(ctx, t.lease(), set, del)
		cancel()
		t.metrics.writes.Inc()
		if t.ctx.Err() != nil {
			return
		}
		if err != nil {
			t.giveBack(taken)
			if errors.Is(err, ErrLeaseLost) {
				registered = false
			}
			retry("writing", err)
			continue
		}
		lastWrite, backoff = time.Now(), 0
		t.metrics.rows.Add(float64(len(set) + len(del)))
		t.wrote(set, del)
		timer.Reset(t.renewEvery())
	}
}

// takeWrites takes the dirty rows whose wanted state differs from the
// Backend's (entry.db): rows to set, with their counts, and rows to delete.
func (t *Tracker) takeWrites() (set []Row, del []Key, taken []key) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k := range t.w.dirty {
		taken = append(taken, k)
		var e *entry
		if p := t.projects[k.Project]; p != nil {
			e = p.find(k.User)
		}
		switch {
		case e == nil:
		case e.local() && e.db != e.n:
			set = append(set, Row{Project: k.Project, User: k.User, Name: e.name, Conns: int(e.n)})
		case !e.local() && e.db >= 0:
			del = append(del, k)
		}
	}
	if len(t.w.dirty) > 1024 {
		t.w.dirty = make(map[key]struct{}) // a burst's buckets go
	} else {
		clear(t.w.dirty)
	}
	t.w.urgent, t.w.countAt = false, time.Time{}
	return set, del, taken
}

// giveBack marks rows of a failed write dirty again.
func (t *Tracker) giveBack(taken []key) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, k := range taken {
		t.w.dirty[k] = struct{}{}
	}
	t.w.urgent = true
}

// wrote records what the Backend now holds; an entry that held only its
// row goes.
func (t *Tracker) wrote(set []Row, del []Key) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range set {
		if p := t.projects[r.Project]; p != nil {
			if e := p.find(r.User); e != nil {
				e.db = int32(r.Conns)
			}
		}
	}
	for _, k := range del {
		if p := t.projects[k.Project]; p != nil {
			if e := p.find(k.User); e != nil {
				e.db = -1
				p.removeIdle(k.User)
				t.forget(p)
			}
		}
	}
}

// resync writes every local row again after a new lease: the old one's
// rows were swept with it.
func (t *Tracker) resync() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.projects {
		for i := len(p.users) - 1; i >= 0; i-- {
			e := &p.users[i]
			e.db = -1
			if e.local() {
				t.w.mark(key{p.id, e.user}, true)
			} else {
				p.removeIdle(e.user)
			}
		}
		t.forget(p)
	}
}

// sweepLoop ends the leases of instances that stopped renewing: their rows
// go, and every instance hears that those projects changed.
func (t *Tracker) sweepLoop() {
	defer t.wg.Done()
	tick := time.NewTicker(t.sweepEvery())
	defer tick.Stop()
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(t.ctx, 10*time.Second)
		if err := t.opts.Backend.Sweep(ctx); err != nil && t.ctx.Err() == nil {
			t.log.Debug("presence: sweep failed", "err", err)
		}
		cancel()
	}
}
