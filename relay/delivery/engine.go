// Package delivery takes due recipients from the queue and hands them to
// their domains' mail servers, or to a configured next hop, recording every
// outcome: delivered, deferred with backoff, or failed and reported to the
// sender in a delivery status notification.
package delivery

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
	"github.com/postern/postern/relay/dsn"
	"github.com/postern/postern/relay/tlsrpt"
	"github.com/postern/postern/resolver"
	"github.com/postern/postern/tlspolicy"
)

// Config is the delivery settings, already validated.
type Config struct {
	Hostname         string
	Port             int // 25 in production; tests and labs point it elsewhere
	Routes           []Route
	Workers          int
	LeaseTime        time.Duration // renewed while an attempt runs (see holdLease)
	Retry            []time.Duration
	MaxQueueLifetime time.Duration
	DelayWarning     time.Duration
	MaxAddrAttempts  int
	PreferIPv6       bool
	Timeouts         Timeouts
	PollInterval     time.Duration
	// Connection reuse: a session serves up to ReuseCount transactions and
	// waits up to ReuseIdle between them; at most MaxConnectionsPerDomain
	// attempts run at once for one destination domain.
	ReuseCount              int
	ReuseIdle               time.Duration
	MaxConnectionsPerDomain int
	// DrainTimeout is how long attempts in flight may go on after Run's
	// context ends.
	DrainTimeout time.Duration
	// Sources are the local addresses connections leave from (each MX
	// address from a source of its family), with their EHLO names; empty
	// lets the kernel choose. A route may pin its own (Route.Source).
	Sources []Source
}

// Queue is what delivery needs of the queue.
type Queue interface {
	Lease(max int, hold time.Duration) ([]queue.Lease, error)
	Renew(id string, seq uint64, hold time.Duration) (time.Time, error)
	Record(id string, seq uint64, outcomes []queue.Outcome, quiet ...func(queue.Message) bool) (queue.Message, error)
	Retire(id string, seq uint64, notices ...queue.Draft) error
	Body(id string) (io.ReadCloser, error)
	Enqueue(id string, env queue.Envelope, body io.Reader) (string, error)
}

// Deps are the services delivery uses.
type Deps struct {
	Queue    Queue
	Resolver resolver.Resolver
	Log      *slog.Logger
	Clock    func() time.Time
	Dialer   *net.Dialer
	// Policy decides how strong each connection's TLS must be; the
	// default is opportunistic (tlspolicy.May) everywhere.
	Policy tlspolicy.Policy
	// Roots verify the certificates of routes at level verify; nil means
	// the system roots.
	Roots *x509.CertPool
	// Jitter spreads retries; nil means ±10% random.
	Jitter func(time.Duration) time.Duration
	// Shuffle orders MX hosts of equal preference; nil means random.
	Shuffle func([]resolver.MX)
}

// Engine runs delivery workers.
type Engine struct {
	cfg     Config
	d       Deps
	kick    chan struct{}
	conns   *pool
	metrics instruments
	routes  atomic.Pointer[[]Route] // Config.Routes, replaced by SetRoutes
	// renewCheck is how often (real time) an attempt's lease is looked at;
	// it is renewed once half of it is spent by the clock.
	renewCheck time.Duration
}

// SetRoutes replaces the routes (a configuration reload); deliveries that
// start from now on use them.
func (e *Engine) SetRoutes(routes []Route) { e.routes.Store(&routes) }

// New builds an engine.
func New(cfg Config, d Deps) *Engine {
	if d.Clock == nil {
		d.Clock = time.Now
	}
	if d.Dialer == nil {
		d.Dialer = &net.Dialer{}
	}
	if d.Policy == nil {
		d.Policy = tlspolicy.Fixed{Level: tlspolicy.May}
	}
	if d.Jitter == nil {
		d.Jitter = func(t time.Duration) time.Duration { return t + time.Duration((rand.Float64()-0.5)*0.2*float64(t)) }
	}
	if d.Shuffle == nil {
		d.Shuffle = randomShuffle
	}
	if cfg.Timeouts == (Timeouts{}) {
		cfg.Timeouts = DefaultTimeouts
	}
	e := &Engine{cfg: cfg, d: d, kick: make(chan struct{}, 1),
		conns: newPool(cfg.ReuseCount, cfg.ReuseIdle, cfg.MaxConnectionsPerDomain, d.Clock), metrics: newInstruments(),
		renewCheck: max(min(time.Second, cfg.LeaseTime/8), time.Millisecond)}
	e.SetRoutes(cfg.Routes)
	return e
}

