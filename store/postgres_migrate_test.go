package store_test

import (
	"context"
	"io/fs"
	"strings"
	"testing"

	"github.com/golang-migrate/migrate/v4/database"

	"github.com/saga-family/sagapush/migrations"
	"github.com/saga-family/sagapush/store"
	"github.com/saga-family/sagapush/store/pgtest"
)

// latestVersion is the highest migration version embedded.
func latestVersion(t *testing.T) int {
	t.Helper()
	files, err := fs.Glob(migrations.FS, "*.up.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("no migrations: %v", err)
	}
	v := 0
	for _, f := range files {
		var n int
		for _, c := range strings.SplitN(f, "_", 2)[0] {
			n = n*10 + int(c-'0')
		}
		v = max(v, n)
	}
	return v
}

func checkVersion(t *testing.T, dbURL string) {
	t.Helper()
	db := openDB(t, dbURL)
	var rows []struct {
		Version int  `db:"version"`
		Dirty   bool `db:"dirty"`
	}
	if err := db.SelectContext(ctxT(t), &rows, `SELECT version, dirty FROM schema_migrations`); err != nil {
		t.Fatal(err)
	}
	if want := latestVersion(t); len(rows) != 1 || rows[0].Version != want || rows[0].Dirty {
		t.Fatalf("schema_migrations = %+v, want version %d, clean", rows, want)
	}
	var triggers int
	if err := db.GetContext(ctxT(t), &triggers, `SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'push\_%'`); err != nil {
		t.Fatal(err)
	}
	if triggers != 12 { // 10 domain tables, users deleted, presence rows
		t.Fatalf("%d push_ triggers, want 12", triggers)
	}
}

func TestMigrateTwiceAndConcurrently(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)

	// Twice in a row.
	dbURL := pgtest.New(t)
	if err := store.Migrate(ctx, dbURL); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	checkVersion(t, dbURL)

	// Two instances at once on an empty database.
	empty := pgtest.NewEmpty(t)
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- store.Migrate(ctx, empty) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent Migrate: %v", err)
		}
	}
	checkVersion(t, empty)

	// A version left dirty by a failed run is retried (each migration is
	// one transaction, so it was rolled back whole).
	db := openDB(t, empty)
	mustExec(t, db, `UPDATE schema_migrations SET dirty = true`)
	if err := store.Migrate(ctx, empty); err != nil {
		t.Fatalf("Migrate of a dirty database: %v", err)
	}
	checkVersion(t, empty)
}

// TestMigrateWaitsForTheAdvisoryLock shows that Migrate serialises on
// golang-migrate's advisory lock: while another session holds it, Migrate
// waits for it (visible in pg_locks) and finishes once it is released.
func TestMigrateWaitsForTheAdvisoryLock(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	dbURL := pgtest.NewEmpty(t)
	db := openDB(t, dbURL)

	var dbName string
	if err := db.GetContext(ctx, &dbName, `SELECT current_database()`); err != nil {
		t.Fatal(err)
	}
	lockID, err := database.GenerateAdvisoryLockId(dbName, "public", "schema_migrations")
	if err != nil {
		t.Fatal(err)
	}
	holder, err := db.Connx(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if _, err := holder.ExecContext(ctx, `SELECT pg_advisory_lock($1::bigint)`, lockID); err != nil {
		t.Fatal(err)
	}

	done := make(chan error, 1)
	go func() { done <- store.Migrate(context.Background(), dbURL) }()

	eventually(t, "Migrate waiting on the advisory lock", func() error {
		var waiting int
		err := db.GetContext(ctx, &waiting, `SELECT count(*) FROM pg_locks l
			JOIN pg_stat_activity a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name = 'sagapush-migrate'`)
		if err == nil && waiting == 0 {
			err = errNotYet
		}
		return err
	})
	select {
	case err := <-done:
		t.Fatalf("Migrate finished while the lock was held: %v", err)
	default:
	}
	if _, err := holder.ExecContext(ctx, `SELECT pg_advisory_unlock($1::bigint)`, lockID); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("Migrate did not finish after the lock was released")
	}
	checkVersion(t, dbURL)
}

type notYet struct{}

func (notYet) Error() string { return "not yet" }

var errNotYet error = notYet{}
