package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/queue"
)

// A damaged queue.db is refused with advice by every command that opens it,
// and "postern queue salvage" rebuilds it, saying what was lost.
func TestDamagedQueueRefusedThenSalvaged(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "queue.db")
	q, err := queue.Open(path, queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 40; i++ {
		env := queue.Envelope{From: "app@example.org", Recipients: []queue.Recipient{{Addr: fmt.Sprintf("r%d@dest.test", i)}}}
		if _, err := q.Enqueue("", env, strings.NewReader(strings.Repeat("x", 300))); err != nil {
			t.Fatal(err)
		}
	}
	q.Close()
	// Break the page the messages bucket starts from.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	var root int64
	db.View(func(tx *bolt.Tx) error { root = int64(tx.Bucket([]byte("messages")).Root()); return nil })
	pageSize := int64(db.Info().PageSize)
	db.Close()
	f, _ := os.OpenFile(path, os.O_RDWR, 0)
	var flags [2]byte
	binary.LittleEndian.PutUint16(flags[:], 0xdead)
	f.WriteAt(flags[:], root*pageSize+8)
	f.Close()

	cfg, _ := parseConfig("", nil)
	cfg.DataDir = dir
	if _, err := openOperations(cfg); err == nil || !strings.Contains(err.Error(), path) ||
		!strings.Contains(err.Error(), "postern queue salvage") {
		t.Fatalf("opening the damaged queue: %v", err)
	}
	out, _ := runQueueCommand(t, dir, "salvage")
	if !strings.Contains(out, "salvaged 0 messages") || !strings.Contains(out, "40 messages LOST") ||
		!strings.Contains(out, "queue.db.damaged-") {
		t.Fatalf("salvage report:\n%s", out)
	}
	if list, _ := runQueueCommand(t, dir, "list"); strings.TrimSpace(list) != "the queue is empty" {
		t.Fatalf("queue after salvage:\n%s", list)
	}
}