// Kick makes the engine look for due work now, as after a submission.
func (e *Engine) Kick() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// Run delivers until ctx ends, then drains: it takes no more work and
// lets attempts in flight finish for up to Config.DrainTimeout. Attempts
// still running then are cut off, and their recipients given back to the
// queue unattempted, due at once; nothing is recorded as tried that was not.
func (e *Engine) Run(ctx context.Context) {
	sem := make(chan struct{}, e.cfg.Workers)
	var wg sync.WaitGroup
	work, abort := context.WithCancel(context.WithoutCancel(ctx))
	defer abort()
	defer e.conns.closeAll()
	defer e.drain(&wg, abort)
	ticker := time.NewTicker(e.cfg.PollInterval)
	defer ticker.Stop()
	for {
		free := cap(sem) - len(sem)
		var leases []queue.Lease
		if free > 0 && ctx.Err() == nil {
			var err error
			leases, err = e.d.Queue.Lease(free, e.cfg.LeaseTime)
			if err != nil {
				e.d.Log.Error("lease from queue failed", "err", err)
			}
		}
		for _, l := range leases {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done(); e.Kick() }()
				e.process(work, l)
			}()
		}
		if len(leases) > 0 && len(leases) == free {
			continue // more may be due
		}
		select {
		case <-ctx.Done():
			return
		case <-e.kick:
		case <-ticker.C:
			e.conns.reap()
		}
	}
}

// drain waits for the workers, cutting them off at the drain deadline.
func (e *Engine) drain(wg *sync.WaitGroup, abort context.CancelFunc) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	timer := time.NewTimer(e.cfg.DrainTimeout)
	defer timer.Stop()
	select {
	case <-done:
		return
	case <-timer.C:
	}
	e.d.Log.Warn("delivery drain deadline reached: cutting off attempts in flight; their recipients stay queued", "deadline", e.cfg.DrainTimeout)
	abort()
	<-done
}

// RunDue processes everything due now, one lease at a time, and returns
// how many leases it handled. Tests use it with a fake clock.
func (e *Engine) RunDue(ctx context.Context) int {
	n := 0
	for {
		leases, err := e.d.Queue.Lease(1, e.cfg.LeaseTime)
		if err != nil || len(leases) == 0 {
			return n
		}
		e.process(ctx, leases[0])
		n++
	}
}

func (e *Engine) process(ctx context.Context, l queue.Lease) {
	m := l.Message
	if l.Retire {
		e.retire(m, l.Seq)
		return
	}
	ctx, span := e.metrics.tracer.Start(ctx, "delivery", trace.WithAttributes(attribute.String("postern.queue_id", m.ID),
		attribute.Int("postern.recipients", len(l.Recipients))))
	defer span.End()
	ctx, release := e.holdLease(ctx, l)
	defer release()
	byDomain := map[string][]int{}
	var order []string
	for _, i := range l.Recipients {
		d := queue.Domain(m.Recipients[i].Addr)
		if byDomain[d] == nil {
			order = append(order, d)
		}
		byDomain[d] = append(byDomain[d], i)
	}
	var outcomes []queue.Outcome
	for _, domain := range order {
		if ctx.Err() != nil {
			outcomes = append(outcomes, returned(byDomain[domain])...)
			continue
		}
		out := e.deliverDomain(ctx, m, domain, byDomain[domain])
		if ctx.Err() != nil {
			// Cut off by shutdown: a deferral now says nothing about the
			// destination, so the recipient goes back untried. What was
			// delivered or refused stands.
			for i := range out {
				if out[i].Result == queue.ResultDeferred {
					out[i] = queue.Outcome{Recipient: out[i].Recipient, Result: queue.ResultReturned}
				}
			}
		}
		outcomes = append(outcomes, out...)
	}
	warned := e.maybeWarnDelay(m, outcomes)
	release() // the attempt is over; Record settles the lease
	after, err := e.d.Queue.Record(m.ID, l.Seq, outcomes, e.quiet)
	if err == nil && warned {
		e.metrics.notice("delay")
	}
	switch {
	case errors.Is(err, queue.ErrLeaseLost):
		// Deliveries made and their evidence were kept all the same; what
		// else this attempt learnt is the new holder's to find out.
		e.d.Log.Warn("lease lost before the outcomes were recorded; deliveries and their evidence kept", "queue_id", m.ID, "err", err)
		if after.RetireSeq == 0 {
			return
		}
	case err != nil:
		e.d.Log.Error("recording delivery outcomes failed", "queue_id", m.ID, "err", err)
		return
	}
	if after.Done() && after.RetireSeq == 0 {
		e.d.Log.Info("message finished", "queue_id", m.ID, "notices", 0)
	} else if after.Done() {
		e.retire(after, after.RetireSeq)
	}
}

