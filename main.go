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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/saga-family/sagapush/auth"
	"github.com/saga-family/sagapush/handlers"
	"github.com/saga-family/sagapush/hub"
	"github.com/saga-family/sagapush/internal/httpguard"
	"github.com/saga-family/sagapush/internal/presence"
	"github.com/saga-family/sagapush/internal/session"
	"github.com/saga-family/sagapush/store"
	"github.com/saga-family/sagapush/transports"
	"github.com/saga-family/sagapush/web"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 {
		switch a := args[0]; {
		case a == "-h" || a == "-help" || a == "--help":
			cmd, args = "help", args[1:]
		case !strings.HasPrefix(a, "-"):
			cmd, args = a, args[1:]
		}
	}
	var err error
	switch cmd {
	case "serve":
		err = serve(args, stdout, stderr)
	case "migrate":
		err = migrate(args, stdout, stderr)
	case "token":
		err = token(args, stdout)
	case "demo":
		err = demo(args, stdout)
	case "version":
		err = version(args, stdout)
	case "healthcheck":
		err = healthcheck(args, stdout)
	case "help":
		switch len(args) {
		case 0:
			printHelp(stdout)
		case 1:
			err = printCommandHelp(stdout, args[0], nil)
		default:
			err = usageError{errors.New("help takes at most one command")}
		}
	default:
		err = unknownCommand(cmd)
	}
	if err == nil {
		return 0
	}
	// The one place an error is prefixed: the functions above return
	// errors without the program's name.
	fmt.Fprintln(stderr, "sagapush:", err)
	if errors.As(err, new(usageError)) {
		return 2
	}
	return 1
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
	Proxies         httpguard.Proxies
	ShutdownGrace   time.Duration
	ShutdownDelay   time.Duration
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
	LogFormat       string
}

func loadConfig() (config, error) {
	var errs []error
	ms := func(name string) time.Duration {
		return time.Duration(intEnv(name, &errs)) * time.Millisecond
	}
	c := config{
		Port:            envOr("PORT"),
		DatabaseURL:     env("DATABASE_URL"),
		JWTSecret:       env("JWT_SECRET"),
		JWTPublicKey:    env("JWT_PUBLIC_KEY_FILE"),
		JWTJWKSURL:      env("JWT_JWKS_URL"),
		JWTIssuer:       env("JWT_ISSUER"),
		JWTAudience:     env("JWT_AUDIENCE"),
		JWTLeeway:       ms("JWT_LEEWAY_MS"),
		PingInterval:    ms("WEBSOCKET_PING_INTERVAL"),
		PingTimeout:     ms("WEBSOCKET_PING_TIMEOUT"),
		RateWindow:      ms("RATE_LIMIT_WINDOW_MS"),
		RateMax:         intEnv("RATE_LIMIT_MAX_EVENTS", &errs),
		SSEHeartbeat:    ms("SSE_HEARTBEAT_MS"),
		MaxConnsPerUser: intEnv("MAX_CONNECTIONS_PER_USER", &errs),
		HandshakeRate:   float64(intEnv("HANDSHAKES_PER_SECOND", &errs)),
		HandshakeBurst:  intEnv("HANDSHAKE_BURST", &errs),
		ShutdownGrace:   ms("SHUTDOWN_GRACE_MS"),
		ShutdownDelay:   ms("SHUTDOWN_DELAY_MS"),
		ReconnectAfter:  ms("RECONNECT_AFTER_MS"),
		AutoMigrate:     envOr("AUTO_MIGRATE") != "false",
		Retention:       time.Duration(intEnv("EVENT_RETENTION_HOURS", &errs)) * time.Hour,
		CompressAbove:   intEnv("WS_COMPRESS_ABOVE", &errs),
		QueueLimit:      intEnv("QUEUE_LIMIT", &errs),
		QueueLimitBytes: intEnv("QUEUE_LIMIT_BYTES", &errs),
		HistorySize:     intEnv("ROOM_HISTORY", &errs),
		MaxReplay:       intEnv("MAX_REPLAY", &errs),
		MemoryHistory:   intEnv("EMBEDDED_HISTORY", &errs),
		AuthTimeout:     ms("AUTH_TIMEOUT_MS"),
		TicketTTL:       ms("TICKET_TTL_MS"),
		AllowTokenInURL: boolEnv("ALLOW_TOKEN_IN_URL", &errs),
		MetricsToken:    env("METRICS_TOKEN"),
		ConnsPerAddress: intEnv("HTTP_CONNS_PER_ADDRESS", &errs),
		PresenceGrace:   ms("PRESENCE_GRACE_MS"),
		PresenceTTL:     ms("PRESENCE_TTL_MS"),
		PresenceMax:     intEnv("PRESENCE_MAX_USERS", &errs),
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
	proxies, err := httpguard.ParseProxies(env("TRUSTED_PROXIES"))
	if err != nil {
		errs = append(errs, fmt.Errorf("TRUSTED_PROXIES: %w", err))
	}
	c.Proxies = proxies
	for _, o := range strings.Split(env("WEBSOCKET_CORS_ORIGIN"), ",") {
		if o = strings.TrimSpace(o); o != "" {
			c.Origins = append(c.Origins, o)
		}
	}
	c.LogLevel = slog.LevelInfo
	if env("DEBUG") == "1" {
		c.LogLevel = slog.LevelDebug
	}
	if lv := env("LOG_LEVEL"); lv != "" {
		if err := c.LogLevel.UnmarshalText([]byte(lv)); err != nil {
			errs = append(errs, fmt.Errorf("LOG_LEVEL: %w", err))
		}
	}
	switch c.LogFormat = envOr("LOG_FORMAT"); c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("LOG_FORMAT must be text or json, not %q", c.LogFormat))
	}
	return c, errors.Join(errs...)
}

