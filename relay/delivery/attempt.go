package delivery

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/smtpclient"
	"github.com/postern/postern/relay/tlsrpt"
	"github.com/postern/postern/tlspolicy"
)

// attempt is one try at the recipients of one domain: everything the try
// needs, with methods in the order the protocol happens. run finds the
// route (a configured next hop, or the MX hosts), then for each hop decides
// the TLS policy, resolves addresses, connects (in cleartext again where
// STARTTLS failed and only opportunistic TLS was asked), authenticates to a
// route that has credentials, transacts, and records an outcome for every
// recipient.
type attempt struct {
	e      *Engine
	m      queue.Message
	domain string
	idxs   []int     // the recipients of m that the attempt is for
	now    time.Time // when the attempt began: outcomes and evidence carry it
	// seen is what each session tried under a policy saw of the domain's
	// TLS, for the domain's TLS reports.
	seen []tlsrpt.Attempt
}

// deliverDomain makes one attempt for the recipients of one domain.
func (e *Engine) deliverDomain(ctx context.Context, m queue.Message, domain string, idxs []int) []queue.Outcome {
	ctx, span := e.metrics.tracer.Start(ctx, "delivery.domain", trace.WithAttributes(attribute.String("postern.domain", domain)))
	defer span.End()
	a := &attempt{e: e, m: m, domain: domain, idxs: idxs, now: e.d.Clock()}
	out := a.run(ctx)
	if len(out) > 0 {
		// What each attempt saw of the domain's TLS policy is journalled
		// with the outcomes, for the domain's TLS reports.
		for _, s := range a.seen {
			out[0].Journal = append(out[0].Journal, s.Encode())
		}
	}
	return out
}

// note hears of every session attempted under a policy.
func (a *attempt) note(s tlsrpt.Attempt) {
	if !a.m.TLSReport { // a report's own delivery is not reported (RFC 8460 3)
		s.PolicyDomain = a.domain
		a.seen = append(a.seen, s)
	}
}

// run tries the domain's hops in order, and the addresses of each, until
// one takes the transaction or refuses it for good. It starts only if the
// domain's concurrency window has room (see destinations): a busy domain's
// recipients are postponed, a dead one's deferred without connecting; and
// what the attempt learns of the domain goes back to the window.
func (a *attempt) run(ctx context.Context) []queue.Outcome {
	e := a.e
	adm := e.dests.admit(a.domain)
	switch {
	case adm.slot == nil && adm.dead.IsZero():
		return a.postpone(adm.wait)
	case adm.slot == nil:
		return a.unreachable(adm.dead, adm.failures)
	}
	heard := noSignal
	defer func() {
		if ctx.Err() != nil {
			heard = noSignal // cut off (shutdown, a lost lease): nothing learnt of the domain
		}
		adm.slot.done(heard)
	}()
	hopList, f := a.route(ctx)
	if f != nil {
		return a.fail(f)
	}
	var last *Failure
	tried := 0
	for _, hop := range hopList {
		policy, f := a.policy(ctx, hop)
		if f != nil {
			if !f.Temporary {
				return a.fail(f)
			}
			last = f
			continue
		}
		// A session kept from an earlier message to this hop goes first.
		if pc := e.conns.take(poolKey(hop, policy)); pc != nil {
			out, f := a.transact(ctx, hop, policy, pc)
			// A kept session the server has since closed says nothing
			// of the destination; a reply does.
			if fb := feedbackOf(f); fb != connFailed {
				heard = max(heard, fb)
			}
			if f == nil {
				return out
			}
			if !f.Temporary {
				return a.fail(f)
			}
		}
		addrs, f := a.addresses(ctx, hop, policy)
		if f == nil {
			addrs, f = e.reachable(hop, addrs) // from the egress addresses, where set
		}
		if f != nil {
			last = f
			continue
		}
		for _, addr := range addrs {
			if tried >= e.cfg.MaxAddrAttempts {
				break
			}
			tried++
			out, f := a.deliverVia(ctx, hop, policy, netip.AddrPortFrom(addr, uint16(hop.Port)))
			heard = max(heard, feedbackOf(f))
			if f == nil {
				return out
			}
			last = f
			if !f.Temporary {
				return a.fail(f)
			}
		}
	}
	if last == nil {
		last = &Failure{Temporary: true, Enhanced: "4.4.4", Text: "no usable address for any mail server of " + a.domain}
	}
	return a.fail(last)
}