// holdLease renews l while its attempt runs. One attempt may rightly take
// longer than any lease: RFC 5321 4.5.3.2 allows five minutes per command,
// three per data block and ten for the final dot, for every address and
// every domain of the lease. A lease that ran out would hand the recipients
// to a second worker, which would deliver them again. So the lease is
// renewed once half of it is spent; and should it be lost all the same (or
// not renewed before it ends), the attempt is cut off, since another worker
// may now hold its recipients. release stops the renewals; it may be called
// more than once.
func (e *Engine) holdLease(ctx context.Context, l queue.Lease) (context.Context, func()) {
	ctx, cutOff := context.WithCancel(ctx)
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(e.renewCheck)
		defer tick.Stop()
		until := l.Until
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			now := e.d.Clock()
			if until.Sub(now) > e.cfg.LeaseTime/2 {
				continue
			}
			next, err := e.d.Queue.Renew(l.Message.ID, l.Seq, e.cfg.LeaseTime)
			if err == nil {
				until = next
				continue
			}
			if errors.Is(err, queue.ErrLeaseLost) || errors.Is(err, queue.ErrNotFound) || !now.Before(until) {
				e.d.Log.Error("delivery lease lost: cutting the attempt off", "queue_id", l.Message.ID, "err", err)
				cutOff()
				return
			}
			e.d.Log.Warn("renewing a delivery lease failed; trying again", "queue_id", l.Message.ID, "until", until, "err", err)
		}
	}()
	var once sync.Once
	return ctx, func() {
		once.Do(func() { close(stop); <-stopped; cutOff() })
	}
}

func returned(idxs []int) []queue.Outcome {
	out := make([]queue.Outcome, len(idxs))
	for i, idx := range idxs {
		out[i] = queue.Outcome{Recipient: idx, Result: queue.ResultReturned}
	}
	return out
}

// deliverDomain makes one attempt for the recipients of one domain.
func (e *Engine) deliverDomain(ctx context.Context, m queue.Message, domain string, idxs []int) []queue.Outcome {
	ctx, span := e.metrics.tracer.Start(ctx, "delivery.domain", trace.WithAttributes(attribute.String("postern.domain", domain)))
	defer span.End()
	var seen []tlsrpt.Attempt
	note := func(a tlsrpt.Attempt) {
		if !m.TLSReport { // a report's own delivery is not reported (RFC 8460 3)
			a.PolicyDomain = domain
			seen = append(seen, a)
		}
	}
	out := e.tryHops(ctx, m, domain, idxs, note)
	if len(out) > 0 {
		// What each attempt saw of the domain's TLS policy is journalled
		// with the outcomes, for the domain's TLS reports.
		for _, a := range seen {
			out[0].Journal = append(out[0].Journal, a.Encode())
		}
	}
	return out
}

// tryHops makes one attempt for the recipients of one domain, trying its
// hops in order; note hears of every session attempted under a policy.
func (e *Engine) tryHops(ctx context.Context, m queue.Message, domain string, idxs []int, note func(tlsrpt.Attempt)) []queue.Outcome {
	now := e.d.Clock()
	dnsCtx, dnsSpan := e.metrics.tracer.Start(ctx, "dns.mx")
	hopList, err := hops(dnsCtx, e.d.Resolver, *e.routes.Load(), e.cfg.Port, domain, e.d.Shuffle)
	dnsSpan.End()
	if err != nil {
		f := asFailure(err, "", "route")
		e.logAttempt(m, idxs, "", netip.AddrPort{}, TLSInfo{}, f.Error(), map[bool]string{true: "deferred", false: "failed"}[f.Temporary])
		return e.outcomesFor(m, idxs, f, now)
	}
	release, err := e.conns.acquire(ctx, domain)
	if err != nil {
		return e.outcomesFor(m, idxs, &Failure{Temporary: true, Enhanced: "4.4.2", Text: "shutting down"}, now)
	}
	defer release()
	var last *Failure
	tried := 0
	for _, hop := range hopList {
		policyCtx, policySpan := e.metrics.tracer.Start(ctx, "tls.policy", trace.WithAttributes(attribute.String("postern.mx", hop.Host)))
		policy, err := e.decide(policyCtx, m, domain, hop)
		policySpan.SetAttributes(attribute.String("postern.tls_policy", policy.Describe()))
		policySpan.End()
		if err != nil {
			f := &Failure{Temporary: true, Enhanced: "4.7.5", Host: hop.Host, Text: "TLS policy for " + hop.Host + ": " + err.Error()}
			var refusal *tlspolicy.Refusal
			if errors.As(err, &refusal) {
				f.Temporary, f.Enhanced, f.ResultType = !refusal.Permanent, refusal.Enhanced, refusal.ResultType
				if hop.Route == nil && refusal.ResultType != "" {
					note(tlsrpt.Attempt{PolicyType: orNoPolicy(refusal.PolicyType), PolicyStrings: refusal.PolicyStrings,
						MXHost: hop.Host, Result: refusal.ResultType, Info: refusal.Reason})
				}
			}
			e.logAttempt(m, idxs, hop.Host, netip.AddrPort{}, TLSInfo{ResultType: f.ResultType}, f.Error(), "skipped")
			if !f.Temporary {
				return e.outcomesFor(m, idxs, f, now)
			}
			last = f
			continue
		}
		// A session kept from an earlier message to this hop goes first.
		if pc := e.conns.take(poolKey(hop, policy)); pc != nil {
			out, f := e.transact(ctx, m, idxs, hop, policy, pc, now)
			if f == nil {
				return out
			}
			if !f.Temporary {
				return e.outcomesFor(m, idxs, f, now)
			}
		}
		addrCtx, addrSpan := e.metrics.tracer.Start(ctx, "dns.address", trace.WithAttributes(attribute.String("postern.mx", hop.Host)))
		addrs, f := e.addresses(addrCtx, hop.Host)
		addrSpan.End()
		if f != nil {
			if hop.Route == nil {
				// DNS failures count too: they keep mail from the domain as surely as TLS ones.
				result := "validation-failure"
				if strings.Contains(f.Text, "DNSSEC") {
					result = "dnssec-invalid"
				}
				note(tlsrpt.Attempt{PolicyType: orNoPolicy(policy.PolicyType), PolicyStrings: policy.PolicyStrings,
					MXHost: hop.Host, Result: result, Info: f.Text})
			}
			last = f
			continue
		}
		if addrs, f = e.reachable(hop, addrs); f != nil {
			last = f
			continue
		}
		for _, a := range addrs {
			if tried >= e.cfg.MaxAddrAttempts {
				break
			}
			tried++
			out, f := e.attempt(ctx, m, idxs, hop, policy, netip.AddrPortFrom(a, uint16(hop.Port)), now, note)
			if f == nil {
				return out
			}
			last = f
			if !f.Temporary {
				return e.outcomesFor(m, idxs, f, now)
			}
		}
	}
	if last == nil {
		last = &Failure{Temporary: true, Enhanced: "4.4.4", Text: "no usable address for any mail server of " + domain}
	}
	return e.outcomesFor(m, idxs, last, now)
}

