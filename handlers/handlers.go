// Package handlers is the HTTP surface of Saga push: it mounts the transports
// and serves health, stats, the publish API, metrics and the demo page.
package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	_ "net/http/pprof" // only reachable when Config.Pprof is set
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"sagapush/auth"
	"sagapush/hub"
	"sagapush/internal/httpguard"
	"sagapush/internal/protocol"
	"sagapush/store"
)

// Authenticator turns a request's token into a user (session.Authenticator
// is one).
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (*hub.User, time.Time, *protocol.Error)
}

// Config holds what the HTTP surface serves.
type Config struct {
	Hub      *hub.Hub
	Store    store.Store
	Auth     Authenticator
	WS       http.Handler
	SSE      http.Handler // nil until the SSE transport is mounted
	Origins  httpguard.Origins
	Gatherer prometheus.Gatherer
	Web      fs.FS // client.js, client.d.ts, index.html
	Logger   *slog.Logger
	// Pprof mounts /debug/pprof (PPROF=1): for profiling, never on by default.
	Pprof bool
}

// New returns the echo server with every route of PROTOCOL sections 3, 4 and 7.
func New(cfg Config) *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = httpError
	api := &api{cfg: cfg}

	e.GET("/ws", echo.WrapHandler(cfg.WS))
	if cfg.SSE != nil {
		e.GET("/sse", echo.WrapHandler(cfg.SSE))
	}

	g := e.Group("/api", middleware.CORSWithConfig(middleware.CORSConfig{
		AllowOriginFunc: func(origin string) (bool, error) {
			r := &http.Request{Header: http.Header{"Origin": {origin}}}
			return len(cfg.Origins) > 0 && cfg.Origins.Allowed(r), nil
		},
		AllowHeaders: []string{"Authorization", "Content-Type"},
	}))
	g.GET("/websocket/health", api.health)
	g.GET("/websocket/stats", api.stats)
	g.POST("/events", api.publish, middleware.BodyLimit("512K"))

	if cfg.Pprof {
		e.Any("/debug/pprof/*", echo.WrapHandler(http.DefaultServeMux))
	}
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{})))
	if cfg.Web != nil {
		serve := func(name, ctype string) echo.HandlerFunc {
			return func(c echo.Context) error {
				b, err := fs.ReadFile(cfg.Web, name)
				if err != nil {
					return echo.ErrNotFound
				}
				c.Response().Header().Set("Cache-Control", "no-cache")
				return c.Blob(http.StatusOK, ctype, b)
			}
		}
		e.GET("/", serve("index.html", "text/html; charset=utf-8"))
		e.GET("/client.js", serve("client.js", "text/javascript; charset=utf-8"))
		e.GET("/client.d.ts", serve("client.d.ts", "application/typescript; charset=utf-8"))
	}
	return e
}

// httpError answers every echo error as {"error":{"code","message"}}.
func httpError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	status, code, msg := http.StatusInternalServerError, "INTERNAL_ERROR", "internal error"
	var he *echo.HTTPError
	if errors.As(err, &he) {
		status = he.Code
		msg = http.StatusText(status)
		if m, ok := he.Message.(string); ok {
			msg = m
		}
		switch status {
		case http.StatusUnauthorized:
			code = "UNAUTHORIZED"
		case http.StatusForbidden:
			code = "FORBIDDEN"
		case http.StatusNotFound:
			code = "NOT_FOUND"
		case http.StatusRequestEntityTooLarge:
			code = "INVALID_MESSAGE"
		default:
			if status < 500 {
				code = "INVALID_MESSAGE"
			}
		}
	}
	c.JSON(status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

type api struct{ cfg Config }

func (a *api) health(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	st := a.cfg.Hub.Stats()
	db, status, code := "disabled", "healthy", http.StatusOK
	if a.cfg.Store.Mode() != "embedded" {
		db = "ok"
		if err := a.cfg.Store.Healthy(ctx); err != nil {
			db, status, code = "down", "unhealthy", http.StatusServiceUnavailable
		}
	}
	return c.JSON(code, map[string]any{
		"status":      status,
		"connections": st.Connections,
		"projects":    len(st.Projects),
		"users":       st.Users,
		"database":    db,
		"timestamp":   time.Now().UTC().Format(time.RFC3339Nano),
	})
}

// authorize checks the request's token and that its role is one of roles.
func (a *api) authorize(c echo.Context, roles ...string) (*hub.User, error) {
	u, _, e := a.cfg.Auth.Authenticate(c.Request().Context(), auth.TokenFromRequest(c.Request()))
	if e != nil {
		status := http.StatusUnauthorized
		if e.Code == protocol.CodeInternalError {
			status = http.StatusServiceUnavailable
		}
		return nil, c.JSON(status, map[string]any{"error": e})
	}
	for _, r := range roles {
		if u.Role == r {
			return u, nil
		}
	}
	return nil, c.JSON(http.StatusForbidden, map[string]any{"error": map[string]string{"code": "FORBIDDEN", "message": "this token's role may not do this"}})
}

func (a *api) stats(c echo.Context) error {
	if u, err := a.authorize(c, "admin", "service"); u == nil {
		return err
	}
	st := a.cfg.Hub.Stats()
	projects := st.Projects
	if projects == nil {
		projects = []hub.ProjectStat{}
	}
	sse := st.Transports["sse"]
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
			"transports": map[string]int{"websocket": st.Transports["websocket"], "sse": sse},
		},
		"timestamp": time.Now().UTC().Format(time.RFC3339Nano),
	})
}

