package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"github.com/spf13/cobra"
	"go.opentelemetry.io/otel"

	"github.com/postern/postern/queue"
)

// runCLI runs the command line in this process and returns what it wrote
// to stdout and stderr.
func runCLI(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := rootCommand()
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetIn(strings.NewReader("pw\n"))
	root.SetArgs(args)
	err = root.Execute()
	return out.String(), errOut.String(), err
}

// TestJSONOutputShapes: --json output is for scripts: states are words, a
// message has a state of its own, and neither the queue's bookkeeping nor
// a password hash shows; the table's count goes to stdout with the table.
func TestJSONOutputShapes(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "postern.yaml")
	os.WriteFile(cfg, []byte("data_dir: "+filepath.Join(dir, "data")+"\n"), 0o600)
	if _, _, err := runCLI(t, "user", "add", "app", "--password-stdin", "-c", cfg); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := runCLI(t, "queue", "list", "-c", cfg)
	if err != nil || strings.TrimSpace(out) != "the queue is empty" || errOut != "" {
		t.Fatalf("empty queue: %v\nstdout %q\nstderr %q", err, out, errOut)
	}
	ops := localOps(t, filepath.Join(dir, "data"))
	id, err := ops.q.Enqueue("", queue.Envelope{From: "app@example.org", MessageID: "<m1@example.org>",
		Recipients: []queue.Recipient{{Addr: "a@x.test"}, {Addr: "b@x.test"}}}, strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	ops.Close()

	out, errOut, err = runCLI(t, "queue", "list", "-c", cfg)
	if err != nil || !strings.Contains(out, id) || !strings.HasSuffix(out, "\n1 message\n") || errOut != "" {
		t.Fatalf("queue list: %v\nstdout %q\nstderr %q", err, out, errOut)
	}
	out, _, err = runCLI(t, "queue", "list", "--json", "-c", cfg)
	var list []map[string]any
	if err != nil || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 {
		t.Fatalf("queue list --json: %v\n%s", err, out)
	}
	checkMessageJSON(t, "queue list --json", list[0], id)
	out, _, err = runCLI(t, "queue", "show", id, "--json", "-c", cfg)
	var shown map[string]any
	if err != nil || json.Unmarshal([]byte(out), &shown) != nil {
		t.Fatalf("queue show --json: %v\n%s", err, out)
	}
	checkMessageJSON(t, "queue show --json", shown, id)

	out, _, err = runCLI(t, "user", "list", "--json", "-c", cfg)
	var users []map[string]any
	if err != nil || json.Unmarshal([]byte(out), &users) != nil || len(users) != 1 || users[0]["name"] != "app" {
		t.Fatalf("user list --json: %v\n%s", err, out)
	}
	if _, ok := users[0]["hash"]; ok {
		t.Errorf("user list --json shows a hash field: %s", out)
	}
}

func checkMessageJSON(t *testing.T, what string, m map[string]any, id string) {
	t.Helper()
	if m["id"] != id || m["state"] != "active" || m["pending"] != 2.0 || m["message_id"] != "<m1@example.org>" {
		t.Errorf("%s: message fields: %v", what, m)
	}
	for _, internal := range []string{"lease_seq", "retire_due", "retire_seq", "rcpts", "spooled"} {
		if _, ok := m[internal]; ok {
			t.Errorf("%s shows the queue's own field %q", what, internal)
		}
	}
	rcpts, _ := m["recipients"].([]any)
	if len(rcpts) != 2 {
		t.Fatalf("%s: recipients %v", what, m["recipients"])
	}
	r := rcpts[0].(map[string]any)
	if r["addr"] != "a@x.test" || r["state"] != "pending" || r["attempts"] != 0.0 || r["next_attempt"] == nil {
		t.Errorf("%s: recipient %v", what, r)
	}
	if _, ok := r["lease"]; ok {
		t.Errorf("%s shows a recipient's lease", what)
	}
}

// TestJSONLogDurations: a JSON log says "1.5s", not 1500000000.
func TestJSONLogDurations(t *testing.T) {
	var b bytes.Buffer
	log, _ := newLogger(LogConfig{Format: "json", Level: "info"}, &b)
	log.Info("x", "took", 1500*time.Millisecond, slog.Group("g", "wait", 250*time.Millisecond))
	var line struct {
		Took string `json:"took"`
		G    struct {
			Wait string `json:"wait"`
		} `json:"g"`
	}
	if err := json.Unmarshal(b.Bytes(), &line); err != nil || line.Took != "1.5s" || line.G.Wait != "250ms" {
		t.Fatalf("%v: %s", err, b.String())
	}
}

