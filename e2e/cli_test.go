package e2e

// The command line (docs/protocol.md section 2): help, version, errors,
// and the token command that embedded mode prints.

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/saga-family/sagapush/internal/testsupport"
)

// runBin runs the binary with args and the clean environment plus env, and
// returns stdout, stderr and the exit code.
func runBin(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Env = append(testsupport.CleanEnv(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("%v: %v", args, err)
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

// documentedSettings are the variables of docs/protocol.md section 2's
// settings table.
func documentedSettings(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	sec := string(b)
	sec = sec[strings.Index(sec, "\n## 2."):]
	sec = sec[:strings.Index(sec[1:], "\n## ")]
	var names []string
	for _, line := range strings.Split(sec, "\n") {
		first, _, ok := strings.Cut(strings.TrimPrefix(line, "| "), " |")
		if !ok || !strings.HasPrefix(line, "| `") {
			continue
		}
		for _, m := range regexp.MustCompile("`([A-Z][A-Z0-9_]+)`").FindAllStringSubmatch(first, -1) {
			names = append(names, m[1])
		}
	}
	if len(names) < 30 {
		t.Fatalf("found %d settings in docs/protocol.md section 2: %v", len(names), names)
	}
	return names
}

func TestCLIHelp(t *testing.T) {
	t.Parallel()
	names := documentedSettings(t)
	for _, args := range [][]string{{"--help"}, {"help"}, {"-h"}} {
		out, stderr, code := runBin(t, nil, args...)
		if code != 0 || stderr != "" {
			t.Errorf("%v: exit %d, stderr %q; want 0 and nothing", args, code, stderr)
		}
		for _, cmd := range []string{"serve", "migrate", "token", "version"} {
			if !strings.Contains(out, "sagapush "+cmd) && !strings.Contains(out, "["+cmd+"]") {
				t.Errorf("%v does not list %s:\n%s", args, cmd, out)
			}
		}
		for _, n := range names {
			if !regexp.MustCompile(`(?m)^\s+` + n + `\s+\S+\s+\S`).MatchString(out) {
				t.Errorf("%v: no line for %s with a default and a meaning", args, n)
			}
		}
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"serve", "--help"}, []string{"-port", "-no-migrate", "JWT_SECRET", "PRESENCE_TTL_MS"}},
		{[]string{"token", "--help"}, []string{"-user", "-projects", "-ttl", "JWT_SECRET"}},
		{[]string{"help", "token"}, []string{"-user"}},
		{[]string{"version", "--help"}, []string{"sagapush version"}},
	} {
		out, stderr, code := runBin(t, nil, tc.args...)
		if code != 0 || stderr != "" {
			t.Errorf("%v: exit %d, stderr %q", tc.args, code, stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: no %q in\n%s", tc.args, w, out)
			}
		}
	}
	out, stderr, code := runBin(t, nil, "frobnicate")
	if code != 2 || out != "" || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, `sagapush: unknown command "frobnicate"`) || !strings.Contains(stderr, "sagapush help") {
		t.Errorf("unknown command: exit %d, stdout %q, stderr %q; want 2 and one line with a hint", code, out, stderr)
	}
}

// migrate --help needs no database.
func TestCLIMigrateHelp(t *testing.T) {
	t.Parallel()
	out, stderr, code := runBin(t, []string{"DATABASE_URL="}, "migrate", "--help")
	if code != 0 || stderr != "" || !strings.Contains(out, "DATABASE_URL") {
		t.Errorf("migrate --help: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
}

// version names the commit the binary was built from, when the go command
// stamped one (not from a git worktree, nor with -buildvcs=false).
func TestCLIVersion(t *testing.T) {
	t.Parallel()
	out, stderr, code := runBin(t, nil, "version")
	if code != 0 || stderr != "" {
		t.Fatalf("version: exit %d, stderr %q", code, stderr)
	}
	if !regexp.MustCompile(`^sagapush \S+\ncommit \S+.*\ngo\d`).MatchString(out) {
		t.Errorf("version:\n%s", out)
	}
	info, err := exec.Command("go", "version", "-m", binPath).Output()
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`vcs.revision=(\w+)`).FindSubmatch(info); m != nil {
		if !strings.Contains(out, "commit "+string(m[1])) {
			t.Errorf("version:\n%s\nwant commit %s", out, m[1])
		}
	} else if !strings.Contains(out, "commit unknown") {
		t.Errorf("version of a binary without vcs.revision:\n%s", out)
	}
}

// An error is one line, prefixed once: no "migrate: migrate:".
func TestCLIErrorPrefix(t *testing.T) {
	t.Parallel()
	refused := "DATABASE_URL=postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=5"
	for _, args := range [][]string{{"migrate"}, {"serve"}} {
		_, stderr, code := runBin(t, []string{refused, "JWT_SECRET=x", "PORT=0"}, args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		last := lines[len(lines)-1]
		if code != 1 || !strings.HasPrefix(last, "sagapush: migrate: ") || strings.Count(stderr, "sagapush:") != 1 || strings.Contains(last, "migrate: migrate:") {
			t.Errorf("%v with a refused database: exit %d, stderr %q; want 1 and one 'sagapush: migrate: ...' line", args, code, stderr)
		}
	}
	_, stderr, code := runBin(t, []string{"DATABASE_URL="}, "migrate")
	if code != 1 || stderr != "sagapush: migrate: DATABASE_URL is not set\n" {
		t.Errorf("migrate without DATABASE_URL: exit %d, stderr %q", code, stderr)
	}
}

var tokenCommandRE = regexp.MustCompile(`(?m)^\s*More tokens:\s+(JWT_SECRET=\S+ .* token --user alice --name Alice --projects demo-project)$`)

// Embedded mode without a key prints a token command that, run as printed,
// gives a token the running server accepts for demo-project.
func TestEmbeddedDemoTokenCommand(t *testing.T) {
	t.Parallel()
	s := startServer(t, "JWT_SECRET=")
	var line string
	eventually(t, waitTimeout, "the demo's token command on stdout", func() bool {
		m := tokenCommandRE.FindStringSubmatch(s.stdout.String())
		if m != nil {
			line = m[1]
		}
		return m != nil
	})
	if !strings.Contains(s.stdout.String(), "project=demo-project") {
		t.Errorf("the demo URL is not for demo-project:\n%s", s.stdout.String())
	}
	if strings.Contains(s.stderr.String(), strings.Fields(line)[0]) {
		t.Error("the generated secret is in the log")
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", line)
	cmd.Env = testsupport.CleanEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v %s", line, err, errb.String())
	}
	tok := strings.TrimSpace(out.String())
	c := dialWS(t, s, tok)
	if d := c.join(t, "demo-project"); d == nil {
		t.Error("no joined_project")
	}
}
