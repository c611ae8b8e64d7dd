package main

import (
	"cmp"
	"context"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"html/template"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
	"github.com/postern/postern/relay/tlsrpt"
	"github.com/postern/postern/resolver"
)

//go:embed status.html
var statusFS embed.FS

var statusTemplate = template.Must(template.New("status.html").Funcs(template.FuncMap{
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return time.Since(t).Round(time.Second).String()
	},
}).ParseFS(statusFS, "status.html"))

// adminHTTP serves the admin listener: Prometheus metrics, health checks
// and the status page.
type adminHTTP struct {
	hostname string
	password string // for /metrics and the status page; empty: none (loopback only)
	metrics  http.Handler
	q        *queue.Queue
	stats    *statsCache
	ready    []readiness
	log      *slog.Logger
	// maxEntries bounds the journal entries the status page reads
	// (statusMaxEntries when zero).
	maxEntries int
	// limits bound the listener's connections (webLimits when zero).
	limits serverLimits
	// dns is the upstream DNSSEC probe's last finding (nil: not shown),
	// and onBroken what delivery does while it is broken.
	dns      func() resolver.Health
	onBroken string
}

// readiness is one check of /readyz.
type readiness struct {
	name  string
	check func(ctx context.Context) error
}

func (a *adminHTTP) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", a.readyz)
	mux.Handle("GET /metrics", a.protect(a.metrics))
	mux.Handle("GET /{$}", a.protect(http.HandlerFunc(a.status)))
	return mux
}

func (a *adminHTTP) protect(h http.Handler) http.Handler {
	if a.password == "" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, pw, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(pw), []byte(a.password)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="postern"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// checkResult is one readiness check's outcome.
type checkResult struct {
	Name   string
	OK     bool
	Detail string // the error when not OK
}

// runChecks runs the readiness checks, for /readyz and the status page.
func (a *adminHTTP) runChecks(ctx context.Context) (ready bool, results []checkResult) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ready = true
	for _, c := range a.ready {
		res := checkResult{Name: c.name, OK: true}
		if err := c.check(ctx); err != nil {
			res.OK, res.Detail, ready = false, err.Error(), false
		}
		results = append(results, res)
	}
	return ready, results
}

func (a *adminHTTP) readyz(w http.ResponseWriter, r *http.Request) {
	ready, results := a.runChecks(r.Context())
	checks := map[string]string{}
	for _, c := range results {
		checks[c.Name] = cmp.Or(c.Detail, "ok")
	}
	w.Header().Set("Content-Type", "application/json")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(map[string]any{"ready": ready, "checks": checks})
}

// statusData is what the status page shows.
type statusData struct {
	Hostname, Version string
	Generated         time.Time
	Queue             queue.Stats
	LastHour          []count        // final outcomes in the last hour
	Posture           []postureEntry // how the busiest destinations were reached in the last hour
	Failures          []tlsFailure   // TLS failures by destination, last day
	// Ready and Checks are /readyz as the page was made.
	Ready  bool
	Checks []checkResult
	// DNS is the upstream DNSSEC probe's finding; OnBroken what delivery
	// does meanwhile.
	DNS      *resolver.Health
	OnBroken string
	// Waiting: deferred recipients by destination, the most first, each
	// with the newest reply: why mail waits, whatever the route (a
	// smarthost's certificate failure shows here, not in TLS reports).
	Waiting []waiting
	// Partial: the journal held more than the page reads; the tables
	// cover the newest statusMaxEntries entries.
	Partial bool
}

// The status page reads the journal newest first, at most this far back
// and this many entries, so that it stays quick on a busy relay.
const (
	postureWindow    = time.Hour
	failureWindow    = 24 * time.Hour
	statusMaxEntries = 500_000
)

// waiting is a destination's deferred recipients.
type waiting struct {
	Domain     string
	Recipients int
	Oldest     time.Time // the earliest arrival among them
	LastTry    time.Time
	Host       string // the server of the newest reply
	Reply      string // the newest reply
}

// maxWaiting bounds the destinations the page lists.
const maxWaiting = 20

type count struct {
	Name string
	N    int
}

type tlsFailure struct {
	Domain, Result, MX string
	Info               string // the newest reason given
	Sessions           int
	Last               time.Time
}

// postureEntry counts a destination's deliveries by the strongest
// protection each had.
type postureEntry struct {
	Domain                                           string
	Total, DANE, MTASTS, Verified, Unverified, Plain int
}

