package handlers

import (
	"context"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

// Ready tells whether this instance should get new clients: nil, or why not
// (shutting down; the database or the LISTEN connection down).
type Ready func(ctx context.Context) error

type probeAnswer struct {
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
}

// healthz answers GET /healthz: the process serves HTTP. An orchestrator
// restarts an instance that fails it, so it checks nothing else: a database
// outage is not cured by a restart.
func healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, probeAnswer{Status: "ok"})
}

// readyz answers GET /readyz: 200 while the instance should get new
// clients, 503 from the moment it is told to stop (so that a balancer drains
// it first) or while its database or LISTEN connection is down.
func readyz(ready Ready) echo.HandlerFunc {
	return func(c echo.Context) error {
		ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
		defer cancel()
		if err := ready(ctx); err != nil {
			return c.JSON(http.StatusServiceUnavailable, probeAnswer{Status: "unavailable", Reason: err.Error()})
		}
		return c.JSON(http.StatusOK, probeAnswer{Status: "ready"})
	}
}
