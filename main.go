// Command sagapush is Saga push, the real-time push service of Saga: it only
// wires configuration, the store, the hub, the transports and the HTTP
// surface together.
//
//	sagapush [serve]   run the server
//	sagapush migrate   apply the database migrations and exit
//	sagapush token     print a signed token (JWT_SECRET) for development
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"sagapush/auth"
	"sagapush/handlers"
	"sagapush/hub"
	"sagapush/internal/httpguard"
	"sagapush/internal/presence"
	"sagapush/internal/session"
	"sagapush/store"
	"sagapush/transports"
	"sagapush/web"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serve(args, stdout, stderr)
	case "migrate":
		err = migrate(stderr)
	case "token":
		err = token(args, stdout)
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, "usage: sagapush [serve] | migrate | token --user ID [--name N] [--role admin|service] [--projects P1,P2] [--ttl 15m]")
		return 0
	default:
		err = fmt.Errorf("unknown command %q (serve, migrate, token)", cmd)
	}
	if err != nil {
		fmt.Fprintln(stderr, "sagapush:", err)
		return 1
	}
	return 0
}

// config is the environment of docs/protocol.md section 2, plus the operator's knobs
// documented in the README.
type config struct {
	Port            string
	DatabaseURL     string
	JWTSecret       string
	JWTPublicKey    string
	JWTJWKSURL      string
	JWTIssuer       string
	JWTAudience     string
	JWTLeeway       time.Duration
	Origins         []string
	PingInterval    time.Duration
	PingTimeout     time.Duration
	RateWindow      time.Duration
	RateMax         int
	SSEHeartbeat    time.Duration
	MaxConnsPerUser int
	HandshakeRate   float64
	HandshakeBurst  int
	ShutdownGrace   time.Duration
	ReconnectAfter  time.Duration
	AutoMigrate     bool
	Retention       time.Duration
	CompressAbove   int
	QueueLimit      int
	QueueLimitBytes int
	HistorySize     int
	MaxReplay       int
	MemoryHistory   int
	AuthTimeout     time.Duration
	TicketTTL       time.Duration
	AllowTokenInURL bool
	MetricsToken    string
	ConnsPerAddress int
	PresenceGrace   time.Duration
	PresenceTTL     time.Duration
	PresenceMax     int
	LogLevel        slog.Level
}

