package tlspolicy

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/postern/postern/internal/mailname"
)

// Seen is how well a delivery to a domain was protected.
type Seen uint8

const (
	SeenPlaintext Seen = iota
	SeenEncrypted      // TLS, certificate not valid (or not checked)
	SeenVerified       // TLS with a certificate that authenticated (DANE or PKIX)
)

func (s Seen) String() string { return [...]string{"plaintext", "encrypted", "verified"}[s] }

// MemoryMode is tls.downgrade_memory.
type MemoryMode uint8

const (
	MemoryWarn  MemoryMode = iota // log and count a downgrade
	MemoryDefer                   // hold the domain to what it has shown
	MemoryOff
)

// ParseMemoryMode reads tls.downgrade_memory.
func ParseMemoryMode(s string) (MemoryMode, error) {
	switch s {
	case "warn", "":
		return MemoryWarn, nil
	case "defer":
		return MemoryDefer, nil
	case "off":
		return MemoryOff, nil
	}
	return 0, fmt.Errorf("%q: use warn, defer or off", s)
}

// Memory is what Postern remembers of a domain: the strongest TLS its
// deliveries have had, since when, and when last.
type Memory struct {
	Best  Seen      `json:"best"`
	First time.Time `json:"first"` // first delivery at Best
	Last  time.Time `json:"last"`  // latest delivery at Best
}

var memoryBucket = []byte("tls-memory")

// Observe records how a delivery to domain was protected. A delivery
// weaker than the domain's remembered best looks like a STARTTLS-stripping
// attacker, and is logged and counted.
func (e *Engine) Observe(ctx context.Context, domain string, seen Seen) {
	if e.cfg.DowngradeMemory == MemoryOff || e.d.DB == nil {
		return
	}
	domain = mailname.Normalize(domain)
	now := e.d.Clock()
	// Most deliveries confirm what is remembered: those touch only the
	// copy in memory, and the database at most once per memoryWriteEvery,
	// so that the memory costs no fsync per message.
	e.memMu.Lock()
	m, known := e.memCache.Get(domain)
	if known && seen == m.Best && now.Sub(m.written) < memoryWriteEvery {
		m.Last = now
		e.memCache.Add(domain, m)
		e.memMu.Unlock()
		return
	}
	e.memMu.Unlock()

	var before Memory
	var had bool
	var after Memory
	err := e.d.DB.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(memoryBucket)
		m, ok := decodeMemory(b.Get([]byte(domain)))
		before, had = m, ok
		if ok && now.Sub(m.Last) > e.cfg.MemoryMaxAge {
			ok = false // aged out: start again
		}
		switch {
		case !ok || seen > m.Best:
			m = Memory{Best: seen, First: now, Last: now}
		case seen == m.Best:
			m.Last = now
		default:
			after = m
			return nil // a downgrade: the memory keeps the better past
		}
		after = m
		v, _ := json.Marshal(m)
		return b.Put([]byte(domain), v)
	})
	if err != nil {
		e.d.Log.Error("recording TLS memory failed", "domain", domain, "err", err)
		return
	}
	e.memCache.Add(domain, cachedMemory{Memory: after, written: now})
	if had && seen < before.Best && now.Sub(before.Last) <= e.cfg.MemoryMaxAge {
		e.metrics.downgrades.Add(ctx, 1, metric.WithAttributes(attribute.String("seen", seen.String()), attribute.String("before", before.Best.String())))
		e.d.Log.Warn("TLS downgrade: this domain was delivered with stronger TLS before (a STARTTLS-stripping attack looks like this)",
			"domain", domain, "now", seen.String(), "before", before.Best.String(), "since", before.First, "last", before.Last,
			"fix", "postern policy forget "+domain+" once the change is known to be genuine")
	}
}

// memoryWriteEvery bounds how often a confirming delivery is written.
const memoryWriteEvery = time.Hour

// cachedMemory is the engine's copy of a domain's memory.
type cachedMemory struct {
	Memory
	written time.Time
}

// Memory returns what is remembered of domain.
func (e *Engine) Memory(domain string) (Memory, bool) {
	if e.d.DB == nil {
		return Memory{}, false
	}
	domain = mailname.Normalize(domain)
	if c, cached := e.memCache.Get(domain); cached {
		return c.Memory, true
	}
	var m Memory
	var ok bool
	e.d.DB.View(func(tx *bbolt.Tx) error {
		m, ok = decodeMemory(tx.Bucket(memoryBucket).Get([]byte(domain)))
		return nil
	})
	if ok {
		e.memCache.Add(domain, cachedMemory{Memory: m}) // never written by this process yet
	}
	return m, ok
}

// Forget clears what is remembered of domain.
func (e *Engine) Forget(domain string) error {
	if e.d.DB == nil {
		return fmt.Errorf("no state database")
	}
	e.memCache.Remove(mailname.Normalize(domain))
	return ForgetMemory(e.d.DB, domain)
}

// ForgetMemory clears what db remembers of domain (for the CLI, which may
// not run an engine).
func ForgetMemory(db *bbolt.DB, domain string) error {
	return db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(memoryBucket)
		if err != nil {
			return err
		}
		key := []byte(mailname.Normalize(domain))
		if b.Get(key) == nil {
			return fmt.Errorf("nothing is remembered of %s", domain)
		}
		return b.Delete(key)
	})
}

func decodeMemory(v []byte) (Memory, bool) {
	var m Memory
	if v == nil || json.Unmarshal(v, &m) != nil {
		return Memory{}, false
	}
	return m, true
}

// remembered raises d to what the domain has shown before, in defer mode:
// verified TLS remembered means Verify, encrypted means Encrypt.
func (e *Engine) remembered(r Request, d Decision) Decision {
	if e.cfg.DowngradeMemory != MemoryDefer {
		return d
	}
	m, ok := e.Memory(r.Domain)
	if !ok || e.d.Clock().Sub(m.Last) > e.cfg.MemoryMaxAge {
		return d
	}
	need := None
	switch m.Best {
	case SeenVerified:
		need = Verify
	case SeenEncrypted:
		need = Encrypt
	}
	if d.Level >= need {
		return d
	}
	d.Level, d.Source, d.Testing = need, "memory", false
	if need == Verify {
		d.TLSA, d.Names = nil, []string{r.MXHost}
	}
	if d.MinVersion < 0x0303 {
		d.MinVersion = 0x0303 // TLS 1.2
	}
	d.Reason = fmt.Sprintf("downgrade memory: %s has had %s TLS since %s (postern policy forget %s clears this)",
		r.Domain, m.Best, m.First.UTC().Format(time.RFC3339), r.Domain)
	return d
}
