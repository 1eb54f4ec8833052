package handlers

import (
	"log/slog"
	"time"

	"github.com/labstack/echo/v4"
)

// requestLog logs each request at debug with its request id (echo's
// RequestID middleware sets X-Request-Id on the response; a request that
// came with one keeps it). Only the path is logged, never the query: a
// token or ticket may ride there.
func requestLog(log *slog.Logger) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if !log.Enabled(c.Request().Context(), slog.LevelDebug) {
				return next(c)
			}
			start := time.Now()
			err := next(c)
			status := c.Response().Status
			if err != nil {
				status = asAPIError(err).status
			}
			log.Debug("http request", "id", c.Response().Header().Get(echo.HeaderXRequestID),
				"client", c.RealIP(), "method", c.Request().Method, "path", c.Request().URL.Path, "status", status,
				"duration", time.Since(start))
			return err
		}
	}
}
