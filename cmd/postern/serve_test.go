package main

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestAnyNumberOfListeners: the daemon serves and stops with more
// submission listeners than the four its error channel once had room
// for; each listener's goroutine ends when the daemon stops (on the old
// code, the fifth and sixth blocked forever sending their error).
func TestAnyNumberOfListeners(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	const n = 6
	addrs := strings.Repeat("'127.0.0.1:0', ", n)
	cfg, err := loadConfig(writeConfig(t, fmt.Sprintf(`hostname: listeners.test
data_dir: %s
submission: {listen: [%s], tls_listen: []}
dns: {servers: ['127.0.0.1:9'], probe_interval: 0s}
admin: {metrics_listen: ''}
`, t.TempDir(), addrs)))
	if err != nil {
		t.Fatal(err)
	}
	emb := newEmbedding()
	served := make(chan error, 1)
	go func() { served <- serveEmbedded(cfg, slog.New(slog.DiscardHandler), new(slog.LevelVar), emb) }()
	deadline := time.After(30 * time.Second)
	for opened := 0; opened < n; {
		select {
		case l := <-emb.opened:
			if l.kind == "starttls" {
				opened++
			}
		case err := <-served:
			t.Fatalf("the daemon stopped before its %d listeners opened: %v", n, err)
		case <-deadline:
			t.Fatalf("%d listeners opened, want %d", opened, n)
		}
	}
	close(emb.stop)
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if err := goleak.Find(ignore, ignoreLRUPurge); err != nil {
		t.Fatalf("goroutines outlive the daemon: %v", err)
	}
}

// TestLogLevelIsTheLoggers: each logger has its own level (postern demo
// runs a daemon beside its own output); making one no longer changes
// another's, as the package-level level did.
func TestLogLevelIsTheLoggers(t *testing.T) {
	var a, b strings.Builder
	debugLog, debugLevel := newLogger(LogConfig{Format: "text", Level: "debug", level: slog.LevelDebug}, &a)
	newLogger(LogConfig{Format: "text", Level: "error", level: slog.LevelError}, &b)
	debugLog.Debug("kept")
	if !strings.Contains(a.String(), "kept") {
		t.Fatalf("a debug logger dropped a debug line after another logger was made: %q", a.String())
	}
	debugLevel.Set(slog.LevelWarn) // as a reload does
	debugLog.Info("dropped")
	if strings.Contains(a.String(), "dropped") {
		t.Fatal("the level a reload sets is not the logger's")
	}
}
