package main

// The command line: the settings table (the one list of environment
// variables, read through env and its typed twins so that none escapes the
// help), the help of each command, and version.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// setting is one environment variable: its default as text ("" when unset
// means none) and what it means, in one line.
type setting struct{ name, def, meaning string }

// settings is every environment variable the binary reads. loadConfig takes
// defaults from here and env refuses a name not listed, so a new variable
// cannot reach the code without reaching the help; main_test.go checks that
// docs/protocol.md section 2 and the README list each.
var settings = []setting{
	{"PORT", "3001", "HTTP port (0: any free port, logged at start)"},
	{"DATABASE_URL", "", "Postgres URL; unset: embedded mode (events in memory)"},
	{"JWT_SECRET", "", "HMAC key (HS256/384/512); also what `token` signs with"},
	{"JWT_PUBLIC_KEY_FILE", "", "PEM public key or certificate (RSA, ECDSA, Ed25519)"},
	{"JWT_JWKS_URL", "", "JWKS endpoint; key chosen by kid"},
	{"JWT_ISSUER", "", "when set, a token's iss must equal it"},
	{"JWT_AUDIENCE", "", "when set, a token's aud must contain it"},
	{"JWT_LEEWAY_MS", "30000", "clock skew allowed on exp/nbf, at most 30000 (0: none)"},
	{"WEBSOCKET_CORS_ORIGIN", "", "allowed browser origins (comma list, * for any); unset: same origin only"},
	{"WEBSOCKET_PING_INTERVAL", "25000", "ms between WebSocket pings"},
	{"WEBSOCKET_PING_TIMEOUT", "60000", "ms without a client frame or pong before a WebSocket is dropped"},
	{"RATE_LIMIT_WINDOW_MS", "60000", "rate-limit window"},
	{"RATE_LIMIT_MAX_EVENTS", "100", "client frames per user per window"},
	{"SSE_HEARTBEAT_MS", "15000", "ms between SSE comment heartbeats"},
	{"MAX_CONNECTIONS_PER_USER", "100", "open connections of one user on one instance"},
	{"HANDSHAKES_PER_SECOND", "1000", "new connections per client address per second (0: no limit)"},
	{"HANDSHAKE_BURST", "1000", "burst of new connections per client address"},
	{"SHUTDOWN_GRACE_MS", "10000", "how long a shutdown waits for connections to close"},
	{"SHUTDOWN_DELAY_MS", "0", "after SIGTERM, ms with /readyz failing before clients are told to go (a balancer drains meanwhile)"},
	{"RECONNECT_AFTER_MS", "2000", "the reconnectAfterMs hint sent in server_shutdown"},
	{"AUTO_MIGRATE", "true", "serve applies pending migrations at start (false: not)"},
	{"EVENT_RETENTION_HOURS", "168", "database mode: events older than this are pruned"},
	{"WS_COMPRESS_ABOVE", "1024", "bytes; smaller messages are never compressed (0: no compression)"},
	{"QUEUE_LIMIT", "4096", "messages queued for one connection before it is closed with 4001"},
	{"QUEUE_LIMIT_BYTES", "4194304", "bytes queued for one connection before it is closed with 4001"},
	{"ROOM_HISTORY", "256", "recent events per project kept in memory for fast resume"},
	{"MAX_REPLAY", "2000", "most events replayed on one resume; more answers recovered: false"},
	{"EMBEDDED_HISTORY", "10000", "embedded mode: events kept per project (at least 2)"},
	{"AUTH_TIMEOUT_MS", "10000", "time for the first auth frame when the handshake had no token"},
	{"TICKET_TTL_MS", "30000", "lifetime of a one-time connect ticket"},
	{"ALLOW_TOKEN_IN_URL", "true", "false: /ws and /sse refuse ?token= (401)"},
	{"METRICS_TOKEN", "", "when set, /metrics needs Authorization: Bearer <it>; unset: public"},
	{"TRUSTED_PROXIES", "", "reverse proxies (IPs, CIDRs, comma list) whose X-Forwarded-For names the client for the per-address limits"},
	{"HTTP_CONNS_PER_ADDRESS", "512", "plain HTTP connections one client IP may hold at once (0: no limit)"},
	{"PRESENCE_GRACE_MS", "5000", "ms a user stays online after its last connection to a project left"},
	{"PRESENCE_TTL_MS", "30000", "ms within which a dead instance's users go offline elsewhere (at least 500)"},
	{"PRESENCE_MAX_USERS", "100", "above this many online users a project's members get no presence events"},
	{"LOG_LEVEL", "info", "debug, info, warn or error"},
	{"LOG_FORMAT", "text", "text (key=value) or json (one object per line)"},
	{"DEBUG", "", "1: same as LOG_LEVEL=debug"},
	{"PPROF", "", "1: mount /debug/pprof (profiling only)"},
	{"GOGC", "50", "Go's GC target; the binary sets 50 when unset (Go's own default is 100)"},
}

