package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/protocol"
)

// notifyChannel is the one LISTEN/NOTIFY channel of the service. Payloads:
//
//	e:<project>            the project has new events (push_emit)
//	r:<project>:<user>     the user may have lost access to the project
//	x:<json>               an ephemeral message (hub.Ephemeral as JSON)
//	y:<id>                 an ephemeral message stored in push_ephemeral
//	p:<instance>:<n>       an instance's self-check ping
//	d:<user>               the user's row was deleted
//	o:<project>            the project's presence rows changed
const notifyChannel = "saga_push"

const (
	// ephemeralInline is the largest NOTIFY payload sent as is; Postgres
	// refuses payloads of 8000 bytes and more.
	ephemeralInline = 7000
	// ephemeralTTL is how long a stored ephemeral message is kept: every
	// instance reads it within moments of the notification.
	ephemeralTTL = time.Minute
	// maxProjectID bounds project ids taken by Publish, so that the
	// notification ('e:' || id) always fits.
	maxProjectID = 255

	listenerAppName = "sagapush-listener"
	poolAppName     = "sagapush"
)

// PostgresOptions configure OpenPostgres. Zero values take the defaults.
type PostgresOptions struct {
	// Retention is how long events are kept for resume (default 7 days).
	Retention time.Duration
	// PruneInterval is how often old events are deleted (default 1h;
	// negative: never, for tests and for a database pruned by other means).
	PruneInterval time.Duration
	// HealthInterval is how often the listener checks itself with a ping
	// notification (default 5s). A ping that has not come back within
	// three intervals (at least 1s) marks the listener stuck and replaces it.
	HealthInterval time.Duration
	// MaxOpenConns bounds the query pool (default 16); the listener has a
	// connection of its own.
	MaxOpenConns int
	// UserCheckInterval is how often the connected users are checked to
	// still have a users row (default 30s), besides after every listener
	// reconnect: what catches a deletion whose notification was missed.
	UserCheckInterval time.Duration
	Logger            *slog.Logger
}