func (a *adminHTTP) status(w http.ResponseWriter, r *http.Request) {
	data, err := a.collect(time.Now())
	if err == nil {
		err = a.collectHealth(r.Context(), &data)
	}
	if err != nil {
		a.log.Error("status page", "err", err)
		http.Error(w, "status unavailable: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	if err := statusTemplate.Execute(w, data); err != nil {
		a.log.Error("status page", "err", err)
	}
}

// collect reads the queue counts and, in one pass over the evidence
// journal from the newest entry back, the last hour's outcomes and TLS
// posture and the last day's TLS failures.
func (a *adminHTTP) collect(now time.Time) (statusData, error) {
	d := statusData{Hostname: a.hostname, Version: version(), Generated: now}
	var err error
	if d.Queue, err = a.stats.get(); err != nil {
		return d, err
	}
	outcomes := map[string]int{audit.Delivered: 0, audit.Bounced: 0, audit.Expired: 0}
	byDomain := map[string]*postureEntry{}
	type failKey struct{ domain, result, mx string }
	failures := map[failKey]*tlsFailure{}
	read, max := 0, cmp.Or(a.maxEntries, statusMaxEntries)
	err = a.q.ReadJournalNewestFirst(now.Add(-failureWindow), time.Time{}, func(e queue.JournalEntry) bool {
		if read++; read > max {
			d.Partial = true
			return false
		}
		if at, ok, _ := tlsrpt.DecodeAttempt(e.Data); ok && at.Result != "" {
			k := failKey{strings.ToLower(at.PolicyDomain), at.Result, at.MXHost}
			f := failures[k]
			if f == nil { // the first seen is the newest
				f = &tlsFailure{Domain: k.domain, Result: at.Result, MX: at.MXHost, Info: at.Info, Last: e.Time}
				failures[k] = f
			}
			f.Sessions++
			return true
		}
		rec, ok, _ := audit.Decode(e.Data)
		if !ok || e.Time.Before(now.Add(-postureWindow)) {
			return true
		}
		outcomes[rec.Result]++
		if rec.Result == audit.Delivered {
			countPosture(byDomain, rec)
		}
		return true
	})
	if err != nil {
		return d, err
	}
	for _, name := range []string{audit.Delivered, audit.Bounced, audit.Expired} {
		d.LastHour = append(d.LastHour, count{name, outcomes[name]})
	}
	for _, p := range byDomain {
		d.Posture = append(d.Posture, *p)
	}
	slices.SortFunc(d.Posture, func(x, y postureEntry) int {
		return cmp.Or(cmp.Compare(y.Total, x.Total), cmp.Compare(x.Domain, y.Domain))
	})
	d.Posture = d.Posture[:min(len(d.Posture), 20)]
	for _, f := range failures {
		d.Failures = append(d.Failures, *f)
	}
	slices.SortFunc(d.Failures, func(x, y tlsFailure) int {
		return cmp.Or(cmp.Compare(y.Sessions, x.Sessions), cmp.Compare(x.Domain, y.Domain), cmp.Compare(x.MX, y.MX))
	})
	return d, nil
}

// collectHealth adds what is wrong now: readiness, the DNS upstream, and
// why mail waits.
func (a *adminHTTP) collectHealth(ctx context.Context, d *statusData) error {
	d.Ready, d.Checks = a.runChecks(ctx)
	if a.dns != nil {
		h := a.dns()
		d.DNS, d.OnBroken = &h, a.onBroken
	}
	msgs, err := a.q.List(queue.Filter{State: "deferred"})
	if err != nil {
		return err
	}
	byDomain := map[string]*waiting{}
	for _, m := range msgs {
		for _, r := range m.Recipients {
			if r.State.Final() || r.Attempts == 0 {
				continue
			}
			dom := queue.Domain(r.Addr)
			w := byDomain[dom]
			if w == nil {
				w = &waiting{Domain: dom, Oldest: m.Arrival}
				byDomain[dom] = w
			}
			w.Recipients++
			if m.Arrival.Before(w.Oldest) {
				w.Oldest = m.Arrival
			}
			if r.LastAttempt.After(w.LastTry) {
				w.LastTry, w.Host, w.Reply = r.LastAttempt, r.LastHost, r.LastReply
			}
		}
	}
	for _, w := range byDomain {
		d.Waiting = append(d.Waiting, *w)
	}
	slices.SortFunc(d.Waiting, func(x, y waiting) int {
		return cmp.Or(cmp.Compare(y.Recipients, x.Recipients), cmp.Compare(x.Domain, y.Domain))
	})
	d.Waiting = d.Waiting[:min(len(d.Waiting), maxWaiting)]
	return nil
}

func countPosture(byDomain map[string]*postureEntry, rec audit.Record) {
	dom := queue.Domain(rec.Recipient)
	p := byDomain[dom]
	if p == nil {
		p = &postureEntry{Domain: dom}
		byDomain[dom] = p
	}
	p.Total++
	switch {
	case rec.VerifiedBy == "DANE-EE" || rec.VerifiedBy == "DANE-TA":
		p.DANE++
	case rec.Verified && rec.PolicySource == "mta-sts":
		p.MTASTS++
	case rec.Verified:
		p.Verified++
	case rec.TLSVersion != "":
		p.Unverified++
	default:
		p.Plain++
	}
}

// statsCache keeps the queue counts for a few seconds: counting reads
// every message, and metrics scrapes and the status page both ask.
type statsCache struct {
	q      *queue.Queue
	maxAge time.Duration

	mu    sync.Mutex
	at    time.Time
	stats queue.Stats
}

func (c *statsCache) get() (queue.Stats, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) < c.maxAge {
		return c.stats, nil
	}
	st, err := c.q.Stats()
	if err != nil {
		return st, err
	}
	c.stats, c.at = st, time.Now()
	return st, nil
}
