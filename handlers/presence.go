package handlers

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/saga-family/sagapush/auth"
	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/protocol"
)

// Presence lists a project's online users with their connections on every
// instance (internal/presence.Tracker is one).
type Presence interface {
	List(ctx context.Context, projectID string) ([]protocol.PresenceUser, error)
}

// Members decides whether a user is a member of a project (the store is
// one: hub.Access).
type Members interface {
	Role(ctx context.Context, u *hub.User, projectID string) (string, error)
}

type presenceAnswer struct {
	ProjectID string                  `json:"projectId"`
	Online    []protocol.PresenceUser `json:"online"`
}

// presence answers GET /api/projects/{projectId}/presence (docs/protocol.md,
// presence): a member of the project, or an admin or service token.
// requireToken has already let the token through.
func presence(p Presence, m Members) echo.HandlerFunc {
	return func(c echo.Context) error {
		projectID := c.Param("projectId")
		if !protocol.ValidID(projectID) {
			return newError(http.StatusBadRequest, protocol.CodeInvalidMessage, "projectId is not a valid id")
		}
		ctx, cancel := context.WithTimeout(c.Request().Context(), 10*time.Second)
		defer cancel()
		u := c.Get(userKey).(*hub.User)
		if u.Role != auth.RoleAdmin && u.Role != auth.RoleService {
			_, err := m.Role(ctx, u, projectID)
			switch {
			case errors.Is(err, hub.ErrAccessDenied):
				return newError(http.StatusForbidden, protocol.CodeForbidden, "only the project's members may see who is online")
			case err != nil:
				return newError(http.StatusServiceUnavailable, protocol.CodeInternalError, "cannot check access now")
			}
		}
		online, err := p.List(ctx, projectID)
		if err != nil {
			return newError(http.StatusServiceUnavailable, protocol.CodeInternalError, "cannot read presence now")
		}
		return c.JSON(http.StatusOK, presenceAnswer{ProjectID: projectID, Online: online})
	}
}
