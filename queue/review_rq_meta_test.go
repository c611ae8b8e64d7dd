package queue

import (
	"encoding/binary"
	"errors"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// bbolt runs on the newest meta page that validates (magic, version,
// checksum). A bit flip in the txid of the newer meta page (meta 1) can
// make it name the same transaction as meta 0: bbolt then runs on meta 0,
// the older tree, but a check that picks a meta page by txid alone walks
// meta 1's tree, and proves nothing about the pages bbolt will read. Here
// the older tree's branch of the messages bucket (freed by the newer
// transaction, so on the newer freelist) has keys out of order: bbolt's
// Check refuses it, and so must Open.
func TestOpenChecksTheMetaPageBboltUses(t *testing.T) {
	dir := t.TempDir()
	path, pageSize, _, _, _ := pagedQueue(t, dir, 300)

	// Commit until the newest transaction is odd (meta page 1), each commit
	// rewriting the messages bucket's branch; old is that branch as the
	// transaction before the newest left it.
	db, err := bolt.Open(path, 0o600, &bolt.Options{FreelistType: bolt.FreelistMapType})
	if err != nil {
		t.Fatal(err)
	}
	var old, txid uint64
	for txid%2 == 0 {
		db.View(func(tx *bolt.Tx) error { old = uint64(tx.Bucket(bucketMessages).Root()); return nil })
		err := db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketMessages)
			k, v := b.Cursor().Last()
			txid = uint64(tx.ID())
			return b.Put(append([]byte(nil), k...), append([]byte(nil), v...))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	if m1 := readPage(t, path, pageSize, 1); binary.LittleEndian.Uint64(m1[64:]) != txid {
		t.Fatalf("meta 1 holds txid %d, want %d", binary.LittleEndian.Uint64(m1[64:]), txid)
	}
	// One bit: meta 1 now claims meta 0's transaction, with a checksum
	// that no longer matches.
	writePage(t, path, pageSize, 1, 64, le64(txid-1))
	// The older tree's branch: element 1's key made smaller than element 0's.
	raw := readPage(t, path, pageSize, old)
	if flags := binary.LittleEndian.Uint16(raw[8:]); flags != 0x01 {
		t.Fatalf("old messages root %d: flags %#x, want a branch", old, flags)
	}
	pos := binary.LittleEndian.Uint32(raw[16+16:])
	writePage(t, path, pageSize, old, 16+16+int(pos), []byte{0})

	// bbolt's own Check, run on the transaction bbolt opens, refuses it.
	if db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true}); err != nil {
		t.Fatal(err)
	} else {
		var found error
		db.View(func(tx *bolt.Tx) error {
			for e := range tx.Check() {
				found = e
			}
			return nil
		})
		db.Close()
		if found == nil {
			t.Fatal("bbolt's Check accepts the damaged file: the test proves nothing")
		}
	}

	q, err := Open(path, Options{})
	if err == nil {
		defer q.Close()
		_, rerr := q.Recover()
		_, lerr := q.Lease(1000, 60e9)
		t.Fatalf("Open accepted a tree it never walked (bbolt's Check refuses it); then Recover: %v; Lease: %v", rerr, lerr)
	}
	if !errors.Is(err, ErrDamaged) {
		t.Fatalf("error: %v; want ErrDamaged", err)
	}
}