// route lists the hops for the domain: a configured route's next hop, or
// its MX hosts.
func (a *attempt) route(ctx context.Context) ([]Hop, *Failure) {
	e := a.e
	dnsCtx, dnsSpan := e.metrics.tracer.Start(ctx, "dns.mx")
	hopList, err := hops(dnsCtx, e.d.Resolver, *e.routes.Load(), e.cfg.Port, a.domain, e.d.Shuffle)
	dnsSpan.End()
	if err != nil {
		f := asFailure(err, "", "route")
		a.log("", netip.AddrPort{}, TLSInfo{}, f.Error(), map[bool]string{true: "deferred", false: "failed"}[f.Temporary])
		return nil, f
	}
	return hopList, nil
}

// policy decides how strong the hop's TLS must be. A refusal (the policy
// cannot be met or found now) is a Failure, and reported.
func (a *attempt) policy(ctx context.Context, hop Hop) (tlspolicy.Decision, *Failure) {
	e := a.e
	policyCtx, policySpan := e.metrics.tracer.Start(ctx, "tls.policy", trace.WithAttributes(attribute.String("postern.mx", hop.Host)))
	policy, err := a.decide(policyCtx, hop)
	policySpan.SetAttributes(attribute.String("postern.tls_policy", policy.Describe()))
	policySpan.End()
	if err == nil {
		return policy, nil
	}
	f := &Failure{Temporary: true, Enhanced: "4.7.5", Host: hop.Host, Text: "TLS policy for " + hop.Host + ": " + err.Error()}
	var refusal *tlspolicy.Refusal
	if errors.As(err, &refusal) {
		f.Temporary, f.Enhanced, f.ResultType = !refusal.Permanent, refusal.Enhanced, refusal.ResultType
		if hop.Route == nil && refusal.ResultType != "" {
			a.note(tlsrpt.Attempt{PolicyType: orNoPolicy(refusal.PolicyType), PolicyStrings: refusal.PolicyStrings,
				MXHost: hop.Host, Result: refusal.ResultType, Info: refusal.Reason})
		}
	}
	a.log(hop.Host, netip.AddrPort{}, TLSInfo{ResultType: f.ResultType}, f.Error(), "skipped")
	return policy, f
}

// decide asks the policy. A route with its own settings (tls, credentials,
// pins) decides for its next hop, but never below the recipient domain's
// own tls.policies entry: that entry is the operator's demand for the
// domain's mail, and the route is only the way it leaves.
func (a *attempt) decide(ctx context.Context, hop Hop) (tlspolicy.Decision, error) {
	m := a.m
	asked, err := a.e.d.Policy.Decide(ctx, tlspolicy.Request{Domain: a.domain, MXHost: hop.Host, Port: hop.Port,
		RequireTLS: m.Envelope.RequireTLS, TLSOptional: m.Envelope.TLSOptional, Report: m.Envelope.TLSReport, Route: hop.Route != nil})
	r := hop.Route
	if r == nil || (r.TLS == nil && r.Username == "" && len(r.Pins) == 0) {
		return asked, err
	}
	if err != nil {
		return asked, err // the domain's entry refuses this hop (dane-only, say)
	}
	d := RouteDecision(*r, a.e.d.Roots, m.RequireTLS)
	if asked.Source == "local" && asked.Level > d.Level {
		d.Level = asked.Level
		d.Reason += "; raised to " + asked.Level.String() + " by the " + asked.Reason
		if d.Level == tlspolicy.Verify && len(r.Pins) > 0 {
			d.TLSA, d.Pinned = tlspolicy.PinnedKeys(r.Pins), true
		}
	}
	if asked.MinVersion > d.MinVersion {
		d.MinVersion = asked.MinVersion
	}
	return d, nil
}

