package queue

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cycleDamagedQueue makes a queue of n messages in dir, then points one
// child of its messages bucket's root branch back at the root itself: a
// branch page number off by a few bits lands on another page of the file.
func cycleDamagedQueue(t *testing.T, dir string, n, elem int) {
	t.Helper()
	pointerDamagedQueueTo(t, dir, n, elem, func(root uint64) uint64 { return root })
}

// A branch that leads back to itself must be refused at start, within
// queue.check_timeout, not end the process (bbolt's check recurses without
// end on it) or hang it.
func TestOpenRefusesABranchThatLeadsToItself(t *testing.T) {
	if dir := os.Getenv("POSTERN_REVIEW15_CYCLE"); dir != "" {
		q, err := Open(filepath.Join(dir, "queue.db"), Options{CheckTimeout: 5 * time.Second})
		if err == nil {
			q.Close()
			fmt.Println("RESULT: opened")
			return
		}
		fmt.Printf("RESULT: refused: %v\n", err)
		return
	}
	for elem := 0; elem < 2; elem++ {
		dir := t.TempDir()
		cycleDamagedQueue(t, dir, 300, elem)
		cmd := exec.Command(os.Args[0], "-test.run=^TestOpenRefusesABranchThatLeadsToItself$", "-test.count=1", "-test.timeout=60s")
		cmd.Env = append(os.Environ(), "POSTERN_REVIEW15_CYCLE="+dir)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		text := string(out)
		if i := strings.Index(text, "goroutine "); i > 0 && os.Getenv("R15_FULL") == "" {
			text = text[:i]
		}
		if os.Getenv("R15_FULL") != "" {
			t.Log(text)
		}
		if err != nil || !strings.Contains(text, "RESULT: refused: "+dir) {
			t.Errorf("opening a queue.db whose branch element %d leads to the branch itself: child %v after %v:\n%.2000s", elem, err, time.Since(start).Round(time.Millisecond), text)
		}
	}
}
