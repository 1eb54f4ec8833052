package presence

import (
	"context"
	"errors"
	"time"
)

// Backend is the presence state the instances share (the store's Postgres).
// Each instance holds a lease, renewed while it lives and judged by the
// database's clock, and one row per (project, user) it counts online; a
// change of rows (not of counts) is announced to every instance, which
// calls Tracker.Changed.
type Backend interface {
	// Register takes this instance's lease (or renews it), to last lease.
	// created reports a new lease: rows written under an earlier one are
	// gone (swept while this instance could not renew).
	Register(ctx context.Context, lease time.Duration) (created bool, err error)
	// Write upserts set and deletes del, this instance's rows, and renews
	// its lease, in one round trip. ErrLeaseLost: the lease was swept.
	Write(ctx context.Context, lease time.Duration, set []Row, del []Key) error
	// Remote returns the rows of the listed projects held by other
	// instances whose lease has not expired.
	Remote(ctx context.Context, projects []string) ([]Row, error)
	// Sweep ends the leases that expired, with their rows.
	Sweep(ctx context.Context) error
	// Goodbye makes this instance's lease end after d (at once for 0).
	Goodbye(ctx context.Context, d time.Duration) error
}

// ErrLeaseLost is Write's error when the instance's lease is gone.
var ErrLeaseLost = errors.New("presence lease lost")

// Key names a row: a user online in a project (on one instance).
type Key struct{ Project, User string }

// Row is a user online in a project on one instance: Conns counts its
// joined connections there (0 during the grace).
type Row struct {
	Project, User, Name string
	Conns               int
}

// Timing derived from the TTL: a lease lasts half of it and is renewed every
// sixth, so two renewals may fail before it expires; leases are swept every
// tenth. A silent instance's users are then gone within about 0.6 TTL.
func (t *Tracker) lease() time.Duration { return t.opts.TTL / 2 }
func (t *Tracker) renewEvery() time.Duration {
	return max(t.opts.TTL/6, 50*time.Millisecond)
}
func (t *Tracker) sweepEvery() time.Duration {
	return max(t.opts.TTL/10, 50*time.Millisecond)
}