func (o *PostgresOptions) defaults() {
	if o.Retention <= 0 {
		o.Retention = 7 * 24 * time.Hour
	}
	if o.PruneInterval == 0 {
		o.PruneInterval = time.Hour
	}
	if o.HealthInterval <= 0 {
		o.HealthInterval = 5 * time.Second
	}
	if o.MaxOpenConns <= 0 {
		o.MaxOpenConns = 16
	}
	if o.UserCheckInterval <= 0 {
		o.UserCheckInterval = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Postgres is the database mode's store. Triggers (and Publish, through the
// same push_emit function) store events with a per-project seq; one LISTEN
// connection per instance hears the doorbells, revocations and ephemeral
// messages and hands them to the Sink.
type Postgres struct {
	db        *sqlx.DB
	opts      PostgresOptions
	log       *slog.Logger
	instance  string // names this instance's self-check pings
	listenDSN string

	ctx    context.Context // ends with Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	started bool
	closed  bool

	// dropNotify makes the listener deaf (tests: a stuck listener).
	dropNotify atomic.Bool

	lastEphemeralPrune atomic.Int64 // unix nanos
	lastTicketPrune    atomic.Int64 // unix nanos

	lst listenerState
	q   queues
}

// OpenPostgres connects to the database (which must be migrated, see
// Migrate) and starts pruning old events. Call Start to receive
// notifications.
func OpenPostgres(ctx context.Context, databaseURL string, opts PostgresOptions) (*Postgres, error) {
	opts.defaults()
	poolDSN, err := withConnParams(databaseURL, false, poolAppName)
	if err != nil {
		return nil, err
	}
	listenDSN, err := withConnParams(databaseURL, true, listenerAppName)
	if err != nil {
		return nil, err
	}
	db, err := sqlx.Open("postgres", poolDSN)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(opts.MaxOpenConns)
	db.SetMaxIdleConns(opts.MaxOpenConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	p := &Postgres{
		db:        db,
		opts:      opts,
		log:       opts.Logger.With("component", "store"),
		instance:  uuid.NewString(),
		listenDSN: listenDSN,
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.q.init()
	if opts.PruneInterval > 0 {
		p.wg.Add(1)
		go p.pruneLoop()
	}
	return p, nil
}

// withConnParams sets application_name (always when force, else only when
// the URL has none) and a connect timeout when the URL has none, in either
// URL or key=value form. The listener's name is forced so operators (and
// tests) can find its backend in pg_stat_activity.
func withConnParams(dsn string, force bool, appName string) (string, error) {
	cfg, err := pq.NewConfig(dsn)
	if err != nil {
		return "", fmt.Errorf("postgres: bad database URL: %w", err)
	}
	set := map[string]string{}
	if force || cfg.ApplicationName == "" {
		set["application_name"] = appName
	}
	if cfg.ConnectTimeout == 0 {
		// Without it a dial to an unreachable host can hang for minutes,
		// and pq's Listener holds its lock (and so Close) meanwhile.
		set["connect_timeout"] = "10"
	}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("postgres: bad database URL: %w", err)
		}
		q := u.Query()
		for k, v := range set {
			q.Set(k, v)
		}
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	// key=value form: a later key overrides an earlier one.
	var b strings.Builder
	b.WriteString(dsn)
	for k, v := range set {
		fmt.Fprintf(&b, " %s='%s'", k, strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v))
	}
	return b.String(), nil
}

func (p *Postgres) Mode() string { return "postgres" }

// Head returns the project's latest seq, 0 when it has no event yet.
func (p *Postgres) Head(ctx context.Context, projectID string) (int64, error) {
	var seq int64
	err := p.db.GetContext(ctx, &seq, `SELECT seq FROM push_project_seq WHERE project_id = $1`, projectID)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return seq, err
}

// eventRow is one row of After's query: the counter's pruned_through joined
// with at most limit events (none when the project has no event after).
type eventRow struct {
	PrunedThrough int64          `db:"pruned_through"`
	Seq           sql.NullInt64  `db:"seq"`
	Name          sql.NullString `db:"name"`
	Data          []byte         `db:"data"` // []byte, not json.RawMessage: it takes NULL
	CreatedAt     sql.NullTime   `db:"created_at"`
}

// After returns the project's events with seq > after, in order. The
// counter and the events are read in one statement, so one snapshot: a
// concurrent prune cannot slip between reading pruned_through and the rows.
func (p *Postgres) After(ctx context.Context, projectID string, after int64, limit int) ([]hub.Event, bool, error) {
	var lim any // NULL: no limit
	if limit > 0 {
		lim = limit
	}
	var rows []eventRow
	err := p.db.SelectContext(ctx, &rows, `
		SELECT c.pruned_through, e.seq, e.name, e.data, e.created_at
		FROM push_project_seq c
		LEFT JOIN LATERAL (
			SELECT seq, name, data, created_at
			FROM push_events
			WHERE project_id = c.project_id AND seq > $2
			ORDER BY seq
			LIMIT $3
		) e ON true
		WHERE c.project_id = $1
		ORDER BY e.seq`, projectID, after, lim)
	if err != nil {
		return nil, false, err
	}
	if len(rows) == 0 {
		return nil, true, nil // no event ever: nothing is missing
	}
	if after < rows[0].PrunedThrough {
		return nil, false, nil
	}
	evs := make([]hub.Event, 0, len(rows))
	for _, r := range rows {
		if !r.Seq.Valid {
			continue // the LEFT JOIN's empty side: no event after
		}
		evs = append(evs, hub.Event{
			ProjectID: projectID,
			Seq:       r.Seq.Int64,
			Name:      r.Name.String,
			Time:      r.CreatedAt.Time,
			Data:      json.RawMessage(r.Data),
		})
	}
	return evs, true, nil
}

// Publish stores a domain event through push_emit, exactly as a trigger
// does; its doorbell reaches every instance, this one included.
func (p *Postgres) Publish(ctx context.Context, projectID, name string, data json.RawMessage) (int64, error) {
	if !protocol.DomainEvents[name] {
		return 0, fmt.Errorf("%w: %q", ErrUnknownEvent, name)
	}
	if projectID == "" || len(projectID) > maxProjectID {
		return 0, fmt.Errorf("publish: project id must have 1 to %d bytes", maxProjectID)
	}
	var arg any // NULL: push_emit stores {}
	if len(data) > 0 {
		if !json.Valid(data) {
			return 0, errors.New("publish: data is not valid JSON")
		}
		arg = string(data)
	}
	var seq int64
	if err := p.db.GetContext(ctx, &seq, `SELECT push_emit($1, $2, $3::jsonb)`, projectID, name, arg); err != nil {
		return 0, err
	}
	return seq, nil
}

// Roles decides access to several projects in one query, as Role does for
// one (hub.RolesAccess): an SSE request may list up to 200.
func (p *Postgres) Roles(ctx context.Context, u *hub.User, projectIDs []string) (map[string]string, error) {
	var rows []struct {
		Project string `db:"project_id"`
		Role    string `db:"role"`
	}
	err := p.db.SelectContext(ctx, &rows, `
		SELECT DISTINCT ON (project_id) project_id, role FROM (
			SELECT project_id, role, 1 AS rank FROM project_roles WHERE project_id = ANY($1) AND user_id = $2
			UNION ALL
			SELECT id, 'facilitator', 2 FROM projects WHERE id = ANY($1) AND facilitator_id = $2
			UNION ALL
			SELECT id, 'storyteller', 3 FROM projects WHERE id = ANY($1) AND storyteller_id = $2
		) r
		ORDER BY project_id, rank, role`, pq.Array(projectIDs), u.ID)
	if err != nil {
		return nil, err
	}
	roles := make(map[string]string, len(rows))
	for _, r := range rows {
		roles[r.Project] = r.Role
	}
	return roles, nil
}

// Role decides access per docs/protocol.md section 9: a project_roles row gives its
// role; else being the project's facilitator or storyteller does.
func (p *Postgres) Role(ctx context.Context, u *hub.User, projectID string) (string, error) {
	var roles []string
	err := p.db.SelectContext(ctx, &roles, `
		SELECT role FROM (
			SELECT role, 1 AS rank FROM project_roles WHERE project_id = $1 AND user_id = $2
			UNION ALL
			SELECT 'facilitator', 2 FROM projects WHERE id = $1 AND facilitator_id = $2
			UNION ALL
			SELECT 'storyteller', 3 FROM projects WHERE id = $1 AND storyteller_id = $2
		) r
		ORDER BY rank, role
		LIMIT 1`, projectID, u.ID)
	if err != nil {
		return "", err
	}
	if len(roles) == 0 {
		return "", fmt.Errorf("%w: %s", hub.ErrAccessDenied, projectID)
	}
	return roles[0], nil
}

// LookupUser tells whether the user id has a row in users, and its name.
func (p *Postgres) LookupUser(ctx context.Context, userID string) (name string, ok bool, err error) {
	err = p.db.GetContext(ctx, &name, `SELECT name FROM users WHERE id = $1`, userID)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	return name, err == nil, err
}

// PublishEphemeral sends the message to every instance, this one included.
// Small messages ride in the NOTIFY payload; larger ones are stored for a
// minute and the notification carries their id.
func (p *Postgres) PublishEphemeral(ctx context.Context, e hub.Ephemeral) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if len(b)+2 <= ephemeralInline {
		_, err = p.db.ExecContext(ctx, `SELECT pg_notify($1, $2)`, notifyChannel, "x:"+string(b))
		return err
	}
	// One statement, one transaction: the row is visible before the
	// notification is delivered.
	_, err = p.db.ExecContext(ctx, `
		WITH ins AS (INSERT INTO push_ephemeral (payload) VALUES ($2::jsonb) RETURNING id)
		SELECT pg_notify($1, 'y:' || id) FROM ins`, notifyChannel, string(b))
	if err != nil {
		return err
	}
	p.sometimes(ctx, &p.lastEphemeralPrune, ephemeralTTL, "ephemeral messages", p.pruneEphemeral)
	return nil
}

// sometimes runs prune at most once per every on this instance (last holds
// the last run's unix nanos): rows expire by the table, not by the insert,
// so pruning on every insert would only add round trips.
func (p *Postgres) sometimes(ctx context.Context, last *atomic.Int64, every time.Duration, what string, prune func(context.Context) error) {
	now := time.Now().UnixNano()
	l := last.Load()
	if now-l < int64(every) || !last.CompareAndSwap(l, now) {
		return
	}
	if err := prune(ctx); err != nil {
		p.log.Warn("pruning "+what+" failed", "err", err)
	}
}

func (p *Postgres) pruneEphemeral(ctx context.Context) error {
	_, err := p.db.ExecContext(ctx, `DELETE FROM push_ephemeral WHERE created_at < now() - $1::interval`,
		fmt.Sprintf("%d milliseconds", ephemeralTTL.Milliseconds()))
	return err
}

// Prune deletes events older than the retention, project by project:
// first it raises the project's pruned_through (so After reports the loss
// from then on), then it deletes along the primary key. Each statement
// stands alone, so the pruner holds at most one counter row lock at a time
// and cannot deadlock with a transaction writing to several projects. A run
// cut short is finished by the next: a project keeps showing up while it
// holds old events. It returns how many events it deleted. Expired
// ephemeral messages and tickets go too.
func (p *Postgres) Prune(ctx context.Context) (int64, error) {
	cutoff := time.Now().Add(-p.opts.Retention)
	var old []struct {
		ProjectID string `db:"project_id"`
		MaxSeq    int64  `db:"max_seq"`
	}
	err := p.db.SelectContext(ctx, &old, `
		SELECT project_id, max(seq) AS max_seq
		FROM push_events
		WHERE created_at < $1
		GROUP BY project_id`, cutoff)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, o := range old {
		if _, err := p.db.ExecContext(ctx, `
			UPDATE push_project_seq SET pruned_through = $2
			WHERE project_id = $1 AND pruned_through < $2`, o.ProjectID, o.MaxSeq); err != nil {
			return total, err
		}
		res, err := p.db.ExecContext(ctx, `DELETE FROM push_events WHERE project_id = $1 AND seq <= $2`,
			o.ProjectID, o.MaxSeq)
		if err != nil {
			return total, err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, err
		}
		total += n
	}
	if err := p.pruneEphemeral(ctx); err != nil {
		return total, err
	}
	if err := p.pruneTickets(ctx); err != nil {
		return total, err
	}
	return total, nil
}

func (p *Postgres) pruneLoop() {
	defer p.wg.Done()
	t := time.NewTicker(p.opts.PruneInterval)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(p.ctx, 10*time.Minute)
		n, err := p.Prune(ctx)
		cancel()
		switch {
		case err != nil && p.ctx.Err() == nil:
			p.log.Warn("pruning events failed", "err", err)
		case n > 0:
			p.log.Info("pruned old events", "deleted", n, "retention", p.opts.Retention)
		}
	}
}

// Healthy returns nil when the database answers and the listener is
// connected and hears its own pings.
func (p *Postgres) Healthy(ctx context.Context) error {
	err := p.db.PingContext(ctx)
	// A ping on a pooled connection the server dropped (pg_terminate_backend,
	// a pooler's restart) fails and discards it; the pool may hold one per
	// MaxOpenConns. A database that is really down fails to dial instead.
	for i := 0; i < p.opts.MaxOpenConns && errors.Is(err, driver.ErrBadConn); i++ {
		err = p.db.PingContext(ctx)
	}
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	return p.listenerHealth()
}

// Close stops the listener and the background work and closes the pool.
func (p *Postgres) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	// Bounded, so a shutdown never hangs on a wedged connection (a dial
	// holds pq's listener lock for up to connect_timeout).
	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		err = errors.New("store: background work did not stop within 30s")
		p.log.Error(err.Error())
	}
	return errors.Join(err, p.db.Close())
}
