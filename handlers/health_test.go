package handlers

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"sagapush/hub"
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
