package tlspolicy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"go.etcd.io/bbolt"

	"github.com/postern/postern/internal/mailname"
	"github.com/postern/postern/resolver"
)

// Resolver is what the engine asks of DNS: Postern's validating resolver.
type Resolver interface {
	LookupMX(ctx context.Context, domain string) (resolver.MXAnswer, error)
	LookupAddrs(ctx context.Context, host string) (resolver.AddrAnswer, error)
	LookupTLSA(ctx context.Context, host string, port int) (resolver.Answer, error)
	LookupTXT(ctx context.Context, name string) ([]string, resolver.Answer, error)
}

// Config is the operator's TLS policy (the tls section).
type Config struct {
	Default  Mode    // where no entry and no published policy applies
	Policies []Local // per recipient domain
	Roots    *x509.CertPool
	// ClientCertificate is offered to servers that ask for one.
	ClientCertificate *tls.Certificate
	// HonorTLSRequiredNo lets "TLS-Required: No" set aside DANE and MTA-STS.
	HonorTLSRequiredNo bool
	STSPort            int           // where MTA-STS policies are fetched; 443
	STSTimeout         time.Duration // for one policy fetch; default 30s
	// DowngradeMemory says what to do when a domain offers weaker TLS
	// than it has before; MemoryMaxAge is how long the memory lasts
	// without a delivery that confirms it (default 30 days).
	DowngradeMemory MemoryMode
	MemoryMaxAge    time.Duration
}

// Deps are the engine's collaborators.
type Deps struct {
	Resolver Resolver
	DB       *bbolt.DB // MTA-STS policy cache (bucket "mta-sts")
	Clock    func() time.Time
	Log      *slog.Logger
}

// Engine decides from local policy, DANE, MTA-STS and the default, in that
// order of strength (the "Sources, strongest first").
type Engine struct {
	cfg   Config
	d     Deps
	sts   *stsCache
	rules atomic.Pointer[rules] // the part of cfg a reload may change

	metrics instruments

	memMu    sync.Mutex // makes the read-modify-write of a confirming delivery atomic
	memCache *lru.Cache[string, cachedMemory]
}