func (e *Engine) addresses(ctx context.Context, host string) ([]netip.Addr, *Failure) {
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return []netip.Addr{a}, nil
	}
	ans, err := e.d.Resolver.LookupAddrs(ctx, host)
	if err != nil {
		return nil, &Failure{Temporary: true, Enhanced: "4.4.3", Text: "address lookup for " + host + ": " + err.Error()}
	}
	if ans.Security == resolver.Bogus {
		return nil, &Failure{Temporary: true, Enhanced: "4.7.5", Text: "address lookup for " + host + " failed DNSSEC validation: " + ans.Reason}
	}
	if len(ans.Addrs) == 0 {
		return nil, &Failure{Temporary: true, Enhanced: "4.4.4", Text: "mail server " + host + " has no address"}
	}
	v6, v4 := []netip.Addr{}, []netip.Addr{}
	for _, a := range ans.Addrs {
		if a.Is6() {
			v6 = append(v6, a)
		} else {
			v4 = append(v4, a)
		}
	}
	if e.cfg.PreferIPv6 {
		return append(v6, v4...), nil
	}
	return append(v4, v6...), nil
}

// attempt delivers over one connection. A non-nil Failure means this host
// could not take the transaction at all and the next may be tried.
func (e *Engine) attempt(ctx context.Context, m queue.Message, idxs []int, hop Hop, policy tlspolicy.Decision, addr netip.AddrPort, now time.Time, note func(tlsrpt.Attempt)) ([]queue.Outcome, *Failure) {
	ctx, span := e.metrics.tracer.Start(ctx, "smtp.attempt", trace.WithAttributes(attribute.String("postern.mx", hop.Host),
		attribute.String("postern.ip", addr.Addr().String())))
	defer span.End()
	connectCtx, connectSpan := e.metrics.tracer.Start(ctx, "connect")
	from := e.egressFor(hop, addr.Addr())
	c, err := dialSession(connectCtx, from.dialer, from.helo, hop.Host, addr, e.cfg.Timeouts, policy)
	if err == nil {
		connectSpan.SetAttributes(attribute.String("postern.tls_version", c.tls.Version), attribute.String("postern.tls_auth", c.tls.Auth))
	}
	connectSpan.End()
	seen := tlsrpt.Attempt{PolicyType: orNoPolicy(policy.PolicyType), PolicyStrings: policy.PolicyStrings,
		MXHost: hop.Host, ReceivingIP: addr.Addr().String()}
	if f := asFailureOrNil(err); f != nil && f.CleartextRetry {
		// What failed is still reported, then the session is had without TLS.
		if hop.Route == nil && f.ResultType != "" {
			seen.Result, seen.Info = f.ResultType, f.Text
			note(seen)
			seen.Result, seen.Info = "", ""
		}
		c, err = e.fallback(ctx, m, hop, addr, policy, f)
	}
	if err != nil {
		f := asFailure(err, hop.Host, "connect")
		switch {
		case f.ResultType != "":
			seen.Result, seen.Info = f.ResultType, f.Text
		case f.Enhanced == "4.4.1":
			seen.Result, seen.Info = "validation-failure", "connection failed: "+f.Text
		}
		if hop.Route == nil && seen.Result != "" {
			note(seen)
		}
		e.logAttempt(m, idxs, hop.Host, addr, TLSInfo{Policy: policy.Describe(), PolicySource: policy.Source, ResultType: f.ResultType}, f.Error(), "deferred")
		return nil, f
	}
	if hop.Route == nil && c.tls.Fallback == "" {
		note(seen) // a session under the policy: a success for the report
	}
	if r := hop.Route; r != nil && r.Username != "" {
		// Credentials go only over TLS whose certificate was verified (or,
		// where the operator opted in, at least over TLS): an attacker who
		// can intercept the connection must not learn them.
		switch {
		case c.tls.Version == "":
			c.close()
			return nil, &Failure{Temporary: true, Enhanced: "4.7.0", Host: hop.Host, Text: hop.Host + " offers no TLS; not sending route credentials in cleartext"}
		case !c.tls.Verified && !r.AuthOverUnverifiedTLS:
			c.close()
			return nil, &Failure{Temporary: true, Enhanced: "4.7.0", Host: hop.Host,
				Text: hop.Host + "'s certificate was not verified; not sending route credentials (set auth_over_unverified_tls on the route to allow it)"}
		}
		if err := c.client.Auth(sasl.NewPlainClient("", r.Username, r.Password)); err != nil {
			c.close()
			f := asFailure(err, hop.Host, "AUTH")
			f.Temporary = true // our credentials are wrong: the operator must fix them, the mail must wait
			return nil, f
		}
	}
	return e.transact(ctx, m, idxs, hop, policy, &pooled{c: c}, now)
}

