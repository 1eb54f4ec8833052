// Package pgtest gives tests a fresh, migrated Postgres database of their own.
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/lib/pq" // the "postgres" database/sql driver

	"github.com/saga-family/sagapush/store"
)

// DefaultAdminURL is the server tests use unless TEST_DATABASE_URL names
// another: the local Postgres that CI starts.
const DefaultAdminURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// AdminURL returns the URL of the database used to create and drop the test
// databases: TEST_DATABASE_URL, else DefaultAdminURL.
func AdminURL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultAdminURL
}

// New creates the database sagapush_test_<random>, applies the migrations
// with store.Migrate and returns its URL. The database is dropped (with
// FORCE, so open connections do not keep it) when the test ends. When the
// server cannot be reached the test is skipped, or fails when CI=true: CI
// must never pass by skipping.
func New(t testing.TB) (databaseURL string) {
	t.Helper()
	databaseURL = NewEmpty(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := store.Migrate(ctx, databaseURL); err != nil {
		t.Fatalf("pgtest: migrating: %v", err)
	}
	return databaseURL
}

// NewEmpty is New without the migrations, for tests of the migrations.
func NewEmpty(t testing.TB) (databaseURL string) {
	t.Helper()
	admin := AdminURL()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	db, err := sql.Open("postgres", admin)
	if err != nil {
		t.Fatalf("pgtest: bad admin URL: %v", err)
	}
	defer db.Close()
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	err = db.PingContext(pctx)
	pcancel()
	if err != nil {
		msg := fmt.Sprintf("pgtest: Postgres unreachable at %s (set TEST_DATABASE_URL to an admin URL): %v", redact(admin), err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}

	b := make([]byte, 8)
	rand.Read(b)
	name := "sagapush_test_" + hex.EncodeToString(b)
	// A database name cannot be a parameter; name is [a-z0-9_] only.
	if _, err := db.ExecContext(ctx, `CREATE DATABASE `+name); err != nil {
		t.Fatalf("pgtest: creating database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		db, err := sql.Open("postgres", admin)
		if err != nil {
			t.Errorf("pgtest: dropping %s: %v", name, err)
			return
		}
		defer db.Close()
		if _, err := db.ExecContext(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			t.Errorf("pgtest: dropping %s: %v", name, err)
		}
	})

	databaseURL, err = withDatabase(admin, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return databaseURL
}

// withDatabase returns the admin URL pointed at database name, in either
// URL or key=value form.
func withDatabase(admin, name string) (string, error) {
	if strings.HasPrefix(admin, "postgres://") || strings.HasPrefix(admin, "postgresql://") {
		u, err := url.Parse(admin)
		if err != nil {
			return "", err
		}
		u.Path = "/" + name
		return u.String(), nil
	}
	return admin + " dbname=" + name, nil // a later key overrides an earlier one
}

// redact hides a password in a URL for messages.
func redact(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return u.Redacted()
	}
	return s
}
