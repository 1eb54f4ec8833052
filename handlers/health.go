package handlers

import (
	"context"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

// Health tells whether the database and its notification channel work (the
// Postgres store is one).
type Health interface {
	Healthy(ctx context.Context) error
}

// healthPauses are the waits before the health's second and third checks
// of the database, within its 2 s: a check fails for a moment when the
// database's side dropped connections (pg_terminate_backend, a restart of a
// pooler) while the pool and the listener reconnect, and a monitor seeing
// that blip as an outage would restart a working instance.
var healthPauses = []time.Duration{200 * time.Millisecond, 500 * time.Millisecond}

// health answers GET /api/websocket/health (docs/protocol.md section 8): 503 when
// the database is down; db is nil when there is no database.
func health(s Stats, db Health) echo.HandlerFunc {
	return func(c echo.Context) error {
		ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
		defer cancel()
		database, status, code := "disabled", "healthy", http.StatusOK
		if db != nil {
			database = "ok"
			if err := checkHealth(ctx, db); err != nil {
				database, status, code = "down", "unhealthy", http.StatusServiceUnavailable
			}
		}
		st := s.Stats()
		return c.JSON(code, map[string]any{
			"status":      status,
			"connections": st.Connections,
			"projects":    len(st.Projects),
			"users":       st.Users,
			"database":    database,
			"timestamp":   time.Now().UTC().Format(time.RFC3339Nano),
		})
	}
}

// checkHealth asks db, again after each of healthPauses while it fails and
// ctx allows.
func checkHealth(ctx context.Context, db Health) error {
	err := db.Healthy(ctx)
	for _, pause := range healthPauses {
		if err == nil {
			return nil
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		err = db.Healthy(ctx)
	}
	return err
}
