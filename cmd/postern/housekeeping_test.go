package main

import (
	"strings"
	"testing"
)

// audit.retention prunes the journal the TLS reporter reads a whole UTC day
// of, after the day: less than two days would prune what is still to be
// reported. queue.check_timeout cannot be negative.
func TestHousekeepingKeysAreChecked(t *testing.T) {
	for text, want := range map[string]string{
		"audit:\n  retention: 24h\n":     "audit.retention",
		"audit:\n  retention: 47h\n":     "audit.retention",
		"queue:\n  check_timeout: -1s\n": "queue.check_timeout",
		"audit:\n  retention: 48h\n":     "",
		"queue:\n  check_timeout: 0s\n":  "",
	} {
		path := writeConfig(t, text)
		_, err := loadConfig(path)
		switch {
		case want == "" && err != nil:
			t.Errorf("config %q: %v", text, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path)):
			t.Errorf("config %q: error %v should name %q and the file", text, err, want)
		}
	}
}