// NewEngine returns an engine; it creates its bucket in DB.
func NewEngine(cfg Config, d Deps) (*Engine, error) {
	if d.Clock == nil {
		d.Clock = time.Now
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.STSPort == 0 {
		cfg.STSPort = 443
	}
	if cfg.STSTimeout <= 0 {
		cfg.STSTimeout = 30 * time.Second
	}
	if cfg.MemoryMaxAge <= 0 {
		cfg.MemoryMaxAge = 30 * 24 * time.Hour
	}
	if d.DB != nil {
		if err := d.DB.Update(func(tx *bbolt.Tx) error {
			_, err := tx.CreateBucketIfNotExists(memoryBucket)
			return err
		}); err != nil {
			return nil, fmt.Errorf("tls memory: %w", err)
		}
	}
	e := &Engine{cfg: cfg, d: d, metrics: newInstruments()}
	e.SetRules(cfg.Default, cfg.Policies, cfg.HonorTLSRequiredNo)
	e.memCache, _ = lru.New[string, cachedMemory](10000)
	sts, err := newSTSCache(d.DB, d.Resolver, cfg.Roots, cfg.STSPort, cfg.STSTimeout, d.Clock, d.Log, e.metrics.stsFetches)
	if err != nil {
		return nil, err
	}
	e.sts = sts
	return e, nil
}

// rules are the operator's choices that a configuration reload may change
// while deliveries run.
type rules struct {
	Default            Mode
	Policies           []Local
	HonorTLSRequiredNo bool
}

// SetRules replaces the default mode, the per-domain policies and the
// TLS-Required: No setting; decisions made from now on use them.
func (e *Engine) SetRules(def Mode, policies []Local, honorTLSRequiredNo bool) {
	e.rules.Store(&rules{Default: def, Policies: policies, HonorTLSRequiredNo: honorTLSRequiredNo})
}

// Decide implements Policy.
func (e *Engine) Decide(ctx context.Context, r Request) (Decision, error) {
	r.Domain, r.MXHost = mailname.Normalize(r.Domain), mailname.Normalize(r.MXHost)
	if r.Port == 0 {
		r.Port = 25
	}
	now := e.d.Clock()
	local, lapsed := localFor(e.rules.Load().Policies, r.Domain, now)
	if lapsed != nil && local == nil {
		e.d.Log.Info("a time-boxed TLS policy entry has lapsed and no longer applies", "domain", r.Domain,
			"entry", lapsed.Domain, "mode", lapsed.Mode.String(), "until", lapsed.Until)
	}
	if local != nil && !local.Until.IsZero() {
		e.d.Log.Warn("time-boxed TLS policy exception in use", "domain", r.Domain, "entry", local.Domain,
			"mode", local.Mode.String(), "until", local.Until)
	}
	base := Decision{Roots: e.cfg.Roots, ClientCertificate: e.cfg.ClientCertificate, PolicyDomain: r.Domain, PolicyType: "no-policy-found"}

	var d Decision
	var mxSecure, stsListed bool
	if local != nil && local.Override && local.Mode.weakens() {
		// The operator weakens whatever the domain publishes, on purpose.
		d = base
		d.Level, d.Source = local.Mode.level(), "local"
		d.Reason = fmt.Sprintf("local override %s for %s (published policies set aside)", local.Mode, local.Domain)
		e.d.Log.Warn("local TLS policy override weakens the domain's published policy", "domain", r.Domain, "mx", r.MXHost, "mode", local.Mode.String())
	} else {
		published, secure, listed, err := e.published(ctx, r, base)
		if err != nil {
			return Decision{}, err
		}
		mxSecure, stsListed = secure, listed
		if d, err = e.combine(r, base, local, published); err != nil {
			return Decision{}, err
		}
		if !r.Route {
			d = e.remembered(r, d) // the memory is of the domain's own MX hosts
		}
	}
	if local != nil && local.MinVersion > d.MinVersion {
		d.MinVersion = local.MinVersion
	}
	if r.RequireTLS {
		return e.requireTLS(ctx, r, d, mxSecure, stsListed)
	}
	return d, nil
}

// published returns the policy the domain publishes for this host (DANE,
// else MTA-STS; nil when neither applies), and whether the MX set was
// DNSSEC-secure and the host listed by an MTA-STS policy, for REQUIRETLS.
func (e *Engine) published(ctx context.Context, r Request, base Decision) (*Decision, bool, bool, error) {
	if r.Report || r.Route {
		return nil, false, false, nil
	}
	if r.TLSOptional && e.rules.Load().HonorTLSRequiredNo {
		e.d.Log.Info("TLS-Required: No: the domain's published TLS policies are set aside for this message", "domain", r.Domain, "mx", r.MXHost)
		return nil, false, false, nil
	}
	dane, mxSecure, err := e.dane(ctx, r, base)
	if err != nil {
		return nil, mxSecure, false, err
	}
	if dane != nil && dane.Level == Verify {
		// RFC 8461 2: where DANE authenticates the host, MTA-STS is not consulted.
		return dane, mxSecure, false, nil
	}
	sts, listed, err := e.stsDecision(ctx, r, base)
	switch {
	case err != nil:
		return nil, mxSecure, false, err
	case dane == nil:
		return sts, mxSecure, listed, nil
	case sts != nil && sts.Level > dane.Level:
		// Only unusable TLSA records (TLS, unauthenticated) and an MTA-STS
		// policy in enforce mode: the stronger of the two applies.
		sts.Reason += "; stronger than the DANE " + dane.Reason
		return sts, mxSecure, listed, nil
	}
	return dane, mxSecure, listed, nil
}

// stsDecision applies the domain's MTA-STS policy to the host: nil when it
// has none in force. A policy that cannot be had is no policy (RFC 8461
// 5.1); the failure is kept for TLS reports.
func (e *Engine) stsDecision(ctx context.Context, r Request, base Decision) (*Decision, bool, error) {
	pol, err := e.sts.policy(ctx, r.Domain)
	if err != nil && ctx.Err() != nil {
		// This delivery was cut short (a shutdown): that says nothing of
		// the domain's policy, so it is not taken as "none".
		return nil, false, &Refusal{Enhanced: "4.4.2", Reason: "MTA-STS policy lookup cut short: " + err.Error()}
	}
	if err != nil {
		e.d.Log.Warn("MTA-STS policy unavailable", "domain", r.Domain, "err", err)
	}
	if pol == nil || pol.Mode == "none" {
		return nil, false, nil
	}
	d := base
	d.Source, d.PolicyType, d.PolicyStrings = "mta-sts", "sts", pol.Strings()
	listed := pol.Matches(r.MXHost)
	if pol.Mode == "testing" {
		d.Level, d.Testing = May, true
		d.Reason = "MTA-STS policy in testing mode: failures are reported, not enforced"
		return &d, listed, nil
	}
	if !listed {
		return nil, false, &Refusal{Enhanced: "4.7.5", ResultType: "validation-failure", PolicyType: "sts", PolicyStrings: pol.Strings(),
			Reason: fmt.Sprintf("%s is not an MX host the MTA-STS policy of %s allows (%s)", r.MXHost, r.Domain, strings.Join(pol.MX, ", "))}
	}
	d.Level, d.MinVersion = Verify, tls.VersionTLS12
	d.Names = []string{r.MXHost}
	d.Reason = "MTA-STS policy in enforce mode"
	return &d, true, nil
}

// dane applies RFC 7672 to one MX host: nil when DANE provably does not
// apply. Every answer on the way must be Secure or proven Insecure; one
// that cannot be validated (Bogus, Indeterminate) or that did not come at
// all is never read as "no DANE" (RFC 7672 2.2: a failed TLSA lookup makes
// the MX host unusable), so the host is refused for now.
func (e *Engine) dane(ctx context.Context, r Request, base Decision) (*Decision, bool, error) {
	mx, err := e.d.Resolver.LookupMX(ctx, r.Domain)
	if err != nil {
		return nil, false, &Refusal{Enhanced: "4.4.3", Reason: "MX lookup: " + err.Error()}
	}
	switch mx.Security {
	case resolver.Insecure:
		return nil, false, nil // RFC 7672 2.2.1: an insecure MX set gets no DANE
	case resolver.Secure:
	default:
		return nil, false, dnssecRefusal("the MX records of "+r.Domain, mx.Security, mx.Reason)
	}
	if r.MXHost != r.Domain && !listedMX(mx, r.MXHost) {
		return nil, true, nil // a host that is not from the MX set (a route, say)
	}
	addrs, err := e.d.Resolver.LookupAddrs(ctx, r.MXHost)
	if err != nil {
		return nil, true, &Refusal{Enhanced: "4.4.3", Reason: "address lookup: " + err.Error()}
	}
	switch {
	case addrs.Security == resolver.Insecure && addrs.UpstreamBroken:
		// Insecure only by dns.on_broken_upstream, under a validated MX
		// set: no proof that the host has no DANE.
		return nil, true, dnssecRefusal("the addresses of "+r.MXHost, resolver.Bogus, addrs.Reason)
	case addrs.Security == resolver.Insecure:
		return nil, true, nil // RFC 7672 2.2.2: no TLSA lookup for insecure addresses
	case addrs.Security == resolver.Secure:
	default:
		return nil, true, dnssecRefusal("the addresses of "+r.MXHost, addrs.Security, addrs.Reason)
	}
	tlsa, baseName, err := e.tlsaFor(ctx, r, addrs)
	if err != nil {
		return nil, true, err
	}
	if tlsa.Security != resolver.Secure || len(tlsa.Records) == 0 {
		return nil, true, nil // proven insecure, or securely no TLSA: DANE does not apply
	}
	all := tlsaRecords(tlsa)
	var records []string
	for _, t := range all {
		records = append(records, fmt.Sprintf("%d %d %d %s", t.Usage, t.Selector, t.MatchingType, t.Certificate))
	}
	d := base
	d.Source, d.PolicyType, d.PolicyStrings = "dane", "tlsa", records
	usable := Usable(all)
	if len(usable) == 0 {
		d.Level = Encrypt
		d.Reason = "TLSA records are published but none is usable: TLS is required, unauthenticated (RFC 7672 2.2)"
		return &d, true, nil
	}
	// The TLSA base domain is the MX host, or the name its addresses were
	// found at when that alias had the records (RFC 7672 2.2.3). It is
	// never the target of a CNAME on the TLSA record itself (RFC 7671 7):
	// that name is the provider's, and sending it in SNI or accepting it
	// in a DANE-TA certificate would let the provider's name stand for the
	// MX host. The base domain is the name sent in SNI (RFC 7672 8.1) and
	// one of the names a DANE-TA certificate may carry (RFC 7672 3.2.2).
	d.Level, d.TLSA, d.MinVersion = Verify, usable, tls.VersionTLS12
	d.SNI = baseName
	d.Names = uniq(baseName, r.MXHost, r.Domain)
	d.Reason = fmt.Sprintf("%d usable TLSA records at _%d._tcp.%s", len(usable), r.Port, baseName)
	return &d, true, nil
}

// dnssecRefusal is the temporary refusal for a DNS answer whose DNSSEC
// status is not known: not Secure and not proven Insecure. It is never
// permanent (a bounce needs a proof) and is reported as dnssec-invalid
// (RFC 8460 4.3.2.1).
func dnssecRefusal(what string, s resolver.Security, reason string) *Refusal {
	return &Refusal{Enhanced: "4.7.5", ResultType: "dnssec-invalid", PolicyType: "tlsa",
		Reason: fmt.Sprintf("%s cannot be validated (DNSSEC %s: %s), so DANE cannot be ruled out", what, s, reason)}
}

// tlsaFor finds the TLSA records of the MX host and the TLSA base domain
// they belong to. When the host name is an alias with secure addresses,
// the expanded name is asked first, and the original name only when the
// expanded one has no secure records (RFC 7672 2.2.3). A nil error means
// the answer is Secure or proven Insecure.
func (e *Engine) tlsaFor(ctx context.Context, r Request, addrs resolver.AddrAnswer) (resolver.Answer, string, error) {
	names := []string{r.MXHost}
	if n := len(addrs.Aliases); n > 0 {
		names = []string{strings.TrimSuffix(addrs.Aliases[n-1], "."), r.MXHost}
	}
	var tlsa resolver.Answer
	for _, name := range names {
		var err error
		tlsa, err = e.d.Resolver.LookupTLSA(ctx, name, r.Port)
		if err != nil {
			return tlsa, name, &Refusal{Enhanced: "4.7.5", ResultType: "dnssec-invalid", PolicyType: "tlsa",
				Reason: fmt.Sprintf("TLSA lookup for _%d._tcp.%s failed, so DANE cannot be checked: %v", r.Port, name, err)}
		}
		if tlsa.UpstreamBroken && tlsa.Security != resolver.Secure {
			// Insecure only because dns.on_broken_upstream: insecure said
			// so: where the MX set and the addresses validated, that is no
			// proof that this host has no DANE (RFC 7672 2.2).
			return tlsa, name, dnssecRefusal(fmt.Sprintf("the TLSA records at _%d._tcp.%s", r.Port, name), resolver.Bogus, tlsa.Reason)
		}
		switch tlsa.Security {
		case resolver.Secure:
			if len(tlsa.Records) > 0 {
				return tlsa, name, nil
			}
		case resolver.Insecure:
		default:
			return tlsa, name, dnssecRefusal(fmt.Sprintf("the TLSA records at _%d._tcp.%s", r.Port, name), tlsa.Security, tlsa.Reason)
		}
	}
	return tlsa, names[len(names)-1], nil
}

// combine merges the published policy with the local entry (or default):
// the stronger wins, except that an MTA-STS testing policy only observes.
func (e *Engine) combine(r Request, base Decision, local *Local, published *Decision) (Decision, error) {
	mode, source := e.rules.Load().Default, "default"
	if local != nil {
		mode, source = local.Mode, "local"
	}
	if mode == ModeDANE && local != nil {
		mode = e.rules.Load().Default // "DANE where published, else the default"
	}
	// dane-only asks for DANE authentication: unusable TLSA records give
	// only unauthenticated TLS, which is not enough.
	isDANE := published != nil && published.Level == Verify && len(published.TLSA) > 0
	if mode == ModeDANEOnly && !isDANE {
		return Decision{}, &Refusal{Enhanced: "4.7.5", ResultType: "dane-required",
			Reason: fmt.Sprintf("%s policy for %s is dane-only, and %s has no usable DANE TLSA records", source, r.Domain, r.MXHost)}
	}
	if mode == ModeDANE || mode == ModeDANEOnly {
		mode = ModeMay
	}
	mine := base
	mine.Level, mine.Source = mode.level(), source
	mine.Reason = "tls.default"
	if local != nil {
		mine.Reason = "tls.policies entry " + local.Domain
	}
	if mine.Level == Verify {
		mine.Names = []string{r.MXHost}
		if local != nil {
			mine.Names = append(mine.Names, local.Names...)
		}
	}
	switch {
	case published == nil:
		return mine, nil
	case published.Testing:
		// Testing observes; the local or default level still governs.
		mine.Testing = mine.Level < Verify
		mine.PolicyType, mine.PolicyStrings = published.PolicyType, published.PolicyStrings
		mine.Reason += "; " + published.Reason
		return mine, nil
	case published.Level >= mine.Level:
		return *published, nil
	}
	// The local policy asks for more than the domain publishes (verify over
	// DANE's unauthenticated "encrypt", say): local wins.
	mine.PolicyType, mine.PolicyStrings = published.PolicyType, published.PolicyStrings
	mine.Reason += "; stronger than the published " + published.Reason
	return mine, nil
}

// requireTLS applies RFC 8689 4.2: an MX from a DNSSEC-secure lookup or an
// MTA-STS policy, reached over TLS verified by DANE or PKIX. Only what is
// proven impossible fails for good (5.7.30): an MX set proven insecure and
// an MTA-STS policy proven absent or not listing the host. Not knowing yet
// (a DNS failure, a policy that cannot be fetched now) waits.
func (e *Engine) requireTLS(ctx context.Context, r Request, d Decision, mxSecure, stsListed bool) (Decision, error) {
	if !mxSecure && !stsListed && !r.Route { // a smarthost is the operator's choice, not a lookup's
		mx, err := e.d.Resolver.LookupMX(ctx, r.Domain)
		if err != nil {
			return Decision{}, &Refusal{Enhanced: "4.4.3", Reason: "REQUIRETLS: MX lookup: " + err.Error()}
		}
		switch {
		case mx.Security == resolver.Secure:
			mxSecure = true
		case mx.Security == resolver.Insecure && !mx.UpstreamBroken:
		default:
			// Not validated, or insecure only by dns.on_broken_upstream:
			// no proof either way, so REQUIRETLS waits.
			return Decision{}, dnssecRefusal("REQUIRETLS: the MX records of "+r.Domain, mx.Security, mx.Reason)
		}
	}
	if !mxSecure && !stsListed && !r.Route {
		pol, err := e.sts.policy(ctx, r.Domain)
		if err != nil {
			return Decision{}, &Refusal{Enhanced: "4.7.5", PolicyType: "sts",
				Reason: fmt.Sprintf("REQUIRETLS: the MX set of %s is not DNSSEC-secure, and its MTA-STS policy cannot be had now: %v", r.Domain, err)}
		}
		// RFC 8689 4.2.1: a policy in testing mode counts as enforce.
		stsListed = pol != nil && pol.Mode != "none" && pol.Matches(r.MXHost)
	}
	if !mxSecure && !stsListed && !r.Route {
		return Decision{}, &Refusal{Permanent: true, Enhanced: "5.7.30",
			Reason: fmt.Sprintf("REQUIRETLS: %s comes neither from a DNSSEC-secure MX lookup nor from an MTA-STS policy", r.MXHost)}
	}
	if d.Level < Verify {
		d.Level, d.TLSA, d.Testing = Verify, nil, false
		d.Names = []string{r.MXHost}
	}
	if d.MinVersion < tls.VersionTLS12 {
		d.MinVersion = tls.VersionTLS12
	}
	d.Reason += "; REQUIRETLS"
	return d, nil
}

func listedMX(mx resolver.MXAnswer, host string) bool {
	return slices.ContainsFunc(mx.Records, func(m resolver.MX) bool { return strings.EqualFold(m.Host, host) })
}

func uniq(names ...string) []string {
	var out []string
	for _, n := range names {
		n = mailname.Normalize(n)
		if n != "" && !slices.Contains(out, n) { // all normalised alike
			out = append(out, n)
		}
	}
	return out
}