// TestVersionShowsCommitAndDate: the commit and build date set at link
// time are printed.
func TestVersionShowsCommitAndDate(t *testing.T) {
	defer func(c, d string) { buildCommit, buildDate = c, d }(buildCommit, buildDate)
	buildCommit, buildDate = "0123abcd", "2026-11-29T08:00:00Z"
	out, _, err := runCLI(t, "version")
	if err != nil || !strings.Contains(out, "commit:  0123abcd\n") || !strings.Contains(out, "built:   2026-11-29T08:00:00Z\n") {
		t.Fatalf("%v\n%s", err, out)
	}
}

// TestCountersExportedAtZero: the dashboard's TLS downgrade and MTA-STS
// panels have a series from the start, and it is tlspolicy's own (no
// second stream of the same name).
func TestCountersExportedAtZero(t *testing.T) {
	var warnings []string
	otel.SetLogger(funcr.New(func(prefix, args string) { warnings = append(warnings, prefix+" "+args) }, funcr.Options{Verbosity: 9}))
	tel, err := startTelemetry(TelemetryConfig{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Close(context.Background())
	rec := httptest.NewRecorder()
	tel.metrics.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		"postern_tls_downgrades_total 0\n",
		`postern_mta_sts_fetches_total{result="ok"} 0` + "\n",
		`postern_mta_sts_fetches_total{result="error"} 0` + "\n",
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("the scrape lacks %s", want)
		}
	}
	for _, w := range warnings {
		if strings.Contains(w, "duplicate") {
			t.Errorf("a second stream: %s", w)
		}
	}
}

// TestCompletionAndManPages: "postern completion bash|zsh|fish" prints a
// script for each shell, completion offers queue IDs and user names from
// the data, and "postern man DIR" writes a page per command.
func TestCompletionAndManPages(t *testing.T) {
	for shell, want := range map[string]string{"bash": "__start_postern", "zsh": "#compdef postern", "fish": "complete -c postern"} {
		if out, _, err := runCLI(t, "completion", shell); err != nil || !strings.Contains(out, want) {
			t.Errorf("completion %s: %v, no %q", shell, err, want)
		}
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "postern.yaml")
	os.WriteFile(cfg, []byte("data_dir: "+filepath.Join(dir, "data")+"\n"), 0o600)
	if _, _, err := runCLI(t, "user", "add", "app", "--password-stdin", "-c", cfg); err != nil {
		t.Fatal(err)
	}
	ops := localOps(t, filepath.Join(dir, "data"))
	id, err := ops.q.Enqueue("", queue.Envelope{From: "app@example.org", Recipients: []queue.Recipient{{Addr: "a@x.test"}}}, strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	ops.Close()
	if out, _, _ := runCLI(t, "__complete", "queue", "hold", "-c", cfg, ""); !strings.Contains(out, id+"\tapp@example.org, active") {
		t.Errorf("queue hold completion:\n%s", out)
	}
	if out, _, _ := runCLI(t, "__complete", "user", "require-tls", "-c", cfg, ""); !strings.Contains(out, "app\n") {
		t.Errorf("user completion:\n%s", out)
	}
	if out, _, _ := runCLI(t, "__complete", "user", "require-tls", "app", "-c", cfg, ""); !strings.Contains(out, "on\noff\n") {
		t.Errorf("require-tls on|off completion:\n%s", out)
	}

	man := t.TempDir()
	if _, _, err := runCLI(t, "man", man); err != nil {
		t.Fatal(err)
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if !c.IsAvailableCommand() && c.Name() != "postern" {
			return
		}
		name := strings.ReplaceAll(c.CommandPath(), " ", "-") + ".1"
		b, err := os.ReadFile(filepath.Join(man, name))
		if err != nil || !strings.Contains(string(b), ".TH \"POSTERN\" \"1\"") || !strings.Contains(string(b), c.Short) {
			t.Errorf("man page %s: %v", name, err)
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	root := rootCommand()
	walk(root)
	if b, _ := os.ReadFile(filepath.Join(man, "postern.1")); !strings.Contains(string(b), "Exit statuses") {
		t.Error("postern.1 does not give the exit statuses")
	}
}
