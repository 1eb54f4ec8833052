package presence

import (
	"context"
	"time"
)

// reads is what the reader owes the watched projects. Under Tracker.mu.
type reads struct {
	stale  map[string]struct{} // watched projects to read again
	ticket uint64              // numbers reads in the order they start
	sig    chan struct{}
}

func (r *reads) init() {
	r.stale = make(map[string]struct{})
	r.sig = make(chan struct{}, 1)
}

func (r *reads) nextTicket() uint64 {
	r.ticket++
	return r.ticket
}

// readBatch bounds the projects read in one query.
const readBatch = 500

// Changed is the Backend's word that the listed projects' rows changed on
// some instance (this one included): the watched ones are read again.
// Notifications may come late, twice or out of order: a read takes the
// database as it is, and a later read always wins.
func (t *Tracker) Changed(projectIDs ...string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range projectIDs {
		if p := t.projects[id]; p != nil && p.watched {
			t.r.stale[id] = struct{}{}
		}
	}
	signal(t.r.sig)
}

// ChangedAll is the Backend's word that notifications may have been lost
// (its listener reconnected): every watched project is read again, and only
// what really changed is announced.
func (t *Tracker) ChangedAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, p := range t.projects {
		if p.watched {
			t.r.stale[id] = struct{}{}
		}
	}
	signal(t.r.sig)
}

// readLoop reads the stale projects' rows of other instances, in batches,
// one query at a time.
func (t *Tracker) readLoop() {
	defer t.wg.Done()
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-t.r.sig:
		}
		for t.ctx.Err() == nil {
			t.mu.Lock()
			ids := make([]string, 0, min(len(t.r.stale), readBatch))
			for id := range t.r.stale {
				if len(ids) == readBatch {
					break
				}
				ids = append(ids, id)
				delete(t.r.stale, id)
			}
			ticket := t.r.nextTicket()
			t.mu.Unlock()
			if len(ids) == 0 {
				break
			}
			ctx, cancel := context.WithTimeout(t.ctx, 10*time.Second)
			rows, err := t.opts.Backend.Remote(ctx, ids)
			cancel()
			t.metrics.reads.Inc()
			if err != nil {
				if t.ctx.Err() != nil {
					return
				}
				t.log.Warn("presence: reading projects' users failed; retrying", "projects", len(ids), "err", err)
				t.mu.Lock()
				for _, id := range ids {
					t.r.stale[id] = struct{}{}
				}
				t.mu.Unlock()
				select {
				case <-time.After(time.Second):
				case <-t.ctx.Done():
					return
				}
				continue
			}
			byProject := make(map[string][]Row, len(ids))
			for _, r := range rows {
				byProject[r.Project] = append(byProject[r.Project], r)
			}
			t.mu.Lock()
			for _, id := range ids {
				t.applyLocked(id, ticket, byProject[id], true)
			}
			t.mu.Unlock()
		}
	}
}

// applyLocked takes a read of the project's rows on other instances,
// unless a read that started later was applied already. It announces what
// changed when announce is set; a room's first read, before any member,
// does not (its first join lists them). mu is held.
func (t *Tracker) applyLocked(projectID string, ticket uint64, rows []Row, announce bool) {
	p := t.projects[projectID]
	if p == nil || !p.watched || ticket <= p.loaded {
		return
	}
	p.loaded = ticket
	watched := p.watched
	p.watched = announce // updateLocked announces to watched projects only
	defer func() { p.watched = watched }()
	// Sum the rows per user into remote, marking who was seen.
	seen := make(map[string]int32, len(rows))
	for _, r := range rows {
		seen[r.User] += int32(r.Conns)
		if p.find(r.User) == nil {
			p.add(r.User, r.Name)
		}
	}
	var changed []string
	for i := range p.users {
		e := &p.users[i]
		c, ok := seen[e.user]
		if !ok {
			c = -1
		}
		if (e.remote >= 0) != (c >= 0) {
			changed = append(changed, e.user)
		}
		e.remote = c
	}
	for _, u := range changed {
		t.updateLocked(p, u)
	}
}
