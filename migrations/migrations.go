// Package migrations holds the database schema, embedded in the binary.
//
// Files follow golang-migrate's naming ({version}_{title}.up.sql) and are
// applied by store.Migrate. There are no down files on purpose: the Saga
// tables may belong to the Saga backend, and the event store is rebuilt by
// later up migrations rather than rolled back.
package migrations

import "embed"

// FS holds every migration file.
//
//go:embed *.sql
var FS embed.FS