func loadConfig() (config, error) {
	var errs []error
	ms := func(name string, def int) time.Duration {
		return time.Duration(intEnv(name, def, &errs)) * time.Millisecond
	}
	c := config{
		Port:            envOr("PORT", "3001"),
		DatabaseURL:     os.Getenv("DATABASE_URL"),
		JWTSecret:       os.Getenv("JWT_SECRET"),
		JWTPublicKey:    os.Getenv("JWT_PUBLIC_KEY_FILE"),
		JWTJWKSURL:      os.Getenv("JWT_JWKS_URL"),
		JWTIssuer:       os.Getenv("JWT_ISSUER"),
		JWTAudience:     os.Getenv("JWT_AUDIENCE"),
		JWTLeeway:       ms("JWT_LEEWAY_MS", 30000),
		PingInterval:    ms("WEBSOCKET_PING_INTERVAL", 25000),
		PingTimeout:     ms("WEBSOCKET_PING_TIMEOUT", 60000),
		RateWindow:      ms("RATE_LIMIT_WINDOW_MS", 60000),
		RateMax:         intEnv("RATE_LIMIT_MAX_EVENTS", 100, &errs),
		SSEHeartbeat:    ms("SSE_HEARTBEAT_MS", 15000),
		MaxConnsPerUser: intEnv("MAX_CONNECTIONS_PER_USER", 100, &errs),
		HandshakeRate:   float64(intEnv("HANDSHAKES_PER_SECOND", 1000, &errs)),
		HandshakeBurst:  intEnv("HANDSHAKE_BURST", 1000, &errs),
		ShutdownGrace:   ms("SHUTDOWN_GRACE_MS", 10000),
		ReconnectAfter:  ms("RECONNECT_AFTER_MS", 2000),
		AutoMigrate:     envOr("AUTO_MIGRATE", "true") != "false",
		Retention:       time.Duration(intEnv("EVENT_RETENTION_HOURS", 7*24, &errs)) * time.Hour,
		CompressAbove:   intEnv("WS_COMPRESS_ABOVE", 1024, &errs),
		QueueLimit:      intEnv("QUEUE_LIMIT", 4096, &errs),
		QueueLimitBytes: intEnv("QUEUE_LIMIT_BYTES", 4<<20, &errs),
		HistorySize:     intEnv("ROOM_HISTORY", 256, &errs),
		MaxReplay:       intEnv("MAX_REPLAY", 2000, &errs),
		MemoryHistory:   intEnv("EMBEDDED_HISTORY", 10000, &errs),
		AuthTimeout:     ms("AUTH_TIMEOUT_MS", 10000),
		TicketTTL:       ms("TICKET_TTL_MS", 30000),
		AllowTokenInURL: boolEnv("ALLOW_TOKEN_IN_URL", true, &errs),
		MetricsToken:    os.Getenv("METRICS_TOKEN"),
		ConnsPerAddress: intEnv("HTTP_CONNS_PER_ADDRESS", 512, &errs),
		PresenceGrace:   ms("PRESENCE_GRACE_MS", 5000),
		PresenceTTL:     ms("PRESENCE_TTL_MS", 30000),
		PresenceMax:     intEnv("PRESENCE_MAX_USERS", 100, &errs),
	}
	if c.PresenceTTL < 500*time.Millisecond {
		// Leases last half of it and are renewed every sixth: shorter
		// would renew faster than a database round trip is sure to take.
		errs = append(errs, fmt.Errorf("PRESENCE_TTL_MS must be at least 500, not %d", c.PresenceTTL.Milliseconds()))
	}
	switch {
	case c.JWTLeeway > auth.DefaultLeeway:
		errs = append(errs, fmt.Errorf("JWT_LEEWAY_MS must be at most %d", auth.DefaultLeeway.Milliseconds()))
	case c.JWTLeeway == 0:
		c.JWTLeeway = time.Nanosecond // none: zero would mean the default below
	}
	if c.MemoryHistory < 2 {
		// The embedded store trims its history to half this size at once.
		errs = append(errs, fmt.Errorf("EMBEDDED_HISTORY must be at least 2, not %d", c.MemoryHistory))
	}
	for _, o := range strings.Split(os.Getenv("WEBSOCKET_CORS_ORIGIN"), ",") {
		if o = strings.TrimSpace(o); o != "" {
			c.Origins = append(c.Origins, o)
		}
	}
	c.LogLevel = slog.LevelInfo
	if os.Getenv("DEBUG") == "1" {
		c.LogLevel = slog.LevelDebug
	}
	if lv := os.Getenv("LOG_LEVEL"); lv != "" {
		if err := c.LogLevel.UnmarshalText([]byte(lv)); err != nil {
			errs = append(errs, fmt.Errorf("LOG_LEVEL: %w", err))
		}
	}
	return c, errors.Join(errs...)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func intEnv(name string, def int, errs *[]error) int {
	return parseEnv(name, def, "a non-negative integer", errs, func(v string) (int, bool) {
		n, err := strconv.Atoi(v)
		return n, err == nil && n >= 0
	})
}

// boolEnv is strict: a typo in a security switch must not pass as its default.
func boolEnv(name string, def bool, errs *[]error) bool {
	return parseEnv(name, def, "true or false", errs, func(v string) (bool, bool) {
		b, err := strconv.ParseBool(v)
		return b, err == nil
	})
}

// parseEnv reads the variable with parse, def when it is unset; a value
// that parse refuses is reported in errs.
func parseEnv[T any](name string, def T, want string, errs *[]error, parse func(string) (T, bool)) T {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	x, ok := parse(v)
	if !ok {
		*errs = append(*errs, fmt.Errorf("%s must be %s, not %q", name, want, v))
		return def
	}
	return x
}

func serve(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	port := fs.String("port", "", "HTTP port (PORT)")
	noMigrate := fs.Bool("no-migrate", false, "do not apply migrations at start (AUTO_MIGRATE=false)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	if *port != "" {
		cfg.Port = *port
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	slog.SetDefault(log)
	if os.Getenv("GOGC") == "" {
		// Idle connections are most of this service's memory; a tighter
		// heap goal keeps less of it resident per connection, at no
		// throughput cost the bench measures (docs/performance.md).
		debug.SetGCPercent(50)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var st store.Store
	if cfg.DatabaseURL != "" {
		if cfg.AutoMigrate && !*noMigrate {
			if err := store.Migrate(ctx, cfg.DatabaseURL); err != nil {
				return fmt.Errorf("migrate: %w", err)
			}
		}
		pg, err := store.OpenPostgres(ctx, cfg.DatabaseURL, store.PostgresOptions{Retention: cfg.Retention, Logger: log})
		if err != nil {
			return err
		}
		st = pg
	} else {
		st = store.NewMemory(cfg.MemoryHistory)
	}
	defer st.Close()

	embeddedDemo := false
	if st.Mode() == "embedded" && cfg.JWTSecret == "" && cfg.JWTPublicKey == "" && cfg.JWTJWKSURL == "" {
		b := make([]byte, 32)
		rand.Read(b)
		cfg.JWTSecret = hex.EncodeToString(b)
		embeddedDemo = true
	}
	verifier, err := auth.NewVerifier(ctx, auth.Config{
		Secret: []byte(cfg.JWTSecret), PublicKeyFile: cfg.JWTPublicKey, JWKSURL: cfg.JWTJWKSURL,
		Issuer: cfg.JWTIssuer, Audience: cfg.JWTAudience, Leeway: cfg.JWTLeeway,
	})
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var h *hub.Hub
	var shared presence.Backend // none in embedded mode: presence is this process's
	if b, ok := st.(presence.Backend); ok {
		shared = b
	}
	pres := presence.New(presence.Options{
		Backend: shared, Announce: func(e hub.Ephemeral) { h.DeliverEphemeral(e) },
		Grace: cfg.PresenceGrace, TTL: cfg.PresenceTTL, MaxUsers: cfg.PresenceMax,
		Logger: log, Registerer: reg,
	})
	h = hub.New(hub.Options{
		Source: st, Access: st, Relay: st, Presence: pres, Logger: log, Metrics: hub.NewMetrics(reg),
		MaxConnsPerUser: cfg.MaxConnsPerUser, RateWindow: cfg.RateWindow, RateMaxEvents: cfg.RateMax,
		QueueLimit: cfg.QueueLimit, QueueLimitBytes: cfg.QueueLimitBytes, HistorySize: cfg.HistorySize, MaxReplay: cfg.MaxReplay,
	})
	defer h.Close()
	pres.Start()
	if err := st.Start(ctx, storeSink{h, pres}); err != nil {
		return err
	}

	tickets := &session.Tickets{Store: st, TTL: cfg.TicketTTL}
	authn := &session.Authenticator{Verifier: verifier, Users: st, Tickets: tickets, NoTokenInURL: !cfg.AllowTokenInURL}
	sessions := session.NewManager(session.Options{Hub: h, Auth: authn, AuthTimeout: cfg.AuthTimeout, RateWindow: cfg.RateWindow, Leeway: cfg.JWTLeeway})
	handshakes := httpguard.NewAddrLimiter(cfg.HandshakeRate, cfg.HandshakeBurst)
	ws := transports.NewWebSocket(sessions, transports.WSOptions{
		PingInterval: cfg.PingInterval, PingTimeout: cfg.PingTimeout, Origins: cfg.Origins,
		Handshakes: handshakes, CompressAbove: cfg.CompressAbove,
	})
	sse := transports.NewSSE(sessions, transports.SSEOptions{
		Heartbeat: cfg.SSEHeartbeat, Origins: cfg.Origins, Handshakes: handshakes,
	})
	var database handlers.Health // none in embedded mode: the health says "disabled"
	if st.Mode() != "embedded" {
		database = st
	}
	conns := httpguard.NewConnLimiter(cfg.ConnsPerAddress)
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sagapush_unauthenticated_connections",
			Help: "Open WebSocket connections that have not authenticated yet (not in sagapush_connections).",
		}, func() float64 { return float64(ws.Unauthenticated()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "sagapush_http_connections_refused_total",
			Help: "Plain-HTTP connections closed at once because their address had HTTP_CONNS_PER_ADDRESS open.",
		}, func() float64 { return float64(conns.Refused()) }),
	)
	e := handlers.New(handlers.Config{
		Auth: authn, Stats: h, Publisher: st, UserEvents: h, Tickets: tickets, Database: database,
		Presence: pres, Members: st,
		WS: ws, SSE: sse, Origins: cfg.Origins,
		Gatherer: reg, MetricsToken: cfg.MetricsToken, Unauthenticated: ws.Unauthenticated,
		Web: web.Files, Logger: log, Pprof: os.Getenv("PPROF") == "1",
	})

	ln, err := net.Listen("tcp", ":"+cfg.Port)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: e,
		// A request's headers, and its body, must arrive within 10 s of
		// its first byte (docs/protocol.md section 8); a handler clears the
		// deadline once it has the whole request (handlers.New). net/http
		// clears it on Hijack, so WebSockets and SSE streams never see it.
		ReadTimeout:       10 * time.Second,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ConnState:         conns.ConnState,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String(), "mode", st.Mode())
	if embeddedDemo {
		printDemo(stdout, []byte(cfg.JWTSecret), ln.Addr().(*net.TCPAddr).Port)
	}

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down", "connections", h.Len(), "grace", cfg.ShutdownGrace)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancel()
	// Clients first: they get server_shutdown, then a close with 1001 once
	// it is written; new connections are refused from here on.
	h.Shutdown(cfg.ReconnectAfter)
	ws.Shutdown(cfg.ReconnectAfter)
	if err := srv.Shutdown(shutdownCtx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	// Hijacked WebSockets are not tracked by http.Server: wait for them to
	// close on their own, then close what is left.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for ws.Len() > 0 && shutdownCtx.Err() == nil {
		<-tick.C
	}
	ws.CloseAll()
	// The lease ends after the grace: users whose clients reconnect to
	// another instance meanwhile never show as offline.
	byeCtx, cancelBye := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelBye()
	pres.Close(byeCtx)
	log.Info("stopped")
	return nil
}