// fallback opens a cleartext session after STARTTLS failed where nothing
// required TLS (RFC 7435 3: opportunistic TLS must not lose mail that
// cleartext would deliver). It is logged, counted, and recorded in the
// session's TLS information, hence in the audit trail and, as a delivery in
// cleartext, in the downgrade memory. Only a decision that allows it gets
// here: never DANE, MTA-STS, REQUIRETLS, a level above may, or a domain
// the downgrade memory (in defer mode) holds to TLS.
func (e *Engine) fallback(ctx context.Context, m queue.Message, hop Hop, addr netip.AddrPort, policy tlspolicy.Decision, why *Failure) (*conn, error) {
	e.metrics.fallback(policy.Source)
	e.d.Log.Warn("STARTTLS failed where TLS is opportunistic: retrying in cleartext on a new connection",
		"queue_id", m.ID, "mx", hop.Host, "ip", addr.Addr().String(), "tls_policy", policy.Describe(), "tls_result", why.ResultType, "reason", why.Text)
	plain := policy
	plain.Level = tlspolicy.None
	plain.Reason = policy.Reason + "; cleartext after STARTTLS failed"
	from := e.egressFor(hop, addr.Addr())
	c, err := dialSession(ctx, from.dialer, from.helo, hop.Host, addr, e.cfg.Timeouts, plain)
	if err != nil {
		return nil, err
	}
	c.tls.Fallback = why.Text
	c.tls.Policy, c.tls.PolicySource = policy.Describe()+" (cleartext fallback)", policy.Source
	return c, nil
}

func asFailureOrNil(err error) *Failure {
	var f *Failure
	if errors.As(err, &f) {
		return f
	}
	return nil
}

func orNoPolicy(policyType string) string {
	if policyType == "" {
		return "no-policy-found"
	}
	return policyType
}

// decide asks the policy, unless the hop is a route with its own level.
func (e *Engine) decide(ctx context.Context, m queue.Message, domain string, hop Hop) (tlspolicy.Decision, error) {
	if r := hop.Route; r != nil && (r.TLS != nil || r.Username != "" || len(r.Pins) > 0) {
		return RouteDecision(*r, e.d.Roots, m.RequireTLS), nil
	}
	return e.d.Policy.Decide(ctx, tlspolicy.Request{Domain: domain, MXHost: hop.Host, Port: hop.Port,
		RequireTLS: m.Envelope.RequireTLS, TLSOptional: m.Envelope.TLSOptional, Report: m.Envelope.TLSReport, Route: hop.Route != nil})
}

// poolKey names the sessions that may be shared: same host, port and TLS
// decision, so no message rides on a session made for a weaker policy.
func poolKey(h Hop, d tlspolicy.Decision) string {
	// ConnKey is what keeps a session from serving a weaker decision; the
	// description keeps the evidence of each delivery its own.
	return h.Host + "|" + strconv.Itoa(h.Port) + "|" + d.Describe() + "|" + d.ConnKey() + egressKey(h)
}

