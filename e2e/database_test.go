package e2e

// A test's own Postgres database (store/pgtest: a fresh, migrated database
// per test), the servers started on it, and what tests do to it: write as
// the Saga backend does, kill the servers' connections, refuse new ones.

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/lib/pq" // also the "postgres" driver of database/sql

	"github.com/saga-family/sagapush/store/pgtest"
)

// pgEnv is a test's own database: its URL, a pool for the test's writes and
// its name.
type pgEnv struct {
	url    string
	name   string
	db     *sql.DB
	killed map[int]bool // backend pids terminated (used by the test's goroutine only)
}

// newPGEnv creates the test's database, migrated, and a pool on it; both go
// when the test ends.
func newPGEnv(t *testing.T) *pgEnv {
	t.Helper()
	u := pgtest.New(t)
	db, err := sql.Open("postgres", u)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	t.Cleanup(func() { db.Close() })
	e := &pgEnv{url: u, db: db, killed: map[int]bool{}}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := db.QueryRowContext(ctx, `SELECT current_database()`).Scan(&e.name); err != nil {
		t.Fatal(err)
	}
	return e
}

// start runs a server on the database.
func (e *pgEnv) start(t *testing.T, env ...string) *testServer {
	t.Helper()
	return startServer(t, append([]string{"DATABASE_URL=" + e.url}, env...)...)
}

func (e *pgEnv) exec(t testing.TB, q string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := e.db.ExecContext(ctx, q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// insertStory inserts one story (autocommit) into the project.
func (e *pgEnv) insertStory(t testing.TB, id, projectID string) {
	t.Helper()
	e.exec(t, `INSERT INTO stories (id, project_id, title) VALUES ($1, $2, $3)`, id, projectID, "Story "+id)
}

// terminate kills every connection of the servers on this database (the
// pool's, application_name sagapush, and the listener's, sagapush-listener)
// and returns how many it killed, and how many of them were listeners.
func (e *pgEnv) terminate(t testing.TB) (killed, listeners int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	rows, err := e.db.QueryContext(ctx, `
		SELECT pid, application_name = 'sagapush-listener'
		FROM (
			SELECT pid, application_name, pg_terminate_backend(pid) AS ok
			FROM pg_stat_activity
			WHERE datname = current_database() AND application_name LIKE 'sagapush%'
		) k
		WHERE ok`)
	if err != nil {
		t.Fatalf("pg_terminate_backend: %v", err)
	}
	defer rows.Close()
	var pids []int64
	for rows.Next() {
		var pid int
		var listener bool
		if err := rows.Scan(&pid, &listener); err != nil {
			t.Fatal(err)
		}
		killed++
		pids = append(pids, int64(pid))
		if listener {
			listeners++
		}
		e.killed[pid] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("pg_terminate_backend: %v", err)
	}
	// pg_terminate_backend only signals: wait until they are gone.
	eventually(t, waitTimeout, "the terminated backends gone", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		var left int
		err := e.db.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)`, pq.Array(pids)).Scan(&left)
		if err != nil {
			t.Fatalf("pg_stat_activity: %v", err)
		}
		return left == 0
	})
	return killed, listeners
}

// listening returns how many server backends on this database have issued
// LISTEN, not counting those terminate killed (they may linger a moment).
func (e *pgEnv) listening(t testing.TB) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	rows, err := e.db.QueryContext(ctx, `
		SELECT pid FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = 'sagapush-listener' AND query ILIKE 'LISTEN%'`)
	if err != nil {
		t.Fatalf("pg_stat_activity: %v", err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			t.Fatal(err)
		}
		if !e.killed[pid] {
			n++
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("pg_stat_activity: %v", err)
	}
	return n
}

// waitListening waits until n live server listeners are LISTENing.
func (e *pgEnv) waitListening(t testing.TB, n int) {
	t.Helper()
	eventually(t, 15*time.Second, fmt.Sprintf("%d server listener(s) LISTENing", n), func() bool { return e.listening(t) >= n })
}

// setConnectable opens or closes the database to new connections (from the
// admin database: a session cannot lock its own database). Connections
// already open, the test's pinned ones, keep working.
func (e *pgEnv) setConnectable(t testing.TB, allow bool) {
	t.Helper()
	admin, err := sql.Open("postgres", pgtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	// The name is sagapush_test_[0-9a-f]+ (pgtest): safe to splice.
	if _, err := admin.ExecContext(ctx, fmt.Sprintf(`ALTER DATABASE %s WITH ALLOW_CONNECTIONS %t`, e.name, allow)); err != nil {
		t.Fatalf("ALTER DATABASE %s ALLOW_CONNECTIONS %t: %v", e.name, allow, err)
	}
}

// pin returns a connection of the test's own that stays open (for writes
// while the database refuses new connections).
func (e *pgEnv) pin(t testing.TB) *sql.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, err := e.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