// poolKey names the sessions that may be shared: same host, port and TLS
// decision, so no message rides on a session made for a weaker policy.
func poolKey(h Hop, d tlspolicy.Decision) string {
	// ConnKey is what keeps a session from serving a weaker decision; the
	// description keeps the evidence of each delivery its own.
	key := h.Host + "|" + strconv.Itoa(h.Port) + "|" + d.Describe() + "|" + d.ConnKey() + egressKey(h)
	if h.Route != nil {
		// A route's session may have authenticated: it carries mail only
		// for routes with the same credentials (or, like it, none), never
		// another route's mail under this one's login.
		sum := sha256.Sum256([]byte(h.Route.Username + "\x00" + h.Route.Password))
		key += "|auth=" + hex.EncodeToString(sum[:8])
	}
	return key
}

// addresses resolves the hop's host, in the preferred address family
// first. A failure to resolve an MX host is reported like a TLS failure:
// it keeps mail from the domain as surely.
func (a *attempt) addresses(ctx context.Context, hop Hop, policy tlspolicy.Decision) ([]netip.Addr, *Failure) {
	addrCtx, addrSpan := a.e.metrics.tracer.Start(ctx, "dns.address", trace.WithAttributes(attribute.String("postern.mx", hop.Host)))
	addrs, f := a.e.addresses(addrCtx, hop.Host)
	addrSpan.End()
	if f != nil && hop.Route == nil {
		result := f.ResultType // dnssec-invalid for a bogus answer
		if result == "" {
			result = "validation-failure"
		}
		a.note(tlsrpt.Attempt{PolicyType: orNoPolicy(policy.PolicyType), PolicyStrings: policy.PolicyStrings,
			MXHost: hop.Host, Result: result, Info: f.Text})
	}
	return addrs, f
}

// deliverVia delivers over one connection to addr. A non-nil Failure means
// this host could not take the transaction at all and the next may be tried.
func (a *attempt) deliverVia(ctx context.Context, hop Hop, policy tlspolicy.Decision, addr netip.AddrPort) ([]queue.Outcome, *Failure) {
	ctx, span := a.e.metrics.tracer.Start(ctx, "smtp.attempt", trace.WithAttributes(attribute.String("postern.mx", hop.Host),
		attribute.String("postern.ip", addr.Addr().String())))
	defer span.End()
	c, f := a.connect(ctx, hop, policy, addr)
	if f != nil {
		return nil, f
	}
	if f := a.authenticate(c, hop); f != nil {
		return nil, f
	}
	return a.transact(ctx, hop, policy, &pooled{c: c})
}

// connect opens a session to addr under the policy, and reports what it
// saw for the domain's TLS reports.
func (a *attempt) connect(ctx context.Context, hop Hop, policy tlspolicy.Decision, addr netip.AddrPort) (*conn, *Failure) {
	e := a.e
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
			a.note(seen)
			seen.Result, seen.Info = "", ""
		}
		c, err = a.fallback(ctx, hop, addr, policy, f)
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
			a.note(seen)
		}
		a.log(hop.Host, addr, TLSInfo{Policy: policy.Describe(), PolicySource: policy.Source, ResultType: f.ResultType}, f.Error(), "deferred")
		return nil, f
	}
	if hop.Route == nil && c.tls.Fallback == "" {
		a.note(seen) // a session under the policy: a success for the report
	}
	return c, nil
}

