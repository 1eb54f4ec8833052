// Package handlers is the HTTP surface of Saga push: it routes each request
// to a transport or to an API handler, and answers every HTTP error in the
// contract's one shape (docs/protocol.md sections 7 and 8).
package handlers

import (
	"io/fs"
	"log/slog"
	"net/http"
	_ "net/http/pprof" // only reachable when Config.Pprof is set

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/saga-family/sagapush/auth"
	"github.com/saga-family/sagapush/docs"
	"github.com/saga-family/sagapush/internal/httpguard"
)

// Config holds what the HTTP surface serves. Each dependency is the small
// interface of the routes that use it, so that they can be tested alone.
type Config struct {
	Auth       Authenticator // the token of stats, publish and tickets
	Stats      Stats         // health and stats (the hub)
	Publisher  Publisher     // project events (the store)
	UserEvents UserEvents    // user-targeted events (the hub)
	Tickets    TicketMinter  // one-time connect tickets; nil: no /api/tickets
	Presence   Presence      // who is online; nil: no presence route
	Members    Members       // who may see a project's presence (the store)
	// Database is what the health checks; nil when there is none (embedded
	// mode), which the health reports as "disabled".
	Database Health
	// Ready answers /readyz; nil: /readyz and /healthz are not mounted.
	Ready    Ready
	WS       http.Handler
	SSE      http.Handler // nil until the SSE transport is mounted
	Origins  httpguard.Origins
	Gatherer prometheus.Gatherer
	// MetricsToken, when set, is the bearer token /metrics needs
	// (METRICS_TOKEN); unset, /metrics is public.
	MetricsToken string
	// Unauthenticated counts the WebSocket connections that have not
	// authenticated yet, which the hub does not know (nil: none).
	Unauthenticated func() int
	Web             fs.FS // client.js, client.d.ts, index.html
	Logger          *slog.Logger
	// Pprof mounts /debug/pprof (PPROF=1): for profiling, never on by default.
	Pprof bool
	// ClientIP finds a request's client address (TRUSTED_PROXIES); nil:
	// the direct peer's.
	ClientIP func(*http.Request) string
}

// New returns the echo server with every route of docs/protocol.md sections 4, 5 and 8.
func New(cfg Config) *echo.Echo {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = writeError
	if cfg.ClientIP != nil {
		e.IPExtractor = cfg.ClientIP
	} else {
		e.IPExtractor = echo.ExtractIPDirect()
	}
	e.Pre(releaseReadDeadline)
	e.Use(middleware.RequestID(), requestLog(log))

	if cfg.Ready != nil {
		// Probes for orchestrators and balancers, beside the API's health.
		e.GET("/healthz", healthz)
		e.GET("/readyz", readyz(cfg.Ready))
	}
	e.GET("/ws", echo.WrapHandler(cfg.WS))
	if cfg.SSE != nil {
		e.GET("/sse", echo.WrapHandler(cfg.SSE))
	}

	// The origin first, so that a refused origin gets no CORS headers; then
	// CORS, so that a listed origin can read the API's error answers too.
	api := e.Group("/api", apiOrigin(cfg.Origins), cors(cfg.Origins), apiRequest)
	api.GET("/websocket/health", health(cfg.Stats, cfg.Database))
	// The machine-readable API (docs/asyncapi.yaml, docs/openapi.yaml):
	// public like the health, under the API's rules.
	api.GET("/asyncapi.yaml", apiDocument(docs.AsyncAPI))
	api.GET("/openapi.yaml", apiDocument(docs.OpenAPI))
	api.GET("/websocket/stats", stats(cfg.Stats, cfg.Unauthenticated), requireRole(cfg.Auth, auth.RoleAdmin, auth.RoleService))
	// The body limit runs before the token check: a body declared too large
	// is refused (413) without reading it or verifying anything.
	api.POST("/events", publish(cfg.Publisher, cfg.UserEvents, log),
		middleware.BodyLimit("512K"), requireRole(cfg.Auth, auth.RoleService))
	if cfg.Tickets != nil {
		api.POST("/tickets", mintTicket(cfg.Tickets, log), requireToken(cfg.Auth))
	}
	if cfg.Presence != nil {
		api.GET("/projects/:projectId/presence", presence(cfg.Presence, cfg.Members), requireToken(cfg.Auth))
	}

	if cfg.Pprof {
		e.Any("/debug/pprof/*", echo.WrapHandler(http.DefaultServeMux))
	}
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{})), metricsGuard(cfg.MetricsToken))
	if cfg.Web != nil {
		serveWeb(e, cfg.Web)
	}
	return e
}

// cors answers browsers under WEBSOCKET_CORS_ORIGIN: only a listed origin
// gets CORS headers (an empty list lists none; same-origin pages need none).
func cors(origins httpguard.Origins) echo.MiddlewareFunc {
	return middleware.CORSWithConfig(middleware.CORSConfig{
		AllowOriginFunc: func(origin string) (bool, error) { return origins.Listed(origin), nil },
		AllowHeaders:    []string{"Authorization", "Content-Type"},
	})
}
