package e2e

// The deploy files that no test here can run (this machine has no Docker
// daemon) must at least agree with each other and with the binary: the
// Compose instances are the servers deploy/nginx.conf lists, they trust
// nginx's address, the image's health check is a command the binary has,
// and the image builds with `make dist`, the step CI runs.

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func readDeploy(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDeployFilesAgree(t *testing.T) {
	t.Parallel()
	type network struct {
		IPv4 string `yaml:"ipv4_address"`
	}
	var compose struct {
		Services map[string]struct {
			Environment map[string]string  `yaml:"environment"`
			Networks    map[string]network `yaml:"networks"`
			Volumes     []string           `yaml:"volumes"`
			Build       *struct {
				Context    string `yaml:"context"`
				Dockerfile string `yaml:"dockerfile"`
			} `yaml:"build"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal([]byte(readDeploy(t, "compose.yaml")), &compose); err != nil {
		t.Fatalf("deploy/compose.yaml: %v", err)
	}
	nginxConf := readDeploy(t, "nginx.conf")
	var upstreams []string
	for _, m := range regexp.MustCompile(`(?m)^\s*server (\d+\.\d+\.\d+\.\d+:\d+)`).FindAllStringSubmatch(nginxConf, -1) {
		upstreams = append(upstreams, m[1])
	}
	nginx, ok := compose.Services["nginx"]
	if !ok {
		t.Fatal("deploy/compose.yaml has no nginx service")
	}
	if !slices.Contains(nginx.Volumes, "./nginx.conf:/etc/nginx/conf.d/default.conf:ro") {
		t.Errorf("the Compose nginx does not run deploy/nginx.conf: volumes %v", nginx.Volumes)
	}
	port := settingDefaultOf(t, "PORT")
	var instances []string
	for name, s := range compose.Services {
		if s.Build == nil {
			continue
		}
		if s.Build.Context != ".." || s.Build.Dockerfile != "deploy/Dockerfile" {
			t.Errorf("%s: built from %+v, want context .. and deploy/Dockerfile", name, *s.Build)
		}
		for _, n := range s.Networks {
			instances = append(instances, n.IPv4+":"+port)
		}
		if got, want := s.Environment["TRUSTED_PROXIES"], nginx.Networks["push"].IPv4; got != want || want == "" {
			t.Errorf("%s: TRUSTED_PROXIES %q, want nginx's address %q", name, got, want)
		}
	}
	slices.Sort(instances)
	slices.Sort(upstreams)
	if len(instances) < 2 || !slices.Equal(instances, upstreams) {
		t.Errorf("the Compose instances %v are not deploy/nginx.conf's upstream servers %v", instances, upstreams)
	}

	docker := readDeploy(t, "Dockerfile")
	if !strings.Contains(docker, "RUN make dist DIST=") {
		t.Error("deploy/Dockerfile does not build with make dist (the step CI runs)")
	}
	hc := regexp.MustCompile(`(?m)^HEALTHCHECK .*CMD \["/sagapush", "([a-z]+)"`).FindStringSubmatch(docker)
	if hc == nil {
		t.Fatal("deploy/Dockerfile has no HEALTHCHECK running the binary")
	}
	if _, errOut, code := runBin(t, nil, "help", hc[1]); code != 0 {
		t.Errorf("the image's health check runs %q, which the binary does not know: %s", hc[1], errOut)
	}
	// The build image's Go is the one go.mod asks for.
	goMod, err := os.ReadFile(filepath.Join("..", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(string(goMod))
	if goVersion == nil || !strings.Contains(docker, "FROM golang:"+goVersion[1]+"-") {
		t.Errorf("deploy/Dockerfile does not build with Go %v (go.mod)", goVersion)
	}
}

// settingDefaultOf is a setting's default as `sagapush help` prints it.
func settingDefaultOf(t *testing.T, name string) string {
	t.Helper()
	out, _, _ := runBin(t, nil, "help")
	m := regexp.MustCompile(`(?m)^\s+` + name + `\s+(\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("sagapush help does not list %s", name)
	}
	return m[1]
}
