package store

import (
	"context"
	"time"

	"github.com/lib/pq"

	"github.com/saga-family/sagapush/internal/presence"
)

// The presence Backend (internal/presence) on Postgres: push_instances holds
// each instance's lease and push_presence its online users (migration
// 000007). Every expiry is decided by the database's clock.

// Register takes this instance's lease, or renews it. created is true when
// the row was missing (first start, or swept while this instance could not
// renew: its rows went with it).
func (p *Postgres) Register(ctx context.Context, lease time.Duration) (created bool, err error) {
	err = p.db.QueryRowContext(ctx, `
		INSERT INTO push_instances (id, expires_at) VALUES ($1, now() + $2 * interval '1 millisecond')
		ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at
		RETURNING xmax = 0`, p.instance, lease.Milliseconds()).Scan(&created)
	return created, err
}

// Write upserts set and deletes del, rows of this instance, and renews its
// lease, in one statement. presence.ErrLeaseLost when the lease is gone.
func (p *Postgres) Write(ctx context.Context, lease time.Duration, set []presence.Row, del []presence.Key) error {
	var sp, su, sn []string
	var sc []int64
	for _, r := range set {
		sp, su, sn, sc = append(sp, r.Project), append(su, r.User), append(sn, r.Name), append(sc, int64(r.Conns))
	}
	var dp, du []string
	for _, k := range del {
		dp, du = append(dp, k.Project), append(du, k.User)
	}
	// The lease is renewed first and the rows are written only when it is
	// still there: a swept instance must not write rows nobody would sweep.
	var renewed bool
	err := p.db.QueryRowContext(ctx, `
		WITH lease AS (
			UPDATE push_instances SET expires_at = now() + $2 * interval '1 millisecond'
			WHERE id = $1 RETURNING id
		), up AS (
			INSERT INTO push_presence (project_id, user_id, instance_id, user_name, connections)
			SELECT s.p, s.u, lease.id, s.n, s.c
			FROM unnest($3::text[], $4::text[], $5::text[], $6::int[]) AS s(p, u, n, c), lease
			ON CONFLICT (project_id, user_id, instance_id) DO UPDATE SET connections = EXCLUDED.connections
			RETURNING 1
		), gone AS (
			DELETE FROM push_presence d
			USING unnest($7::text[], $8::text[]) AS k(p, u), lease
			WHERE d.instance_id = lease.id AND d.project_id = k.p AND d.user_id = k.u
			RETURNING 1
		)
		SELECT EXISTS (SELECT 1 FROM lease)`,
		p.instance, lease.Milliseconds(),
		pq.Array(sp), pq.Array(su), pq.Array(sn), pq.Array(sc),
		pq.Array(dp), pq.Array(du)).Scan(&renewed)
	if err != nil {
		return err
	}
	if !renewed {
		return presence.ErrLeaseLost
	}
	return nil
}

// Remote returns the rows of the projects held by other instances whose
// lease has not expired.
func (p *Postgres) Remote(ctx context.Context, projects []string) ([]presence.Row, error) {
	rows, err := p.db.QueryContext(ctx, `
		SELECT pr.project_id, pr.user_id, pr.user_name, pr.connections
		FROM push_presence pr JOIN push_instances i ON i.id = pr.instance_id
		WHERE pr.project_id = ANY($1) AND pr.instance_id <> $2 AND i.expires_at > now()`,
		pq.Array(projects), p.instance)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []presence.Row
	for rows.Next() {
		var r presence.Row
		if err := rows.Scan(&r.Project, &r.User, &r.Name, &r.Conns); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Sweep deletes the expired leases; their rows go by cascade, and the
// trigger tells every instance which projects changed.
func (p *Postgres) Sweep(ctx context.Context) error {
	_, err := p.db.ExecContext(ctx, `DELETE FROM push_instances WHERE expires_at <= now()`)
	return err
}

// Goodbye makes this instance's lease end after d: its users stay online
// that long, then go offline everywhere unless they came back elsewhere.
func (p *Postgres) Goodbye(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		_, err := p.db.ExecContext(ctx, `DELETE FROM push_instances WHERE id = $1`, p.instance)
		return err
	}
	_, err := p.db.ExecContext(ctx, `UPDATE push_instances SET expires_at = now() + $2 * interval '1 millisecond' WHERE id = $1`,
		p.instance, d.Milliseconds())
	return err
}

// PresenceSink is what a Sink may also be to hear presence notifications
// (internal/presence.Tracker is one).
type PresenceSink interface {
	Changed(projectIDs ...string)
	ChangedAll()
}

var _ presence.Backend = (*Postgres)(nil)

// requestPresence queues a project whose presence rows changed.
func (p *Postgres) requestPresence(projectID string) {
	p.q.mu.Lock()
	if len(p.q.presence) < maxOffers {
		p.q.presence[projectID] = struct{}{}
	} else {
		p.q.presenceAll = true
	}
	p.q.mu.Unlock()
	signal(p.q.presenceSig)
}

// requestPresenceAll asks for every project's presence to be read again:
// notifications may have been lost.
func (p *Postgres) requestPresenceAll() {
	p.q.mu.Lock()
	p.q.presenceAll = true
	p.q.mu.Unlock()
	signal(p.q.presenceSig)
}

// presenceLoop hands presence notifications to the sink, coalesced.
func (p *Postgres) presenceLoop(run context.Context, sink PresenceSink) {
	defer p.wg.Done()
	for {
		select {
		case <-run.Done():
			return
		case <-p.q.presenceSig:
		}
		p.q.mu.Lock()
		all, set := p.q.presenceAll, p.q.presence
		p.q.presenceAll = false
		p.q.presence = make(map[string]struct{})
		p.q.mu.Unlock()
		if all {
			sink.ChangedAll()
			continue
		}
		ids := make([]string, 0, len(set))
		for id := range set {
			ids = append(ids, id)
		}
		sink.Changed(ids...)
	}
}
