package main

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/queue"
)

// runQueueCommand runs "postern queue ARGS" in process against data_dir dir.
func runQueueCommand(t *testing.T, dir string, args ...string) (stdout, stderr string) {
	t.Helper()
	cfg, err := parseConfig("", nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = dir
	cmd := queueCommand(func() (*Config, error) { return cfg, nil })
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		t.Fatalf("queue %v: %v\n%s", args, err, errOut.String())
	}
	return out.String(), errOut.String()
}

// A message whose spool file is gone is shown as such by queue list, queue
// show and the status page, not only in a log line at start.
func TestLostBodyIsReported(t *testing.T) {
	dir := t.TempDir()
	q, err := queue.Open(filepath.Join(dir, "queue.db"), queue.Options{InlineLimit: 4})
	if err != nil {
		t.Fatal(err)
	}
	env := queue.Envelope{From: "app@example.org", Recipients: []queue.Recipient{{Addr: "a@dest.test"}}}
	kept, _ := q.Enqueue("", env, strings.NewReader("a body that is kept"))
	lost, err := q.Enqueue("", env, strings.NewReader("a body that is lost"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "spool", lost)); err != nil {
		t.Fatal(err)
	}

	web := &adminHTTP{hostname: "relay.example", metrics: http.NotFoundHandler(), q: q,
		stats: &statsCache{q: q}, log: slog.New(slog.DiscardHandler)}
	srv := httptest.NewServer(web.handler())
	defer srv.Close()
	if _, page := httpGet(t, srv.URL+"/"); !strings.Contains(page, `id="q-body-gone"><b>1</b>`) {
		t.Errorf("status page does not show the lost body:\n%s", page)
	}
	q.Close()

	list, notes := runQueueCommand(t, dir, "list")
	if !strings.Contains(list, lost) || !strings.Contains(lineOf(list, lost), "body-gone") ||
		strings.Contains(lineOf(list, kept), "body-gone") || !strings.Contains(list+notes, "1 of them have lost their body") {
		t.Errorf("queue list:\n%s%s", list, notes)
	}
	if show, _ := runQueueCommand(t, dir, "show", lost); !strings.Contains(show, "body:        GONE") {
		t.Errorf("queue show:\n%s", show)
	}
	if show, _ := runQueueCommand(t, dir, "show", kept); strings.Contains(show, "GONE") {
		t.Errorf("queue show of a whole message:\n%s", show)
	}
}

func lineOf(text, word string) string {
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, word) {
			return l
		}
	}
	return ""
}
