package main

// The settings table is complete: every environment read goes through env,
// every name read is listed, and the help, docs/protocol.md section 2 and
// the README name each one. These fail when a variable is added without
// its help and documentation.

import (
	"bytes"
	"go/ast"
	"go/parser"
	gotoken "go/token"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/saga-family/sagapush/internal/testsupport"
)

// envReads parses the package's non-test files and returns the names
// passed to env, envOr, intEnv, boolEnv and loadConfig's ms, and every
// os.Getenv/os.LookupEnv call found outside func env.
func envReads(t *testing.T) (names []string, direct []string) {
	t.Helper()
	fset := gotoken.NewFileSet()
	for _, file := range []string{"main.go", "cli.go"} {
		f, err := parser.ParseFile(fset, file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fn, _ := d.(*ast.FuncDecl)
			ast.Inspect(d, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				switch fun := call.Fun.(type) {
				case *ast.SelectorExpr:
					if x, ok := fun.X.(*ast.Ident); ok && x.Name == "os" && (fun.Sel.Name == "Getenv" || fun.Sel.Name == "LookupEnv" || fun.Sel.Name == "Environ") {
						if fn == nil || fn.Name.Name != "env" {
							direct = append(direct, fset.Position(call.Pos()).String())
						}
					}
				case *ast.Ident:
					switch fun.Name {
					case "env", "envOr", "intEnv", "boolEnv", "ms", "settingDefault", "intDefault":
						if lit, ok := call.Args[0].(*ast.BasicLit); ok && lit.Kind == gotoken.STRING {
							name, _ := strconv.Unquote(lit.Value)
							names = append(names, name)
						}
					}
				}
				return true
			})
		}
	}
	return names, direct
}

func TestEveryEnvReadIsASetting(t *testing.T) {
	names, direct := envReads(t)
	if len(direct) > 0 {
		t.Errorf("environment read outside env (cli.go), so it escapes the help: %v", direct)
	}
	if len(names) < len(settings) {
		t.Errorf("found %d reads of %d settings: the parse missed some", len(names), len(settings))
	}
	listed := map[string]bool{}
	for _, s := range settings {
		if listed[s.name] {
			t.Errorf("%s listed twice", s.name)
		}
		listed[s.name] = true
		if s.meaning == "" {
			t.Errorf("%s has no meaning", s.name)
		}
	}
	read := map[string]bool{}
	for _, n := range names {
		read[n] = true
		if !listed[n] {
			t.Errorf("%s is read but not in the settings table (cli.go)", n)
		}
	}
	for _, s := range settings {
		if !read[s.name] {
			t.Errorf("%s is in the settings table but never read", s.name)
		}
	}
}

// loadConfig with nothing set takes every default from the table, and the
// table's defaults parse.
func TestLoadConfigDefaults(t *testing.T) {
	for _, s := range settings {
		t.Setenv(s.name, "")
	}
	c, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if c.Port != "3001" || c.QueueLimitBytes != 4<<20 || c.Retention.Hours() != 168 || !c.AllowTokenInURL || !c.AutoMigrate {
		t.Errorf("defaults %+v", c)
	}
}

func TestHelpListsEverySetting(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--help"}, &out, &errb); code != 0 || errb.Len() > 0 {
		t.Fatalf("--help: exit %d, stderr %q", code, errb.String())
	}
	help := out.String()
	for _, c := range commands {
		if !strings.Contains(help, "sagapush "+c.name) && c.name != "serve" {
			t.Errorf("help does not list %s", c.name)
		}
	}
	for _, s := range settings {
		def := s.def
		if def == "" {
			def = "unset"
		}
		found := false
		for _, line := range strings.Split(help, "\n") {
			if f := strings.Fields(line); len(f) > 2 && f[0] == s.name && f[1] == def {
				found = true
			}
		}
		if !found {
			t.Errorf("help has no line %q with its default %q", s.name, def)
		}
	}
}

// docs/protocol.md section 2 and the README's configuration name every
// setting with its default.
func TestDocsListEverySetting(t *testing.T) {
	proto, err := os.ReadFile("docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	sec := string(proto)
	sec = sec[strings.Index(sec, "\n## 2."):]
	sec = sec[:strings.Index(sec[1:], "\n## ")]
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for doc, text := range map[string]string{"docs/protocol.md section 2": sec, "README.md": string(readme)} {
		for _, s := range settings {
			if !strings.Contains(text, "`"+s.name+"`") {
				t.Errorf("%s does not name %s", doc, s.name)
			}
			if s.def != "" && !strings.Contains(text, "`"+s.def+"`") {
				t.Errorf("%s does not give %s's default %s", doc, s.name, s.def)
			}
		}
	}
}

func TestVersionText(t *testing.T) {
	var out bytes.Buffer
	writeVersion(&out, &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v1.2.3"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef"}, {Key: "vcs.time", Value: "2026-01-02T03:04:05Z"}, {Key: "vcs.modified", Value: "true"},
	}}, true)
	want := "sagapush v1.2.3\ncommit 0123456789abcdef (2026-01-02T03:04:05Z), with uncommitted changes\ngo1.26.0 "
	if !strings.HasPrefix(out.String(), want) {
		t.Errorf("version:\n%s\nwant it to start with\n%s", out.String(), want)
	}
	out.Reset()
	writeVersion(&out, &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}}, true)
	if !strings.Contains(out.String(), "commit unknown") {
		t.Errorf("version without VCS information:\n%s", out.String())
	}
}

func TestCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		code    int
		out     string // in stdout
		errLine string // stderr, whole
	}{
		{[]string{"help"}, 0, "EMBEDDED_HISTORY", ""},
		{[]string{"-h"}, 0, "sagapush version", ""},
		{[]string{"help", "token"}, 0, "-projects", ""},
		{[]string{"serve", "--help"}, 0, "-no-migrate", ""},
		{[]string{"migrate", "-h"}, 0, "DATABASE_URL", ""},
		{[]string{"version"}, 0, "commit ", ""},
		{[]string{"versions"}, 2, "", `sagapush: unknown command "versions" (commands: serve, migrate, token, demo, healthcheck, version, help; see 'sagapush help')` + "\n"},
		{[]string{"token", "--user"}, 2, "", "sagapush: token: flag needs an argument: -user (see 'sagapush token --help')\n"},
		{[]string{"migrate", "now"}, 2, "", "sagapush: migrate: unexpected argument \"now\" (see 'sagapush migrate --help')\n"},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		if code != tc.code || !strings.Contains(out.String(), tc.out) || errb.String() != tc.errLine {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit %d, %q in stdout, stderr %q", tc.args, code, out.String(), errb.String(), tc.code, tc.out, tc.errLine)
		}
	}
	t.Setenv("DATABASE_URL", "")
	var out, errb bytes.Buffer
	if code := run([]string{"migrate"}, &out, &errb); code != 1 || errb.String() != "sagapush: migrate: DATABASE_URL is not set\n" {
		t.Errorf("migrate without DATABASE_URL: exit %d, %q", code, errb.String())
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{"./bin/sagapush": "./bin/sagapush", "/a b/sagapush": "'/a b/sagapush'", "it's": `'it'\''s'`} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %q, want %q", in, got, want)
		}
	}
}

// The test servers start with none of the settings inherited.
func TestTestEnvClearsEverySetting(t *testing.T) {
	for _, s := range settings {
		if !slices.Contains(testsupport.ServerEnvKeys, s.name) {
			t.Errorf("%s is missing from testsupport.ServerEnvKeys", s.name)
		}
	}
}
