package deploy

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, COPY…
	args string
}

func dockerfile(t *testing.T) []instruction {
	t.Helper()
	f, err := os.Open("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []instruction
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cur.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur.Reset()
	}
	return out
}

// TestDockerfile: a multi-stage build of a static binary into a small final
// image, run as an unprivileged user whose data_dir is a volume, with a
// HEALTHCHECK on /healthz, and the image's configuration accepted by
// "postern config check". (hadolint is not packaged in Debian; CI builds
// the image itself where podman can.)
func TestDockerfile(t *testing.T) {
	ins := dockerfile(t)
	var stages []int // index of each FROM
	for i, in := range ins {
		if in.cmd == "FROM" {
			stages = append(stages, i)
		}
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages: want a build stage and a final one", len(stages))
	}
	final := ins[stages[len(stages)-1]:]
	if base := strings.Fields(final[0].args)[0]; base != "scratch" && !strings.Contains(base, "distroless/static") {
		t.Errorf("the final image is FROM %s: want scratch (or distroless/static), nothing but the binary", base)
	}
	var build string
	for _, in := range ins[:stages[len(stages)-1]] {
		if in.cmd == "RUN" && strings.Contains(in.args, "go build") {
			build = in.args
		}
	}
	if !strings.Contains(build, "CGO_ENABLED=0") || !strings.Contains(build, "-trimpath") {
		t.Errorf("the binary is not built static (CGO_ENABLED=0) and -trimpath: %s", build)
	}
	for _, v := range []string{"main.buildVersion", "main.buildCommit", "main.buildDate"} {
		if !strings.Contains(build, v) {
			t.Errorf("the build does not set %s (postern version)", v)
		}
	}
	last := func(cmd string) string {
		for i := len(final) - 1; i >= 0; i-- {
			if final[i].cmd == cmd {
				return final[i].args
			}
		}
		t.Errorf("the final stage has no %s", cmd)
		return ""
	}
	// The configuration the image runs with.
	var cmdArgs []string
	if err := yaml.Unmarshal([]byte(last("CMD")), &cmdArgs); err != nil || len(cmdArgs) < 3 || cmdArgs[0] != "serve" || cmdArgs[1] != "-c" {
		t.Fatalf("CMD %v: want [serve -c FILE]", cmdArgs)
	}
	cfgFile := cmdArgs[2]
	var cfgSource string
	for _, in := range final {
		if f := strings.Fields(in.args); in.cmd == "COPY" && f[len(f)-1] == cfgFile {
			cfgSource = "deploy/container/postern.yaml" // copied through the build stage
		}
	}
	if cfgSource == "" {
		t.Fatalf("nothing is copied to %s", cfgFile)
	}
	text, err := os.ReadFile("container/postern.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := parseConfig(t, string(text))
	configCheck(t, string(text), nil)

	user := last("USER")
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("USER %q: want a numeric uid other than root (runAsNonRoot can check only a number)", user)
	}
	if passwd, _ := os.ReadFile("container/passwd"); !regexp.MustCompile(`(?m)^postern:x:` + uid + `:`).Match(passwd) {
		t.Errorf("container/passwd has no postern user with uid %s", uid)
	}
	if !strings.Contains(last("VOLUME"), `"`+cfg.DataDir+`"`) {
		t.Errorf("VOLUME %s is not data_dir %s", last("VOLUME"), cfg.DataDir)
	}
	owned := false
	for _, in := range final {
		if f := strings.Fields(in.args); in.cmd == "COPY" && f[len(f)-1] == cfg.DataDir && slices.Contains(f, "--chown="+user) {
			owned = true
		}
	}
	if !owned {
		t.Errorf("data_dir %s is not made the user's (%s) in the image: Postern refuses a data_dir of another user", cfg.DataDir, user)
	}
	if hc := last("HEALTHCHECK"); !strings.Contains(hc, `"health"`) || !strings.Contains(hc, cfgFile) {
		t.Errorf("HEALTHCHECK %s: want postern health with the image's configuration", hc)
	}
	if host, _, _ := net.SplitHostPort(cfg.Admin.MetricsListen); host != "127.0.0.1" {
		t.Errorf("the image's admin listener %s is not on loopback: without a password it must not be", cfg.Admin.MetricsListen)
	}
	expose := strings.Fields(last("EXPOSE"))
	for _, l := range append(cfg.Submission.Listen, cfg.Submission.TLSListen...) {
		_, port, _ := net.SplitHostPort(l)
		if !slices.Contains(expose, port) {
			t.Errorf("EXPOSE %v lacks %s (listens on %s)", expose, port, l)
		}
		if n, _ := strconv.Atoi(port); n < 1024 {
			t.Errorf("listening on %s needs a capability the unprivileged user has not", l)
		}
	}
	// Every file the build copies from the context exists.
	for _, in := range ins {
		if in.cmd == "RUN" {
			for _, m := range regexp.MustCompile(`cp (deploy/\S+)`).FindAllStringSubmatch(in.args, -1) {
				if _, err := os.Stat("../" + m[1]); err != nil {
					t.Errorf("the build copies %s: %v", m[1], err)
				}
			}
			for _, m := range regexp.MustCompile(`\s(deploy/container/\S+)`).FindAllStringSubmatch(in.args, -1) {
				if _, err := os.Stat("../" + m[1]); err != nil {
					t.Errorf("the build copies %s: %v", m[1], err)
				}
			}
		}
	}
	if data, _ := os.ReadFile("../.dockerignore"); !strings.Contains(string(data), "data") {
		t.Error(".dockerignore does not keep a local data directory out of the build context")
	}
}

