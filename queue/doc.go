// Package queue keeps accepted mail durably until every recipient of it has a
// final outcome. It knows nothing of SMTP: a message is an envelope (sender,
// recipients each with their own state, opaque notification parameters) and a
// body of bytes.
//
// # What is durable, and when
//
// When Enqueue returns a nil error, the envelope and the whole body are on
// stable storage: the bbolt transaction that records the message has been
// committed with fsync (fdatasync on Linux), and a body kept outside bbolt was
// fsynced, together with its directory entry, before that transaction began.
// A crash at any instant after that, kill -9 or power loss, cannot lose the
// message. A crash before it leaves either nothing or an unreferenced spool
// file that Recover deletes: no half-written message is ever visible, because
// a message exists only once its envelope record is committed, and that record
// is written last.
//
// # Where bodies live
//
// Bodies up to Options.InlineLimit (default 128 KiB) are stored inside bbolt,
// in the same transaction as their envelope. That is the common case for
// transactional mail, and it lets many concurrent submissions share a single
// fsync (group commit: see committer). Larger bodies are streamed to a file in
// the spool directory and fsynced on their own: they are read once from the
// network and never held in memory whole, and a 50 MB attachment does not
// bloat the bbolt file, whose pages are reused but never returned to the disk.
// The cost is one extra fsync per large message, which its transfer time
// dwarfs anyway.
//
// # Scheduling and leases
//
// Every recipient is Pending (due at a time), Leased (a worker is trying it,
// until a deadline), Delivered, or Failed. Lease hands due recipients to a
// worker and moves their due time to the lease deadline, so the work of a
// worker that dies becomes due again by itself; Recover, run by the daemon at
// start, returns all leases at once since no worker can hold one yet. A
// message whose recipients are all final is leased once more, to be retired:
// Retire removes it and, in the same transaction, enqueues the notices (such
// as a delivery status notification) the worker built for it. A crash between
// the last outcome and Retire therefore repeats the retirement, never skips it.
//
// A message can also be leased in the transaction that enqueues it
// (EnqueueLeased), to be handed straight to a free worker: that lease is
// committed with the message and runs out like any other.
//
// A worker whose attempt runs long renews its lease (Renew). Should a lease
// be lost all the same and the recipient handed to another worker, the
// first worker's outcomes no longer count, except a delivery: that happened,
// so Record marks the recipient Delivered and journals its evidence, and the
// second worker's outcome is the one ignored. Notices that go with outcomes
// (a delay warning) are enqueued in the outcome's transaction, and only if
// it applies.
//
// An ID names one message for its whole life: Enqueue refuses an ID that is
// already queued (ErrExists) rather than replace what was acknowledged.
//
// # Moving a queue to another node
//
// Export writes the queued messages, with every recipient's state and the
// body, into a directory with a SHA-256 of each file; Import adds them to
// another queue. Export holds each message it takes (ExportHeld: it is not
// scheduled here, so it is delivered by one node only), waits for the
// attempts in flight, and hands the directory to its caller to publish only
// once every file is fsynced; with Remove, a message leaves this queue only
// after that, and only if unchanged. Import checks every checksum before it
// adds anything, and commits each message with a record of its import under
// its exported ID and the number of hand-overs it went through: importing
// an export again, after a crash or not, adds each message once, and a
// message that moved away and comes back is imported again. A message keeps its ID across the move unless the
// importing queue already uses it. See export.go.
//
// # Damage
//
// Open checks the file and refuses a damaged one (ErrDamaged): it proves
// what bbolt's own Check does, reading pages from the file rather than
// through the memory map (see walkPages). A damaged page met later fails
// that write and all later ones rather than the process.
//
// # Memory
//
// bbolt reads through a memory map, and the pages a process touches count
// in its resident memory. Start-up, scheduling and Stats read envelopes,
// never bodies; but the kernel maps a touched page's neighbours with it,
// and envelope and body pages lie side by side in the file, so Recover,
// Lease and Stats let go of the pages they read as they go (dropMapped):
// 100,000 queued 2 KB messages cost about 20 MB of mapped pages after the
// start, not the whole file. Salvage rebuilds a damaged file from what can
// still be read.
//
// Time comes from the injected Clock, so tests drive retries and leases
// without sleeping.
package queue