// transact sends one message on an open session, and keeps the session for
// the next message when it is still in good order.
func (e *Engine) transact(ctx context.Context, m queue.Message, idxs []int, hop Hop, policy tlspolicy.Decision, pc *pooled, now time.Time) ([]queue.Outcome, *Failure) {
	c, addr := pc.c, pc.c.addr
	keep := false
	_, span := e.metrics.tracer.Start(ctx, "smtp.transaction")
	defer span.End()
	// go-smtp's client knows no context, and sets its own deadlines: a
	// shutdown that cuts attempts off closes the connection beneath it.
	cutOff := context.AfterFunc(ctx, func() { c.netConn.Close() })
	defer func() {
		if !cutOff() {
			keep = false
		}
		if keep {
			e.conns.put(poolKey(hop, policy), pc)
		} else {
			c.close()
		}
	}()
	body, err := e.d.Queue.Body(m.ID)
	if err != nil {
		return nil, &Failure{Temporary: true, Enhanced: "4.3.0", Text: "reading queued message: " + err.Error()}
	}
	defer body.Close()
	tx := Transaction{From: m.From, Size: m.Size, Body: body, Options: smtp.MailOptions{
		UTF8: m.UTF8, RequireTLS: m.RequireTLS, Return: smtp.DSNReturn(m.Return), EnvelopeID: m.EnvelopeID,
		Body: smtp.BodyType(m.BodyType),
	}}
	for _, i := range idxs {
		r := m.Recipients[i]
		ro := smtp.RcptOptions{}
		for _, n := range r.Notify {
			ro.Notify = append(ro.Notify, smtp.DSNNotify(n))
		}
		if typ, addr, ok := strings.Cut(r.Original, ";"); ok {
			ro.OriginalRecipientType, ro.OriginalRecipient = smtp.DSNAddressType(strings.ToUpper(typ)), addr
		}
		tx.Recipients = append(tx.Recipients, TxRecipient{Addr: r.Addr, Options: ro})
	}
	results, err := c.send(tx)
	if err != nil {
		f := asFailure(err, hop.Host, "transaction")
		e.logAttempt(m, idxs, hop.Host, addr, c.tls, f.Error(), "failed-transaction")
		return nil, f
	}
	keep = true
	out := make([]queue.Outcome, len(idxs))
	for k, i := range idxs {
		out[k] = e.outcome(m, i, results[k], hop.Host, now)
		e.attachEvidence(&out[k], m, addr, c.tls, policy.Source, now)
	}
	if ok, _ := c.client.Extension("DSN"); !ok {
		e.reportRelayed(m, out, now)
	}
	e.logAttempt(m, idxs, hop.Host, addr, c.tls, summarize(results), transactionResult(results))
	if o, ok := e.d.Policy.(tlspolicy.Observer); ok && hop.Route == nil {
		// What the domain's MX offered, for the downgrade memory.
		seen := tlspolicy.SeenPlaintext
		switch {
		case c.tls.Verified || c.tls.PassivePKIX:
			seen = tlspolicy.SeenVerified
		case c.tls.Version != "":
			seen = tlspolicy.SeenEncrypted
		}
		o.Observe(context.Background(), queue.Domain(m.Recipients[idxs[0]].Addr), seen)
	}
	return out, nil
}

// transactionResult names what a finished transaction did for its
// recipients: delivered (all), partial, deferred or refused (none).
func transactionResult(results []*Failure) string {
	delivered, temporary := 0, 0
	for _, f := range results {
		switch {
		case f == nil:
			delivered++
		case f.Temporary:
			temporary++
		}
	}
	switch {
	case delivered == len(results):
		return "delivered"
	case delivered > 0:
		return "partial"
	case temporary > 0:
		return "deferred"
	}
	return "refused"
}

func summarize(results []*Failure) string {
	var parts []string
	for _, f := range results {
		if f == nil {
			parts = append(parts, "250 accepted")
		} else {
			parts = append(parts, f.Error())
		}
	}
	return strings.Join(parts, "; ")
}

func (e *Engine) logAttempt(m queue.Message, idxs []int, host string, addr netip.AddrPort, t TLSInfo, reply, result string) {
	rcpts := make([]string, len(idxs))
	for k, i := range idxs {
		rcpts[k] = m.Recipients[i].Addr
	}
	ip := ""
	if addr.IsValid() {
		ip = addr.Addr().String()
	}
	e.d.Log.Info("delivery attempt", "queue_id", m.ID, "rcpts", rcpts, "mx", host, "ip", ip, "source_ip", t.SourceIP,
		"tls_version", t.Version, "tls_cipher", t.Cipher, "verified", t.Verified, "tls_auth", t.Auth, "tls_policy", t.Policy, "tls_policy_type", t.PolicyType, "tls_verify_failure", t.VerifyFailure, "tls_result", t.ResultType, "reply", reply,
		"delay", e.d.Clock().Sub(m.Arrival).Round(time.Millisecond), "result", result)
	e.metrics.attempt(result, t)
}

