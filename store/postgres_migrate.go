package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database"
	pgmigrate "github.com/golang-migrate/migrate/v4/database/postgres"
	"github.com/golang-migrate/migrate/v4/source/iofs"

	"github.com/saga-family/sagapush/migrations"
)

// Migrate applies the pending migrations of package migrations. It is safe
// to run again and from several instances at once: golang-migrate holds a
// Postgres advisory lock (pg_advisory_lock on one session) while it reads
// the version and migrates, so a second instance waits, then finds nothing
// to do. Each migration file runs as one implicit transaction.
//
// ctx bounds connecting; once migrating, the current migration always runs
// to its end (a cancelled ctx stops before the next one). Its errors carry
// no prefix: the caller says what failed.
func Migrate(ctx context.Context, databaseURL string) (err error) {
	dsn, err := withConnParams(databaseURL, false, "sagapush-migrate")
	if err != nil {
		return err
	}
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	drv, err := pgmigrate.WithConnection(ctx, conn, &pgmigrate.Config{})
	if err != nil {
		conn.Close()
		return err
	}
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		drv.Close()
		return err
	}
	m, err := migrate.NewWithInstance("iofs", src, "postgres", drv)
	if err != nil {
		src.Close()
		drv.Close()
		return err
	}
	defer func() {
		srcErr, dbErr := m.Close()
		if err == nil {
			err = errors.Join(srcErr, dbErr)
		}
	}()
	// Another instance may be in the middle of a long migration.
	m.LockTimeout = 2 * time.Minute
	stop := context.AfterFunc(ctx, func() {
		select {
		case m.GracefulStop <- true:
		default:
		}
	})
	defer stop()

	err = m.Up()
	if dirty := (migrate.ErrDirty{}); errors.As(err, &dirty) {
		// Every migration is a single transaction, so a "dirty" version was
		// rolled back as a whole: it is safe to step back one and retry.
		// Back to the migration before it, which need not be one number
		// lower (versions are reserved per change, and may skip).
		prev := database.NilVersion
		if p, perr := src.Prev(uint(dirty.Version)); perr == nil {
			prev = int(p)
		}
		if ferr := m.Force(prev); ferr != nil {
			return fmt.Errorf("clearing dirty version %d: %w", dirty.Version, ferr)
		}
		err = m.Up()
	}
	if err != nil && !errors.Is(err, migrate.ErrNoChange) {
		return err
	}
	return nil
}