// storeSink is what the store tells: doorbells and users to the hub,
// presence changes to the tracker.
type storeSink struct {
	*hub.Hub
	*presence.Tracker
}

func printDemo(w io.Writer, secret []byte, port int) {
	user, _ := auth.Mint(secret, auth.Claims{UserID: "demo-user", Name: "Demo User", Projects: []string{"demo-project"}}, 24*time.Hour)
	service, _ := auth.Mint(secret, auth.Claims{UserID: "demo-backend", Role: "service"}, 24*time.Hour)
	base := fmt.Sprintf("http://localhost:%d", port)
	fmt.Fprintf(w, `
Saga push is running in embedded mode (no DATABASE_URL): events live in memory.

  Demo page:   %s/#token=%s&project=demo-project&serviceToken=%s
  WebSocket:   websocat -H 'Authorization: Bearer %s' '%s/ws'
                 then send {"event":"join_project","data":{"projectId":"demo-project"},"ack":1}
  Publish:     curl -X POST %s/api/events -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' \
                 -d '{"projectId":"demo-project","event":"story_uploaded","data":{"story":{"id":"s1","title":"First day of school"}}}'
  Health:      curl %s/api/websocket/health

These tokens are signed with a secret generated at start; set JWT_SECRET to keep them across restarts.
`, base, user, service, user, strings.Replace(base, "http", "ws", 1), base, service, base)
}

func migrate(stderr io.Writer) error {
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		return errors.New("DATABASE_URL is not set")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := store.Migrate(ctx, url); err != nil {
		return err
	}
	fmt.Fprintln(stderr, "migrations applied")
	return nil
}

func token(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	user := fs.String("user", "", "user id (required)")
	name := fs.String("name", "", "display name")
	role := fs.String("role", "", "admin or service")
	projects := fs.String("projects", "", "comma list of project ids (embedded mode access)")
	ttl := fs.Duration("ttl", 15*time.Minute, "lifetime")
	if err := fs.Parse(args); err != nil {
		return err
	}
	secret := os.Getenv("JWT_SECRET")
	switch {
	case *user == "":
		return errors.New("--user is required")
	case secret == "":
		return errors.New("JWT_SECRET is not set")
	case *role != "" && *role != "admin" && *role != "service":
		return errors.New("--role must be admin or service")
	}
	c := auth.Claims{UserID: *user, Name: *name, Role: *role}
	for _, p := range strings.Split(*projects, ",") {
		if p = strings.TrimSpace(p); p != "" {
			c.Projects = append(c.Projects, p)
		}
	}
	t, err := auth.Mint([]byte(secret), c, *ttl)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, t)
	return nil
}