func (e *Engine) outcomesFor(m queue.Message, idxs []int, f *Failure, now time.Time) []queue.Outcome {
	out := make([]queue.Outcome, len(idxs))
	for k, i := range idxs {
		out[k] = e.outcome(m, i, f, f.Host, now)
		e.attachEvidence(&out[k], m, netip.AddrPort{}, TLSInfo{}, "", now)
	}
	return out
}

// attachEvidence adds the audit record of a final outcome, which the queue
// journals in the same transaction as the outcome itself.
func (e *Engine) attachEvidence(o *queue.Outcome, m queue.Message, addr netip.AddrPort, t TLSInfo, source string, now time.Time) {
	if o.Result == queue.ResultDeferred {
		return
	}
	r := audit.Record{Time: now, QueueID: m.ID, MessageID: m.MessageID, Sender: m.From, Recipient: m.Recipients[o.Recipient].Addr,
		Result: audit.Delivered, MX: o.Host, TLSVersion: t.Version, TLSCipher: t.Cipher, PolicySource: source,
		PolicyMode: t.Policy, Verified: t.Verified, VerifiedBy: t.Auth, Reply: o.Reply, PeerCertSHA256: t.PeerSHA256,
		TLSFallback: t.Fallback, SourceIP: t.SourceIP}
	if o.Result == queue.ResultFailed {
		r.Result = audit.Bounced
		if strings.HasPrefix(o.Reply, "4.4.7 ") {
			r.Result = audit.Expired
		}
	}
	if addr.IsValid() {
		r.IP = addr.Addr().String()
	}
	o.Journal = append(o.Journal, r.Encode())
	e.metrics.finished(r.Result, source, t.Verified, now.Sub(m.Arrival).Seconds())
}

// outcome turns one recipient's result into what the queue records: a
// temporary failure is retried with backoff until the queue lifetime runs
// out, then fails (RFC 5321 4.5.4.1).
func (e *Engine) outcome(m queue.Message, i int, f *Failure, host string, now time.Time) queue.Outcome {
	o := queue.Outcome{Recipient: i, Host: host}
	switch {
	case f == nil:
		o.Result, o.Reply = queue.ResultDelivered, "250 2.0.0 accepted"
	case !f.Temporary:
		o.Result, o.Reply = queue.ResultFailed, f.Error()
	case now.Sub(m.Arrival) >= e.cfg.MaxQueueLifetime:
		o.Result = queue.ResultFailed
		o.Reply = "4.4.7 message expired after " + e.cfg.MaxQueueLifetime.String() + " in the queue; last error: " + f.Error()
	default:
		o.Result, o.Reply = queue.ResultDeferred, f.Error()
		o.RetryAt = now.Add(e.backoff(m.Recipients[i].Attempts))
	}
	return o
}

func (e *Engine) backoff(attempts int) time.Duration {
	if len(e.cfg.Retry) == 0 {
		return time.Hour
	}
	return e.d.Jitter(e.cfg.Retry[min(attempts, len(e.cfg.Retry)-1)])
}

var enhancedCode = regexp.MustCompile(`\b([245]\.\d{1,3}\.\d{1,3})\b`)

// statusOf finds the enhanced status code in a recorded reply.
func statusOf(reply string, fallback string) string {
	if m := enhancedCode.FindStringSubmatch(reply); m != nil {
		return m[1]
	}
	return fallback
}

// maybeWarnDelay adds a delay notice (RFC 3464 "delayed") to the outcomes,
// once per recipient after DelayWarning, where NOTIFY allows it. The notice
// rides on the first outcome it covers, so that the queue records it with
// the outcomes in one transaction (all outcomes of a lease apply or none
// do): a crash cannot send it twice, and DelayNotified is never recorded
// for a notice that was not queued. It reports whether it added one.
func (e *Engine) maybeWarnDelay(m queue.Message, outcomes []queue.Outcome) bool {
	if m.From == "" || e.cfg.DelayWarning <= 0 || e.d.Clock().Sub(m.Arrival) < e.cfg.DelayWarning {
		return false
	}
	var rcpts []dsn.Recipient
	var covered []int
	for k := range outcomes {
		o := &outcomes[k]
		r := m.Recipients[o.Recipient]
		if o.Result != queue.ResultDeferred || r.DelayNotified || !dsn.Wanted(r.Notify, dsn.Delayed) {
			continue
		}
		covered = append(covered, k)
		rcpts = append(rcpts, dsn.Recipient{Final: r.Addr, Original: r.Original, Action: dsn.Delayed,
			Status: statusOf(o.Reply, "4.0.0"), RemoteMTA: o.Host, Diagnostic: o.Reply, LastAttempt: e.d.Clock(),
			WillRetryUntil: m.Arrival.Add(e.cfg.MaxQueueLifetime)})
	}
	if len(rcpts) == 0 {
		return false
	}
	draft, ok := e.notice(m, rcpts, true)
	if !ok {
		return false // not marked: the next deferral tries again
	}
	outcomes[covered[0]].Notices = append(outcomes[covered[0]].Notices, draft)
	for _, k := range covered {
		outcomes[k].DelayNotified = true
	}
	return true
}

