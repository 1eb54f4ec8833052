package handlers

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/protocol"
)

// TicketMinter issues one-time connect tickets (*session.Tickets is one).
type TicketMinter interface {
	Mint(ctx context.Context, u *hub.User, tokenExp time.Time) (ticket string, expiresAt time.Time, err error)
}

// mintTicket answers POST /api/tickets (docs/protocol.md section 8): a
// ticket that opens one /ws or /sse connection, on any instance, with the
// user, role and expiry of the request's token. requireToken has already
// let the token through. The body, if any, is not read.
func mintTicket(m TicketMinter, log *slog.Logger) echo.HandlerFunc {
	return func(c echo.Context) error {
		u := c.Get(userKey).(*hub.User)
		exp, _ := c.Get(expiryKey).(time.Time)
		ctx, cancel := context.WithTimeout(c.Request().Context(), 10*time.Second)
		defer cancel()
		ticket, expiresAt, err := m.Mint(ctx, u, exp)
		if err != nil {
			log.Error("minting a ticket failed", "user", u.ID, "err", err) // never the ticket
			return newError(http.StatusServiceUnavailable, protocol.CodeInternalError, "the ticket could not be issued now")
		}
		// A secret: no cache may keep the answer.
		c.Response().Header().Set("Cache-Control", "no-store")
		return c.JSON(http.StatusCreated, map[string]any{"ticket": ticket, "expiresAt": expiresAt.UnixMilli()})
	}
}
