package presence

import "time"

// graces holds the departures waiting out the grace, oldest first: with one
// grace for all they end in the order they began, so a queue and one timer
// serve every departing user. A user back within its grace leaves its entry
// behind, stale (its serial no longer matches). Under Tracker.mu.
type graces struct {
	queue  []departure
	serial uint64
	sig    chan struct{}
}

type departure struct {
	project, user string
	serial        uint64
	at            time.Time // when the grace ends
}

func (g *graces) init() { g.sig = make(chan struct{}, 1) }

// add queues a departure and returns its serial.
func (g *graces) add(project, user string, at time.Time) uint64 {
	g.serial++
	g.queue = append(g.queue, departure{project: project, user: user, serial: g.serial, at: at})
	if len(g.queue) == 1 {
		signal(g.sig)
	}
	return g.serial
}

// graceLoop ends the graces that are over: a user with no member back by
// then goes offline.
func (t *Tracker) graceLoop() {
	defer t.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		t.mu.Lock()
		now := time.Now()
		n := 0
		for n < len(t.g.queue) && !t.g.queue[n].at.After(now) {
			d := t.g.queue[n]
			if p := t.projects[d.project]; p != nil {
				if e := p.find(d.user); e != nil && e.n == 0 && e.departure == d.serial {
					t.departLocked(p, d.user)
				}
			}
			n++
		}
		rest := copy(t.g.queue, t.g.queue[n:])
		clear(t.g.queue[rest:])
		t.g.queue = t.g.queue[:rest]
		if rest == 0 && cap(t.g.queue) > 1024 {
			t.g.queue = nil // a burst's backing array goes once drained
		}
		wait := time.Hour
		if rest > 0 {
			wait = t.g.queue[0].at.Sub(now)
		}
		t.mu.Unlock()
		timer.Reset(wait)
		select {
		case <-t.ctx.Done():
			return
		case <-t.g.sig:
		case <-timer.C:
		}
	}
}
