package main

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/relay/auth"
)

// Where the header From check is off, the start says so: for everyone, or
// for each exempted user that has sender patterns to exempt from.
func TestHeaderFromCheckLoggedAtStart(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	users, _ := auth.NewStore(db, nil)
	users.Add("lists", "pw", []string{"*@lists.example"})
	users.Add("app", "pw", []string{"*@example.org"})
	users.Add("free", "pw", nil)
	users.SetAnyHeaderFrom("lists", true)
	users.SetAnyHeaderFrom("free", true)
	logged := func(check bool) string {
		var buf bytes.Buffer
		cfg := &Config{}
		cfg.Submission.CheckHeaderFrom = check
		logHeaderFromCheck(cfg, users, slog.New(slog.NewJSONHandler(&buf, nil)))
		return buf.String()
	}
	on := logged(true)
	if strings.Count(on, "header From check is off for a user") != 1 || !strings.Contains(on, `"user":"lists"`) {
		t.Errorf("check on, one user exempt:\n%s", on)
	}
	if off := logged(false); !strings.Contains(off, "submission.check_header_from: false") || !strings.Contains(off, `"level":"WARN"`) {
		t.Errorf("check off:\n%s", off)
	}
}