// fallback opens a cleartext session after STARTTLS failed where nothing
// required TLS (RFC 7435 3: opportunistic TLS must not lose mail that
// cleartext would deliver). It is logged, counted, and recorded in the
// session's TLS information, hence in the audit trail and, as a delivery in
// cleartext, in the downgrade memory. Only a decision that allows it gets
// here: never DANE, MTA-STS, REQUIRETLS, a level above may, or a domain
// the downgrade memory (in defer mode) holds to TLS.
func (a *attempt) fallback(ctx context.Context, hop Hop, addr netip.AddrPort, policy tlspolicy.Decision, why *Failure) (*conn, error) {
	e, m := a.e, a.m
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

// authenticate logs in to a route's next hop when the route has
// credentials; on failure the session is closed.
func (a *attempt) authenticate(c *conn, hop Hop) *Failure {
	r := hop.Route
	if r == nil || r.Username == "" {
		return nil
	}
	// Credentials go only over TLS whose certificate was verified (or,
	// where the operator opted in, at least over TLS): an attacker who
	// can intercept the connection must not learn them.
	switch {
	case c.tls.Version == "":
		c.close()
		return &Failure{Temporary: true, Enhanced: "4.7.0", Host: hop.Host, Text: hop.Host + " offers no TLS; not sending route credentials in cleartext"}
	case !c.tls.Verified && !r.AuthOverUnverifiedTLS:
		c.close()
		return &Failure{Temporary: true, Enhanced: "4.7.0", Host: hop.Host,
			Text: hop.Host + "'s certificate was not verified; not sending route credentials (set auth_over_unverified_tls on the route to allow it)"}
	}
	if err := c.client.Auth(r.Username, r.Password); err != nil {
		c.close()
		f := asFailure(err, hop.Host, "AUTH")
		f.Temporary = true // our credentials are wrong: the operator must fix them, the mail must wait
		return f
	}
	return nil
}

// transact sends the message on an open session, and keeps the session for
// the next message when it is still in good order.
func (a *attempt) transact(ctx context.Context, hop Hop, policy tlspolicy.Decision, pc *pooled) ([]queue.Outcome, *Failure) {
	e, m, idxs := a.e, a.m, a.idxs
	c, addr := pc.c, pc.c.addr
	keep := false
	_, span := e.metrics.tracer.Start(ctx, "smtp.transaction")
	defer span.End()
	// The client knows no context, and sets its own deadlines: a shutdown
	// that cuts attempts off closes the connection beneath it.
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
	tx := Transaction{Body: func() (io.ReadCloser, error) { return e.d.Queue.Body(m.ID) },
		Mail: smtpclient.Mail{From: m.From, Size: m.Size, UTF8: m.UTF8, RequireTLS: m.RequireTLS,
			Return: m.Return, EnvelopeID: m.EnvelopeID}}
	for _, i := range idxs {
		r := m.Recipients[i]
		rcpt := smtpclient.Rcpt{Addr: r.Addr, Notify: r.Notify}
		rcpt.OrigType, rcpt.Orig, _ = strings.Cut(r.Original, ";")
		tx.Recipients = append(tx.Recipients, rcpt)
	}
	results, err := c.send(tx)
	if c.tls.Fallback != "" {
		// In a cleartext fallback a refusal for the want of TLS says
		// nothing about the message: the next try starts with STARTTLS
		// again, which may work then (a moment's breakage, or someone on
		// the path). Only a reply about the message itself is final.
		if f := asFailureOrNil(err); f != nil {
			wantedTLS(f)
		}
		for _, f := range results {
			if f != nil {
				wantedTLS(f)
			}
		}
	}
	if err != nil {
		f := asFailure(err, hop.Host, "transaction")
		a.log(hop.Host, addr, c.tls, f.Error(), "failed-transaction")
		return nil, f
	}
	keep = true
	out := make([]queue.Outcome, len(idxs))
	for k, i := range idxs {
		out[k] = a.record(i, results[k], hop.Host, addr, c.tls, policy.Source)
	}
	if ok, _ := c.client.Extension("DSN"); !ok {
		e.reportRelayed(m, out, a.now)
	}
	a.log(hop.Host, addr, c.tls, summarize(results), transactionResult(results))
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
