package handlers

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/saga-family/sagapush/hub"
)

func TestHealth(t *testing.T) {
	st := fakeStats{Connections: 3, Users: 2, Projects: []hub.ProjectStat{{ProjectID: "p1", Connections: 3}}}
	for _, tc := range []struct {
		name             string
		db               Health
		code             int
		status, database string
	}{
		{"embedded", nil, http.StatusOK, "healthy", "disabled"},
		{"database ok", fakeHealth{}, http.StatusOK, "healthy", "ok"},
		{"database down", fakeHealth{err: errors.New("connection refused")}, http.StatusServiceUnavailable, "unhealthy", "down"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := testServer(t, func(c *Config) { c.Stats, c.Database = st, tc.db })
			// No token needed, and a bad one is not looked at.
			rec := do(t, h, "GET", "/api/websocket/health", "bad", "")
			if rec.Code != tc.code {
				t.Errorf("status %d, want %d", rec.Code, tc.code)
			}
			b := decode(t, rec)
			if b["status"] != tc.status || b["database"] != tc.database {
				t.Errorf("%v: want status %s, database %s", b, tc.status, tc.database)
			}
			if b["connections"] != 3.0 || b["projects"] != 1.0 || b["users"] != 2.0 {
				t.Errorf("%v: want 3 connections, 1 project, 2 users", b)
			}
			ts, _ := b["timestamp"].(string)
			if when, err := time.Parse(time.RFC3339Nano, ts); err != nil || time.Since(when).Abs() > time.Minute {
				t.Errorf("timestamp %q", ts)
			}
			if len(b) != 6 {
				t.Errorf("%v: want exactly status, connections, projects, users, database, timestamp", b)
			}
		})
	}
}

// flakyHealth fails its first fails checks.
type flakyHealth struct {
	fails  int
	checks atomic.Int32
}

func (f *flakyHealth) Healthy(context.Context) error {
	if int(f.checks.Add(1)) <= f.fails {
		return errors.New("driver: bad connection")
	}
	return nil
}

// A failed database check is tried again within the health's 2 s: a blip
// (connections killed and being re-made) is no outage; a check that keeps
// failing is.
func TestHealthRetries(t *testing.T) {
	for _, tc := range []struct {
		fails, checks int
		code          int
	}{
		{0, 1, http.StatusOK},
		{1, 2, http.StatusOK},
		{len(healthPauses), len(healthPauses) + 1, http.StatusOK},
		{100, len(healthPauses) + 1, http.StatusServiceUnavailable},
	} {
		db := &flakyHealth{fails: tc.fails}
		h := testServer(t, func(c *Config) { c.Database = db })
		start := time.Now()
		rec := do(t, h, "GET", "/api/websocket/health", "", "")
		if rec.Code != tc.code || int(db.checks.Load()) != tc.checks {
			t.Errorf("%d failures: %d after %d checks, want %d after %d", tc.fails, rec.Code, db.checks.Load(), tc.code, tc.checks)
		}
		if d := time.Since(start); d > 2*time.Second+500*time.Millisecond {
			t.Errorf("%d failures: answered after %v, past the 2 s budget", tc.fails, d)
		}
	}
}
