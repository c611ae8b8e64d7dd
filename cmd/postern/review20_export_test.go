package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Review 20: after "queue export --remove", the export is the only copy of
// its messages. An import --skip-bad that leaves a damaged one out must
// not tell the operator it is "still on the old node" (who would then
// throw the export away): it must say to copy it again from the original.
func TestReview20SkipBadAfterRemoveSaysWhereTheMessageIs(t *testing.T) {
	a, b, id := stoppedWithOneQueued(t)
	dir := filepath.Join(t.TempDir(), "handover")
	if out, err := a.run("", "queue", "export", dir, "--remove"); err != nil || !strings.Contains(out, "removed the 1 exported messages") {
		t.Fatalf("export --remove: %v\n%s", err, out)
	}
	eml := filepath.Join(dir, "messages", id+".eml")
	data, _ := os.ReadFile(eml)
	data[0] ^= 1 // damaged in the copy
	os.WriteFile(eml, data, 0o600)
	out, err := b.run("", "queue", "import", dir, "--skip-bad")
	if exitCode(err) != 1 {
		t.Fatalf("--skip-bad: %v %s", err, out)
	}
	if strings.Contains(out, "still on the old node") {
		t.Fatalf("import --skip-bad of an export made with --remove says the message left out is still on the old node, "+
			"which deleted it:\n%s", out)
	}
}
