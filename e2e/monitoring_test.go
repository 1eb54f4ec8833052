package e2e

// What deploy/ gives operators, held to the server: every metric the Grafana
// dashboard and the Prometheus alert rules query is one a running server
// exports, before any client came (so its series are initialised at start).
// `make rules` checks the rules themselves with promtool.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// prometheusOwn are the metrics Prometheus makes itself for each target.
var prometheusOwn = map[string]bool{"up": true}

func TestMonitoringMetricsExist(t *testing.T) {
	t.Parallel()
	used := map[string][]string{} // metric name -> the panels and alerts that use it
	for _, q := range dashboardQueries(t, "../deploy/grafana-dashboard.json") {
		for _, name := range promQLMetrics(q.expr) {
			used[name] = append(used[name], "dashboard panel "+q.where)
		}
	}
	for _, q := range alertQueries(t, "../deploy/prometheus-alerts.yml") {
		for _, name := range promQLMetrics(q.expr) {
			used[name] = append(used[name], "alert "+q.where)
		}
	}
	if len(used) < 10 {
		t.Fatalf("only %d metrics found in deploy/'s dashboard and rules: %v", len(used), used)
	}

	// Postgres mode: the database's metrics exist only there.
	s := newPGEnv(t).start(t)
	resp := s.request(t, "GET", "/metrics", "", nil)
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	exported := exportedMetrics(string(body))
	for name, where := range used {
		if !exported[name] && !prometheusOwn[name] {
			slices.Sort(where)
			t.Errorf("%s is not exported by the server; used by %s", name, strings.Join(slices.Compact(where), ", "))
		}
	}
}

// The extraction of metric names from PromQL, as the queries of deploy/ use it.
func TestPromQLMetrics(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (transport) (sagapush_connections{job=~"$job", instance=~"$instance"})`:                      {"sagapush_connections"},
		`histogram_quantile(0.99, sum by (instance, le) (rate(sagapush_fanout_latency_seconds_bucket[5m])))`: {"sagapush_fanout_latency_seconds_bucket"},
		`sum(up{job="a"}) / count(up) > 1e3 and rate(go_x_total[$__rate_interval]) offset 1h30m`:             {"go_x_total", "up"},
		`sum(rate(a_total{reason!="shutdown", x="}{"}[1h] offset 5m)) by (instance) > bool 0.5 * b`:          {"a_total", "b"},
		`sagapush_x unless on (instance) group_left (kind) sagapush_y{kind='o\'k'}`:                          {"sagapush_x", "sagapush_y"},
	} {
		if got := promQLMetrics(expr); !slices.Equal(got, want) {
			t.Errorf("promQLMetrics(%s) = %v, want %v", expr, got, want)
		}
	}
}

type query struct{ expr, where string }

// dashboardQueries returns every "expr" of a Grafana dashboard, each with
// the title of the panel holding it.
func dashboardQueries(t *testing.T, path string) []query {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var qs []query
	var walk func(v any, title string)
	walk = func(v any, title string) {
		switch v := v.(type) {
		case map[string]any:
			if s, ok := v["title"].(string); ok {
				title = s
			}
			if e, ok := v["expr"].(string); ok {
				qs = append(qs, query{e, title})
			}
			for _, c := range v {
				walk(c, title)
			}
		case []any:
			for _, c := range v {
				walk(c, title)
			}
		}
	}
	walk(doc, "")
	return qs
}

// alertQueries returns the expr of every rule of a Prometheus rules file,
// each with the rule's name.
func alertQueries(t *testing.T, path string) []query {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Rules []struct{ Alert, Record, Expr string }
		}
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var qs []query
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			qs = append(qs, query{r.Expr, r.Alert + r.Record})
		}
	}
	return qs
}

var (
	// What is not a metric name in a query, removed in this order: string
	// literals (they may hold anything), label matchers, range selectors,
	// the label lists of grouping and matching, Grafana's variables,
	// durations (offset 1h30m) and numbers.
	promQLNoise = []*regexp.Regexp{
		regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`),
		regexp.MustCompile(`\{[^}]*\}`),
		regexp.MustCompile(`\[[^\]]*\]`),
		regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`),
		regexp.MustCompile(`\$\{?\w+\}?`),
		regexp.MustCompile(`\b(?:\d+(?:ms|[smhdwy]))+\b`),
		regexp.MustCompile(`\b\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\b`),
	}
	promQLName = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	// promQLKeywords are the words of PromQL that are neither metrics nor
	// followed by "(" like functions and aggregations.
	promQLKeywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
		"inf": true, "nan": true, "atan2": true}
)

// promQLMetrics returns the metric names a PromQL expression selects,
// sorted and each once.
func promQLMetrics(expr string) []string {
	for _, re := range promQLNoise {
		expr = re.ReplaceAllString(expr, " ")
	}
	var names []string
	for _, loc := range promQLName.FindAllStringIndex(expr, -1) {
		name := expr[loc[0]:loc[1]]
		if strings.HasPrefix(strings.TrimLeft(expr[loc[1]:], " \t\n"), "(") || promQLKeywords[strings.ToLower(name)] {
			continue // a function or an aggregation, or a keyword
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// exportedMetrics returns the names of a text exposition: each family
// (# TYPE) and each sample's name, so a histogram's _bucket, _sum and
// _count as well as its own name.
func exportedMetrics(text string) map[string]bool {
	names := map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			names[strings.Fields(rest)[0]] = true
		} else if line != "" && !strings.HasPrefix(line, "#") {
			names[promQLName.FindString(line)] = true
		}
	}
	return names
}

// Every dashboard query is valid PromQL: promtool checks each, as a
// recording rule, with Grafana's variables given values. Without promtool
// the test skips, except under CI=true (.ci/run installs Debian's
// prometheus package).
func TestDashboardPromQL(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		msg := "promtool is not installed (apt-get install -y prometheus)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	vars := strings.NewReplacer("$__rate_interval", "5m", "$job", "sagapush", "$instance", ".*")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	qs := dashboardQueries(t, "../deploy/grafana-dashboard.json")
	for i, q := range qs {
		expr := vars.Replace(q.expr)
		if strings.Contains(expr, "$") {
			t.Errorf("panel %q: a Grafana variable this test does not know: %s", q.where, q.expr)
		}
		quoted, _ := json.Marshal(expr) // a JSON string is a YAML string
		fmt.Fprintf(&rules, "      - record: dashboard:query%d\n        expr: %s\n", i, quoted)
	}
	path := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	if err := os.WriteFile(path, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput(); err != nil {
		t.Fatalf("promtool refuses a dashboard query: %v\n%s", err, out)
	}
	t.Logf("%d dashboard queries are valid PromQL", len(qs))
}