// quiet reports whether a finished message needs no notice, so that the
// queue can retire it together with its last outcome.
func (e *Engine) quiet(m queue.Message) bool {
	return len(e.failureReport(m)) == 0
}

// failureReport lists the recipients a bounce must name.
func (e *Engine) failureReport(m queue.Message) []dsn.Recipient {
	var rcpts []dsn.Recipient
	for _, r := range m.Recipients {
		// Success reports (NOTIFY=SUCCESS) are left to the next hop when it
		// offers DSN; for a hop without DSN, reportRelayed sent Postern's
		// own "relayed" report when the hop accepted the message.
		if r.State != queue.Failed || !dsn.Wanted(r.Notify, dsn.Failed) {
			continue
		}
		rcpts = append(rcpts, dsn.Recipient{Final: r.Addr, Original: r.Original, Action: dsn.Failed,
			Status: statusOf(r.LastReply, "5.0.0"), RemoteMTA: r.LastHost, Diagnostic: r.LastReply, LastAttempt: r.LastAttempt})
	}
	return rcpts
}

// retire removes a finished message, queueing its bounce in the same step.
func (e *Engine) retire(m queue.Message, seq uint64) {
	rcpts := e.failureReport(m)
	var notices []queue.Draft
	if len(rcpts) > 0 && m.From == "" {
		// Never bounce a bounce (RFC 3464 2, RFC 5321 6.1); but say so, so
		// that an undeliverable notice is not lost without a trace.
		for _, r := range rcpts {
			e.d.Log.Warn("notice undeliverable; discarded (it had the null sender)", "queue_id", m.ID,
				"rcpt", r.Final, "reply", r.Diagnostic)
		}
	}
	if len(rcpts) > 0 && m.From != "" {
		d, ok := e.notice(m, rcpts, false)
		if !ok {
			// Never retire without the notice: the retirement lease runs
			// out and the message is retired again later.
			return
		}
		notices = append(notices, d)
	}
	if err := e.d.Queue.Retire(m.ID, seq, notices...); err != nil {
		e.d.Log.Error("retiring message failed", "queue_id", m.ID, "err", err)
		return
	}
	if len(notices) > 0 {
		e.metrics.notice("failure")
	}
	e.d.Log.Info("message finished", "queue_id", m.ID, "notices", len(notices))
}

// notice builds a DSN to m's sender from the null sender. When m's body is
// gone the notice goes without it, saying so; when it cannot be read now
// (too many open files, say) there is no notice yet (ok is false), and the
// caller must try again later rather than go on without one.
func (e *Engine) notice(m queue.Message, rcpts []dsn.Recipient, headersOnly bool) (queue.Draft, bool) {
	var original []byte
	lost := false
	body, err := e.d.Queue.Body(m.ID)
	if err == nil {
		original, err = io.ReadAll(io.LimitReader(body, dsn.MaxReturnedBytes+1))
		body.Close()
	}
	switch {
	case errors.Is(err, queue.ErrBodyGone):
		e.d.Log.Error("message body is gone; its notice says so and returns none of it", "queue_id", m.ID, "err", err)
		original, lost = nil, true
	case err != nil:
		e.d.Log.Error("reading message for its notice failed; will try again", "queue_id", m.ID, "err", err)
		return queue.Draft{}, false
	}
	n := dsn.Notice{ReportingMTA: e.cfg.Hostname, From: "MAILER-DAEMON@" + e.cfg.Hostname, To: m.From,
		EnvelopeID: m.EnvelopeID, Arrival: m.Arrival, Date: e.d.Clock(), Recipients: rcpts, OriginalLost: lost,
		// A REQUIRETLS message's body must not travel in a report that is
		// not itself held to REQUIRETLS (RFC 8689 5).
		HeadersOnly: headersOnly || strings.EqualFold(m.Return, "HDRS") || m.RequireTLS}
	// The report's envelope needs SMTPUTF8 only for a non-ASCII sender.
	env := queue.Envelope{From: "", UTF8: !isASCII(m.From), BodyType: "8BITMIME", Recipients: []queue.Recipient{{Addr: m.From, Notify: []string{"NEVER"}}}}
	return queue.Draft{Envelope: env, Body: dsn.Build(n, original)}, true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
