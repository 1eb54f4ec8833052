package handlers

import (
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/saga-family/sagapush/hub"
)

// Stats counts connections, users and rooms (*hub.Hub is one).
type Stats interface {
	Stats() hub.Stats
}

// stats answers GET /api/websocket/stats (docs/protocol.md section 8); requireRole
// has already let the token through. unauthenticated counts the WebSocket
// connections the hub does not know yet (nil: none).
func stats(s Stats, unauthenticated func() int) echo.HandlerFunc {
	return func(c echo.Context) error {
		st := s.Stats()
		unauth := 0
		if unauthenticated != nil {
			unauth = unauthenticated()
		}
		projects := st.Projects
		if projects == nil {
			projects = []hub.ProjectStat{} // [] rather than null
		}
		return c.JSON(http.StatusOK, map[string]any{
			"success": true,
			"data": map[string]any{
				"totalConnections":   st.Connections,
				"projectCount":       len(st.Projects),
				"userCount":          st.Users,
				"projectConnections": projects,
				"rateLimitStats": map[string]any{
					"activeUsers":        st.Users,
					"rateLimitWindow":    st.RateWindow,
					"maxEventsPerWindow": st.RateMax,
				},
				"transports": map[string]int{"websocket": st.Transports["websocket"], "sse": st.Transports["sse"]},
				// Not in totalConnections, which counts the hub's (authenticated) connections.
				"unauthenticated": unauth,
			},
			"timestamp": time.Now().UTC().Format(time.RFC3339Nano),
		})
	}
}