// composeFile is what TestCompose reads of docker-compose.yaml.
type composeFile struct {
	Services map[string]struct {
		Build           string   `json:"build"`
		Image           string   `json:"image"`
		Ports           []string `json:"ports"`
		Volumes         []string `json:"volumes"`
		NetworkMode     string   `json:"network_mode"`
		StopGracePeriod string   `json:"stop_grace_period"`
		Command         []string `json:"command"`
		Environment     any      `json:"environment"`
		DependsOn       []string `json:"depends_on"`
		Restart         string   `json:"restart"`
	} `json:"services"`
	Volumes map[string]any `json:"volumes"`
}

// TestCompose: the compose stack runs the image built here with data_dir on
// a named volume and a stop grace period longer than the drain, and
// Prometheus and Grafana are wired to the repository's alert rules and
// dashboard: the scrape job has the name the rules expect and reaches the
// admin listener, and every file mounted exists.
func TestCompose(t *testing.T) {
	b, err := os.ReadFile("../docker-compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		t.Fatalf("docker-compose.yaml: %v", err)
	}
	text, _ := os.ReadFile("container/postern.yaml")
	cfg := parseConfig(t, string(text))
	p, ok := c.Services["postern"]
	if !ok || p.Build != "." {
		t.Fatalf("no postern service built from the Dockerfile here")
	}
	if d, err := time.ParseDuration(p.StopGracePeriod); err != nil || d <= cfg.Shutdown.Timeout {
		t.Errorf("stop_grace_period %q must exceed shutdown.timeout %s", p.StopGracePeriod, cfg.Shutdown.Timeout)
	}
	if !slices.ContainsFunc(p.Volumes, func(v string) bool {
		name, target, _ := strings.Cut(v, ":")
		_, named := c.Volumes[name]
		return named && target == cfg.DataDir
	}) {
		t.Errorf("data_dir %s is not on a named volume: %v", cfg.DataDir, p.Volumes)
	}
	for _, l := range append(cfg.Submission.Listen, cfg.Submission.TLSListen...) {
		_, port, _ := net.SplitHostPort(l)
		if !slices.ContainsFunc(p.Ports, func(m string) bool { return strings.HasSuffix(m, ":"+port) }) {
			t.Errorf("the submission port %s is not published: %v", port, p.Ports)
		}
	}
	// Every file mounted from the repository exists; the rules and the
	// dashboard are among them.
	mounts := map[string]string{} // target → source
	for name, s := range c.Services {
		for _, v := range s.Volumes {
			src, rest, _ := strings.Cut(v, ":")
			target, _, _ := strings.Cut(rest, ":")
			if strings.HasPrefix(src, "./") {
				if _, err := os.Stat(filepath.Join("..", src)); err != nil {
					t.Errorf("service %s mounts %s: %v", name, src, err)
				}
				mounts[target] = src
			}
		}
	}
	prom := c.Services["prometheus"]
	if prom.NetworkMode != "service:postern" {
		t.Errorf("prometheus network_mode %q: it scrapes the admin listener on Postern's loopback", prom.NetworkMode)
	}
	var promCfg struct {
		RuleFiles     []string `json:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `json:"job_name"`
			StaticConfigs []struct {
				Targets []string `json:"targets"`
			} `json:"static_configs"`
		} `json:"scrape_configs"`
	}
	var promFile string
	for _, a := range prom.Command {
		if f, ok := strings.CutPrefix(a, "--config.file="); ok {
			promFile = mounts[f]
		}
	}
	pb, err := os.ReadFile(filepath.Join("..", promFile))
	if err != nil {
		t.Fatalf("prometheus configuration: %v", err)
	}
	if err := yaml.Unmarshal(pb, &promCfg); err != nil {
		t.Fatal(err)
	}
	if len(promCfg.RuleFiles) != 1 || mounts[promCfg.RuleFiles[0]] != "./configs/prometheus-alerts.yaml" {
		t.Errorf("prometheus loads %v, not configs/prometheus-alerts.yaml", promCfg.RuleFiles)
	}
	if len(promCfg.ScrapeConfigs) != 1 || promCfg.ScrapeConfigs[0].JobName != "postern" ||
		len(promCfg.ScrapeConfigs[0].StaticConfigs) != 1 || !slices.Equal(promCfg.ScrapeConfigs[0].StaticConfigs[0].Targets, []string{cfg.Admin.MetricsListen}) {
		t.Errorf("scrape configs %+v: want job postern (the alert rules' job) scraping %s", promCfg.ScrapeConfigs, cfg.Admin.MetricsListen)
	}
	// Grafana: the dashboard in the directory its provider reads, and a
	// default Prometheus data source (the dashboard's $datasource).
	var dashProvider struct {
		Providers []struct {
			Options struct {
				Path string `json:"path"`
			} `json:"options"`
		} `json:"providers"`
	}
	var providerFile, datasourceFile string
	for target, src := range mounts {
		switch {
		case strings.HasPrefix(target, "/etc/grafana/provisioning/dashboards/"):
			providerFile = src
		case strings.HasPrefix(target, "/etc/grafana/provisioning/datasources/"):
			datasourceFile = src
		}
	}
	db, _ := os.ReadFile(filepath.Join("..", providerFile))
	if err := yaml.Unmarshal(db, &dashProvider); err != nil || len(dashProvider.Providers) != 1 ||
		mounts[dashProvider.Providers[0].Options.Path+"/postern.json"] != "./configs/grafana-dashboard.json" {
		t.Errorf("grafana does not load configs/grafana-dashboard.json: %v %+v", err, dashProvider)
	}
	var ds struct {
		Datasources []struct {
			Type      string `json:"type"`
			URL       string `json:"url"`
			IsDefault bool   `json:"isDefault"`
		} `json:"datasources"`
	}
	dsb, _ := os.ReadFile(filepath.Join("..", datasourceFile))
	if err := yaml.Unmarshal(dsb, &ds); err != nil || len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" ||
		!ds.Datasources[0].IsDefault || ds.Datasources[0].URL != "http://postern:9090" {
		t.Errorf("grafana's data source: %v %+v (Prometheus listens in the postern service's network namespace)", err, ds)
	}
	if !slices.Contains(p.Ports, "127.0.0.1:9090:9090") {
		t.Errorf("Prometheus's port is not published (on loopback) by the postern service whose namespace it shares: %v", p.Ports)
	}
}
