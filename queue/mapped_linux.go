package queue

import (
	"golang.org/x/sys/unix"

	bolt "go.etcd.io/bbolt"
)

// dropMapped takes out of this process's resident memory the pages of the
// database's memory map that it has touched, up to size bytes (at most the
// map's length: tx.Size of a transaction open now). bbolt maps the file
// read-only and shared and writes with pwrite, so nothing is lost: the pages
// stay in the page cache, and the next read of one maps it again.
//
// Why it is needed even when only envelopes are read: Linux maps the
// neighbours of a page read through a map along with it (fault-around, 64
// KiB), and a queue filled by concurrent submissions has its envelope and
// body pages interleaved in the file, each group commit writing both; so
// reading every envelope at start maps most bodies too (434 MB of RSS with
// 100,000 2 KB messages queued). MADV_RANDOM does not turn that off.
//
// The map cannot move meanwhile: bbolt remaps only in a write transaction
// that grows the file, and the caller holds a transaction (a write one that
// is not allocating, or a read one, which keeps a remap waiting).
//
// A failure costs memory only: the pages stay mapped, and what is read is
// the same. So it is not an error for anyone (a start refused for it, or a
// lease, would stop mail for the sake of RSS).
func dropMapped(db *bolt.DB, size int64) {
	if size <= 0 {
		return
	}
	unix.Syscall(unix.SYS_MADVISE, db.Info().Data, uintptr(size), unix.MADV_DONTNEED)
}
