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

// health answers GET /api/websocket/health (docs/protocol.md section 8): 503 when
// the database is down; db is nil when there is no database.
func health(s Stats, db Health) echo.HandlerFunc {
	return func(c echo.Context) error {
		ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
		defer cancel()
		st := s.Stats()
		database, status, code := "disabled", "healthy", http.StatusOK
		if db != nil {
			database = "ok"
			if err := db.Healthy(ctx); err != nil {
				database, status, code = "down", "unhealthy", http.StatusServiceUnavailable
			}
		}
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