type publishRequest struct {
	ProjectID string          `json:"projectId"`
	UserID    string          `json:"userId"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
}

func (a *api) publish(c echo.Context) error {
	if u, err := a.authorize(c, "service"); u == nil {
		return err
	}
	var req publishRequest
	dec := json.NewDecoder(c.Request().Body)
	if err := dec.Decode(&req); err != nil || dec.Decode(&struct{}{}) != io.EOF {
		// One JSON object and nothing after it.
		return badRequest(c, "body must be a JSON object {projectId|userId, event, data}")
	}
	if len(req.Data) == 0 || req.Data[0] != '{' {
		return badRequest(c, "data must be a JSON object")
	}
	// One line of JSON: an SSE data line must not hold a newline, and the
	// bytes are then what every client gets.
	var compact bytes.Buffer
	if err := json.Compact(&compact, req.Data); err != nil {
		return badRequest(c, "data must be a JSON object")
	}
	req.Data = compact.Bytes()
	ctx, cancel := context.WithTimeout(c.Request().Context(), 10*time.Second)
	defer cancel()
	switch {
	case req.ProjectID != "" && req.UserID != "":
		return badRequest(c, "give projectId or userId, not both")
	case req.ProjectID != "":
		if !protocol.DomainEvents[req.Event] {
			return badRequest(c, "unknown event: it must be one of PROTOCOL section 5")
		}
		if !protocol.ValidID(req.ProjectID) {
			return badRequest(c, "invalid projectId")
		}
		seq, err := a.cfg.Store.Publish(ctx, req.ProjectID, req.Event, req.Data)
		if err != nil {
			a.cfg.Logger.Error("publish failed", "project", req.ProjectID, "event", req.Event, "err", err)
			return c.JSON(http.StatusServiceUnavailable, map[string]any{"error": map[string]string{"code": "INTERNAL_ERROR", "message": "the event could not be stored"}})
		}
		return c.JSON(http.StatusAccepted, map[string]any{"projectId": req.ProjectID, "seq": seq})
	case req.UserID != "":
		if req.Event == "" || len(req.Event) > 64 || !protocol.ValidID(req.Event) {
			return badRequest(c, "invalid event name")
		}
		if !protocol.ValidID(req.UserID) {
			return badRequest(c, "invalid userId")
		}
		if err := a.cfg.Hub.UserEvent(ctx, req.UserID, req.Event, req.Data); err != nil {
			a.cfg.Logger.Error("user event failed", "event", req.Event, "err", err)
			return c.JSON(http.StatusServiceUnavailable, map[string]any{"error": map[string]string{"code": "INTERNAL_ERROR", "message": "the event could not be relayed"}})
		}
		return c.JSON(http.StatusAccepted, map[string]any{"userId": req.UserID})
	default:
		return badRequest(c, "projectId or userId is required")
	}
}

func badRequest(c echo.Context, msg string) error {
	return c.JSON(http.StatusBadRequest, map[string]any{"error": map[string]string{"code": "INVALID_MESSAGE", "message": msg}})
}