// settingDefault is name's default; a name missing from settings is a bug
// that main_test.go and every start catch at once.
func settingDefault(name string) string {
	for _, s := range settings {
		if s.name == name {
			return s.def
		}
	}
	panic("setting " + name + " is not in the settings table (cli.go)")
}

// env reads a listed environment variable; the only os.Getenv of the binary
// (main_test.go checks), so that the settings table stays complete.
func env(name string) string {
	settingDefault(name)
	return os.Getenv(name)
}

// envOr is name's value, or its default when unset.
func envOr(name string) string {
	if v := env(name); v != "" {
		return v
	}
	return settingDefault(name)
}

// intDefault is the default of an integer setting.
func intDefault(name string) int {
	n, err := strconv.Atoi(settingDefault(name))
	if err != nil {
		panic("setting " + name + ": default is not an integer")
	}
	return n
}

// usageError is a command line the binary does not understand: exit code
// 2, like the flag package's.
type usageError struct{ error }

// command is one subcommand, for the help.
type command struct {
	name, synopsis, about string
	short                 string   // the synopsis in the command list, when shorter
	env                   []string // the settings it reads; nil: all of them
}

var commands = []command{
	{"serve", "sagapush [serve] [--port N] [--no-migrate]", "run the server (the default command)", "", nil},
	{"migrate", "sagapush migrate", "apply the database migrations to DATABASE_URL and exit", "", []string{"DATABASE_URL"}},
	{"token", "sagapush token --user ID [--name N] [--role admin|service] [--projects P1,P2] [--ttl 15m]",
		"print an HS256 token signed with JWT_SECRET (for development and the demo)", "sagapush token --user ID [flags]", []string{"JWT_SECRET"}},
	{"demo", "sagapush demo [--url http://localhost:PORT]",
		"with DATABASE_URL and JWT_SECRET: migrate, seed a demo family and print its demo page's URLs and tokens", "sagapush demo [--url URL]", []string{"DATABASE_URL", "JWT_SECRET", "PORT"}},
	{"healthcheck", "sagapush healthcheck [--ready] [--url http://127.0.0.1:PORT]",
		"ask a running server's /healthz (--ready: /readyz) and exit 0 when it answers 200: a container's health check with no shell or curl", "sagapush healthcheck [--ready]", []string{"PORT"}},
	{"version", "sagapush version", "print the version and the commit it was built from", "", []string{}},
	{"help", "sagapush help [command]", "this help, or one command's", "", []string{}},
}

// printHelp is the whole help: commands, then every setting.
func printHelp(w io.Writer) {
	fmt.Fprintln(w, "Saga push, the real-time push service of Saga (WebSocket and SSE).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range commands {
		syn := c.synopsis
		if c.short != "" {
			syn = c.short
		}
		fmt.Fprintf(tw, "  %s\t%s\n", syn, c.about)
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "'sagapush COMMAND --help' shows a command's flags.")
	fmt.Fprintln(w)
	printSettings(w, nil)
}