// intEnv reads an integer setting, its default (from settings) when unset.
func intEnv(name string, errs *[]error) int {
	return parseEnv(name, intDefault(name), "a non-negative integer", errs, func(v string) (int, bool) {
		n, err := strconv.Atoi(v)
		return n, err == nil && n >= 0
	})
}

// boolEnv is strict: a typo in a security switch must not pass as its default.
func boolEnv(name string, errs *[]error) bool {
	def, err := strconv.ParseBool(settingDefault(name))
	if err != nil {
		panic("setting " + name + ": default is not a bool")
	}
	return parseEnv(name, def, "true or false", errs, func(v string) (bool, bool) {
		b, err := strconv.ParseBool(v)
		return b, err == nil
	})
}

// parseEnv reads the variable with parse, def when it is unset; a value
// that parse refuses is reported in errs.
func parseEnv[T any](name string, def T, want string, errs *[]error, parse func(string) (T, bool)) T {
	v := env(name)
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

func serveFlags() (fs *flag.FlagSet, port *string, noMigrate *bool) {
	fs = flag.NewFlagSet("serve", flag.ContinueOnError)
	port = fs.String("port", "", "HTTP port (overrides PORT)")
	noMigrate = fs.Bool("no-migrate", false, "do not apply migrations at start (as AUTO_MIGRATE=false)")
	return fs, port, noMigrate
}

func serve(args []string, stdout, stderr io.Writer) error {
	fs, port, noMigrate := serveFlags()
	if done, err := parseFlags(fs, args, stdout); done || err != nil {
		return err
	}
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	if *port != "" {
		cfg.Port = *port
	}
	logOpts := &slog.HandlerOptions{Level: cfg.LogLevel}
	var logHandler slog.Handler = slog.NewTextHandler(stderr, logOpts)
	if cfg.LogFormat == "json" {
		// One object per line, for log shippers; durations as text ("10s"),
		// not nanoseconds.
		logOpts.ReplaceAttr = func(_ []string, a slog.Attr) slog.Attr {
			if a.Value.Kind() == slog.KindDuration {
				return slog.String(a.Key, a.Value.Duration().String())
			}
			return a
		}
		logHandler = slog.NewJSONHandler(stderr, logOpts)
	}
	log := slog.New(logHandler)
	slog.SetDefault(log)
	if env("GOGC") == "" {
		// Idle connections are most of this service's memory; a tighter
		// heap goal keeps less of it resident per connection, at no
		// throughput cost the bench measures (docs/performance.md).
		debug.SetGCPercent(intDefault("GOGC"))
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var st store.Store
	if cfg.DatabaseURL != "" {
		if cfg.AutoMigrate && !*noMigrate {
			if err := store.Migrate(ctx, cfg.DatabaseURL); err != nil {
				return fmt.Errorf("migrate: %w", err) // the only prefix: store.Migrate adds none
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

	// A secret generated here signs only this process's demo tokens: the
	// demo prints it (stdout, never the log) so that its token command works.
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
	sessions := session.NewManager(session.Options{Hub: h, Auth: authn, AuthTimeout: cfg.AuthTimeout, RateWindow: cfg.RateWindow, Leeway: cfg.JWTLeeway, Logger: log})
	handshakes := httpguard.NewAddrLimiter(cfg.HandshakeRate, cfg.HandshakeBurst, cfg.Proxies)
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
	conns := httpguard.NewConnLimiter(cfg.ConnsPerAddress, cfg.Proxies)
	var stopping atomic.Bool // set at SIGTERM: /readyz fails from then on
	ready := func(ctx context.Context) error {
		if stopping.Load() {
			return errors.New("shutting down")
		}
		if database != nil {
			if err := database.Healthy(ctx); err != nil {
				return errors.New("database or LISTEN connection down")
			}
		}
		return nil
	}
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
	if ls, ok := st.(interface{ ListenerStats() store.ListenerStats }); ok && database != nil {
		reg.MustRegister(newStoreMetrics(ls.ListenerStats, database.Healthy))
	}
	e := handlers.New(handlers.Config{
		Auth: authn, Stats: h, Publisher: st, UserEvents: h, Tickets: tickets, Database: database,
		Presence: pres, Members: st, Ready: ready,
		WS: ws, SSE: sse, Origins: cfg.Origins,
		Gatherer: reg, MetricsToken: cfg.MetricsToken, Unauthenticated: ws.Unauthenticated,
		Web: web.Files, Logger: log, Pprof: env("PPROF") == "1", ClientIP: cfg.Proxies.ClientIP(),
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
	switch {
	case embeddedDemo:
		printDemo(stdout, []byte(cfg.JWTSecret), ln.Addr().(*net.TCPAddr).Port)
	case st.Mode() != "embedded":
		// What a newcomer on the Postgres path needs next.
		fmt.Fprintf(stdout, "Saga push is running on port %d with Postgres. A demo family and its page's URLs: %s demo\n"+
			"A token for a user of the users table: %s token --user <users.id> (JWT_SECRET); health: curl http://localhost:%d/api/websocket/health\n",
			ln.Addr().(*net.TCPAddr).Port, selfCommand(), selfCommand(), ln.Addr().(*net.TCPAddr).Port)
	}

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	stopping.Store(true)
	if cfg.ShutdownDelay > 0 {
		// New clients go elsewhere once the balancer sees /readyz fail;
		// the connected ones are told only after this.
		log.Info("not ready; draining", "delay", cfg.ShutdownDelay)
		time.Sleep(cfg.ShutdownDelay)
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

// printDemo prints what works against this server: the demo page, a
// WebSocket and a publish line, and a token command. The token command
// carries the generated secret: it signs only this process's demo tokens
// and dies with it, and the service token printed above already grants as
// much. It goes to stdout, never the log, and never when an operator set a
// key (then this is not called).
func printDemo(w io.Writer, secret []byte, port int) {
	user, _ := auth.Mint(secret, auth.Claims{UserID: "demo-user", Name: "Demo User", Projects: []string{demoProject}}, 24*time.Hour)
	service, _ := auth.Mint(secret, auth.Claims{UserID: "demo-backend", Role: "service"}, 24*time.Hour)
	base := fmt.Sprintf("http://localhost:%d", port)
	fmt.Fprintf(w, `
Saga push is running in embedded mode (no DATABASE_URL): events live in memory.

  Demo page:   %s/#token=%s&project=%s&serviceToken=%s
  WebSocket:   websocat -H 'Authorization: Bearer %s' '%s/ws'
                 then send {"event":"join_project","data":{"projectId":"%s"},"ack":1}
  Publish:     curl -X POST %s/api/events -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' \
                 -d '{"projectId":"%s","event":"story_uploaded","data":{"story":{"id":"s1","title":"First day of school"}}}'
  Health:      curl %s/api/websocket/health
  More tokens: JWT_SECRET=%s %s token --user alice --name Alice --projects %s

These tokens are signed with a secret generated at start, for this run only; set JWT_SECRET to keep them across restarts.
`, base, user, demoProject, service, user, strings.Replace(base, "http", "ws", 1), demoProject, base, service, demoProject, base,
		secret, selfCommand(), demoProject)
}

// demoProject is the project of the demo's tokens and page.
const demoProject = "demo-project"

func migrate(args []string, stdout, stderr io.Writer) error {
	if done, err := parseFlags(flag.NewFlagSet("migrate", flag.ContinueOnError), args, stdout); done || err != nil {
		return err
	}
	url := env("DATABASE_URL")
	if url == "" {
		return errors.New("migrate: DATABASE_URL is not set")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := store.Migrate(ctx, url); err != nil {
		return fmt.Errorf("migrate: %w", err) // store.Migrate's errors do not say what failed
	}
	fmt.Fprintln(stderr, "migrations applied")
	return nil
}

// tokenOptions are the token command's flags.
type tokenOptions struct {
	user, name, role, projects *string
	ttl                        *time.Duration
}

func tokenFlags() (*flag.FlagSet, tokenOptions) {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	return fs, tokenOptions{
		user:     fs.String("user", "", "user id, the token's userId and sub (required)"),
		name:     fs.String("name", "", "display name"),
		role:     fs.String("role", "", "admin or service"),
		projects: fs.String("projects", "", "comma list of project ids (embedded mode access)"),
		ttl:      fs.Duration("ttl", 15*time.Minute, "lifetime (0: no exp)"),
	}
}

func token(args []string, stdout io.Writer) error {
	fs, o := tokenFlags()
	if done, err := parseFlags(fs, args, stdout); done || err != nil {
		return err
	}
	user, name, role, projects, ttl := o.user, o.name, o.role, o.projects, o.ttl
	secret := env("JWT_SECRET")
	switch {
	case *user == "":
		return usageError{errors.New("token: --user is required (see 'sagapush token --help')")}
	case secret == "":
		return errors.New("token: JWT_SECRET is not set")
	case *role != "" && *role != "admin" && *role != "service":
		return usageError{errors.New("token: --role must be admin or service")}
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

func demoFlags() (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	return fs, fs.String("url", "", "the server's URL as a browser reaches it (default http://localhost:PORT)")
}

// demo is the Postgres path's first step: it migrates DATABASE_URL, seeds
// a demo family (store.Demo) and prints, for the server that `serve` will
// start, a demo page URL for each member, a service token and a change
// that fires a trigger. Tokens last a day and are signed with JWT_SECRET, as
// the Saga backend signs its users' tokens in production.
func demo(args []string, stdout io.Writer) error {
	fs, url := demoFlags()
	if done, err := parseFlags(fs, args, stdout); done || err != nil {
		return err
	}
	dbURL, secret := env("DATABASE_URL"), env("JWT_SECRET")
	switch {
	case dbURL == "":
		return errors.New("demo: DATABASE_URL is not set (without a database, `serve` alone prints a demo)")
	case secret == "":
		return errors.New("demo: JWT_SECRET is not set: the demo's tokens are signed with it, and serve must verify them with it")
	}
	base := *url
	if base == "" {
		base = "http://localhost:" + envOr("PORT")
	}
	base = strings.TrimSuffix(base, "/")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := store.Migrate(ctx, dbURL); err != nil {
		return fmt.Errorf("demo: migrate: %w", err)
	}
	f := store.Demo
	if err := store.SeedDemo(ctx, dbURL, f); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	mint := func(c auth.Claims) string {
		t, _ := auth.Mint([]byte(secret), c, 24*time.Hour)
		return t
	}
	// Names come from users.name: the tokens carry the id only, as Saga's do.
	fac := mint(auth.Claims{UserID: f.FacilitatorID})
	st := mint(auth.Claims{UserID: f.StorytellerID})
	svc := mint(auth.Claims{UserID: "demo-backend", Role: auth.RoleService})
	fmt.Fprintf(stdout, `Demo family seeded: project %q (%s), facilitator %q (%s), storyteller %q (%s).
Start the server (sagapush serve), then open:

  As the facilitator: %s/#token=%s&project=%s&serviceToken=%s
  As the storyteller: %s/#token=%s&project=%s

  Service token (publish, stats): %s
  A story from the database:      psql "$DATABASE_URL" -c "INSERT INTO stories (project_id, title) VALUES ('%s', 'First day of school')"

Membership: a user may join a project when it is the project's facilitator_id or storyteller_id, or has a project_roles row for it.
`, f.ProjectID, f.ProjectName, f.FacilitatorID, f.FacilitatorName, f.StorytellerID, f.StorytellerName,
		base, fac, f.ProjectID, svc, base, st, f.ProjectID, svc, f.ProjectID)
	return nil
}