// printSettings lists the settings named (nil: all) with default and
// meaning.
func printSettings(w io.Writer, names []string) {
	fmt.Fprintln(w, "Environment (docs/protocol.md section 2):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  VARIABLE\tDEFAULT\tMEANING")
	for _, s := range settings {
		if names != nil && !contains(names, s.name) {
			continue
		}
		def := s.def
		if def == "" {
			def = "unset"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", s.name, def, s.meaning)
	}
	tw.Flush()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// printCommandHelp is one command's help: its synopsis, flags and settings.
func printCommandHelp(w io.Writer, name string, fs *flag.FlagSet) error {
	for _, c := range commands {
		if c.name != name {
			continue
		}
		fmt.Fprintf(w, "usage: %s\n\n%s.\n", c.synopsis, strings.ToUpper(c.about[:1])+c.about[1:])
		if fs == nil {
			fs = commandFlags(name)
		}
		if fs != nil && hasFlags(fs) {
			fmt.Fprintln(w, "\nFlags:")
			fs.SetOutput(w)
			fs.PrintDefaults()
			fs.SetOutput(io.Discard)
		}
		if c.env == nil || len(c.env) > 0 {
			fmt.Fprintln(w)
			printSettings(w, c.env)
		}
		return nil
	}
	return unknownCommand(name)
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

func unknownCommand(name string) error {
	return usageError{fmt.Errorf("unknown command %q (commands: serve, migrate, token, demo, healthcheck, version, help; see 'sagapush help')", name)}
}

// commandFlags is a command's flag set, for its help.
func commandFlags(name string) *flag.FlagSet {
	switch name {
	case "serve":
		fs, _, _ := serveFlags()
		return fs
	case "token":
		fs, _ := tokenFlags()
		return fs
	case "demo":
		fs, _ := demoFlags()
		return fs
	case "healthcheck":
		fs, _, _ := healthcheckFlags()
		return fs
	}
	return nil
}

// parseFlags parses a command's flags. --help prints the command's help on
// stdout and answers done; a bad flag is a usageError, reported once by run
// (the flag package's own printing is silenced).
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) (done bool, err error) {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err = fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return true, printCommandHelp(stdout, fs.Name(), fs)
	}
	if err != nil {
		return false, usageError{fmt.Errorf("%s: %w (see 'sagapush %s --help')", fs.Name(), err, fs.Name())}
	}
	if fs.NArg() > 0 {
		return false, usageError{fmt.Errorf("%s: unexpected argument %q (see 'sagapush %s --help')", fs.Name(), fs.Arg(0), fs.Name())}
	}
	return false, nil
}

// version prints the main module's version and the commit it was built
// from, as the go command stamped them (vcs.* build settings). `go run` and
// builds outside a checkout have no commit: it says so.
func version(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	if done, err := parseFlags(fs, args, stdout); done || err != nil {
		return err
	}
	info, ok := debug.ReadBuildInfo()
	writeVersion(stdout, info, ok)
	return nil
}

// writeVersion is version's text for info (ok false: none).
func writeVersion(stdout io.Writer, info *debug.BuildInfo, ok bool) {
	if !ok {
		fmt.Fprintf(stdout, "sagapush (no build information) %s\n", runtime.Version())
		return
	}
	vcs := map[string]string{}
	for _, s := range info.Settings {
		vcs[s.Key] = s.Value
	}
	fmt.Fprintf(stdout, "sagapush %s\n", info.Main.Version)
	if rev := vcs["vcs.revision"]; rev != "" {
		line := "commit " + rev
		if t := vcs["vcs.time"]; t != "" {
			line += " (" + t + ")"
		}
		if vcs["vcs.modified"] == "true" {
			line += ", with uncommitted changes"
		}
		fmt.Fprintln(stdout, line)
	} else {
		// go run, -buildvcs=false, a git worktree (.git a file: the go
		// command stamps only a .git directory) or a source tarball.
		fmt.Fprintln(stdout, "commit unknown (built without VCS information: go run, -buildvcs=false or a git worktree)")
	}
	fmt.Fprintf(stdout, "%s %s/%s\n", info.GoVersion, runtime.GOOS, runtime.GOARCH)
}

// selfCommand is how to run this binary again from the terminal that
// started it, for the commands the demo prints: the path it was started
// with, or `go run .` for a binary of go run (removed when it exits).
func selfCommand() string {
	exe := os.Args[0]
	if strings.Contains(filepath.ToSlash(exe), "/go-build") {
		return "go run ."
	}
	return shellQuote(exe)
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func healthcheckFlags() (fs *flag.FlagSet, ready *bool, url *string) {
	fs = flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	ready = fs.Bool("ready", false, "ask /readyz (database and listener up, not shutting down) instead of /healthz (the process serves)")
	url = fs.String("url", "", "the server's base URL (default http://127.0.0.1:PORT)")
	return fs, ready, url
}

// healthcheck is for container images without a shell: Docker's
// HEALTHCHECK runs the binary itself. It answers within 3 s.
func healthcheck(args []string, stdout io.Writer) error {
	fs, ready, url := healthcheckFlags()
	if done, err := parseFlags(fs, args, stdout); done || err != nil {
		return err
	}
	base := *url
	if base == "" {
		base = "http://127.0.0.1:" + envOr("PORT")
	}
	path := "/healthz"
	if *ready {
		path = "/readyz"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+path, nil)
	if err != nil {
		return usageError{fmt.Errorf("healthcheck: %w", err)}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s answered %d: %s", path, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	fmt.Fprintf(stdout, "%s: %s\n", path, strings.TrimSpace(string(body)))
	return nil
}
