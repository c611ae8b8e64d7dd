package resolver_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/postern/postern/resolver"
	"github.com/postern/postern/resolver/resolvertest"
)

const zone = `
example.test.        300 IN MX 10 mx1.example.test.
example.test.        300 IN MX 20 mx2.example.test.
mx1.example.test.    300 IN A 127.0.0.1
mx1.example.test.    300 IN AAAA ::1
mx2.example.test.    60  IN A 127.0.0.2
nullmx.test.         300 IN MX 0 .
noMX.test.           300 IN A 127.0.0.3
alias.test.          300 IN CNAME example.test.
loop1.test.          300 IN CNAME loop2.test.
loop2.test.          300 IN CNAME loop1.test.
`

func newClient(t *testing.T, servers ...string) *resolver.Client {
	t.Helper()
	// These zones are unsigned: DNSSEC is the subject of dnssec_test.go.
	c, err := resolver.New(servers, resolver.Options{Timeout: 500 * time.Millisecond, Attempts: 1, Mode: resolver.Off})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLookups(t *testing.T) {
	srv := resolvertest.Start(t, zone)
	c := newClient(t, srv.Addr)
	ctx := context.Background()

	mx, err := c.LookupMX(ctx, "example.test")
	if err != nil || len(mx.Records) != 2 || mx.Records[0] != (resolver.MX{Host: "mx1.example.test", Preference: 10}) ||
		mx.Security != resolver.Insecure || mx.TTL != 300*time.Second {
		t.Fatalf("MX: %+v %v", mx, err)
	}
	if mx, err := c.LookupMX(ctx, "alias.test"); err != nil || len(mx.Records) != 2 {
		t.Fatalf("MX through CNAME: %+v %v", mx, err)
	}
	if mx, err := c.LookupMX(ctx, "nullmx.test"); err != nil || len(mx.Records) != 1 || mx.Records[0].Host != "" {
		t.Fatalf("null MX: %+v %v", mx, err)
	}
	if mx, err := c.LookupMX(ctx, "nomx.test"); err != nil || len(mx.Records) != 0 || mx.NXDomain {
		t.Fatalf("NODATA: %+v %v", mx, err)
	}
	if mx, err := c.LookupMX(ctx, "absent.test"); err != nil || !mx.NXDomain {
		t.Fatalf("NXDOMAIN: %+v %v", mx, err)
	}
	if mx, err := c.LookupMX(ctx, "loop1.test"); err != nil || len(mx.Records) != 0 {
		t.Fatalf("CNAME loop: %+v %v", mx, err)
	}
	addrs, err := c.LookupAddrs(ctx, "mx1.example.test")
	if err != nil || fmt.Sprint(addrs.Addrs) != "[::1 127.0.0.1]" {
		t.Fatalf("addresses: %+v %v", addrs, err)
	}
	if a, err := c.LookupAddrs(ctx, "absent.test"); err != nil || !a.NXDomain {
		t.Fatalf("NXDOMAIN addresses: %+v %v", a, err)
	}
}

func TestTemporaryFailures(t *testing.T) {
	srv := resolvertest.Start(t, zone)
	srv.ServFail("example.test")
	c := newClient(t, srv.Addr)
	if _, err := c.LookupMX(context.Background(), "example.test"); !errors.Is(err, resolver.ErrTemporary) {
		t.Fatalf("SERVFAIL: %v", err)
	}
	// A server that does not answer at all times out: temporary, not "no such domain".
	dead := newClient(t, "127.0.0.1:1")
	if _, err := dead.LookupMX(context.Background(), "example.test"); !errors.Is(err, resolver.ErrTemporary) {
		t.Fatalf("dead server: %v", err)
	}
	// A second, working server is used when the first fails.
	both := newClient(t, "127.0.0.1:1", srv.Addr)
	if mx, err := both.LookupMX(context.Background(), "mx1.example.test"); err != nil || mx.NXDomain {
		t.Fatalf("failover: %+v %v", mx, err)
	}
}

func TestTruncatedAnswerRetriedOverTCP(t *testing.T) {
	var b strings.Builder
	for i := 0; i < 120; i++ { // far more than fits in 1232 bytes of UDP
		fmt.Fprintf(&b, "big.test. 300 IN MX %d mx%03d.some-rather-long-exchanger-name.big.test.\n", i, i)
	}
	srv := resolvertest.Start(t, b.String())
	mx, err := newClient(t, srv.Addr).LookupMX(context.Background(), "big.test")
	if err != nil || len(mx.Records) != 120 {
		t.Fatalf("got %d records, %v", len(mx.Records), err)
	}
}

// TestPing: the readiness check goes past the cache, so it notices when
// the upstream stops answering even while answers are cached.
func TestPing(t *testing.T) {
	srv := resolvertest.Start(t, "example.test. 60 IN A 192.0.2.1\n")
	c := newClient(t, srv.Addr)
	if _, err := c.LookupAddrs(context.Background(), "example.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("healthy upstream: %v", err)
	}
	for _, f := range []resolvertest.Failure{resolvertest.Silent, resolvertest.Garbage} {
		srv.Fail(f)
		if err := c.Ping(context.Background()); err == nil || !strings.Contains(err.Error(), srv.Addr) {
			t.Errorf("upstream failing (%d): %v", f, err)
		}
	}
	srv.Fail(resolvertest.Healthy)
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("upstream back: %v", err)
	}
}

// waitFor polls cond until it holds, failing the test after a few seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func askedFor(srv *resolvertest.Server, name string) int {
	n := 0
	for _, q := range srv.Asked() {
		if strings.EqualFold(q.Name, name) {
			n++
		}
	}
	return n
}

// Issue 15, item 7: a recursive server that stops following a long CNAME
// chain returns the chain so far; its end is asked for again, and the
// chain is never read as "no records".
func TestCutShortAliasChainIsAskedAgain(t *testing.T) {
	var b strings.Builder
	b.WriteString("c0.test. 300 IN CNAME c1.test.\nc1.test. 300 IN CNAME c2.test.\nc2.test. 300 IN CNAME c3.test.\n")
	b.WriteString("c3.test. 300 IN MX 10 mx.c3.test.\nc3.test. 300 IN A 192.0.2.3\n")
	b.WriteString("nodata.test. 300 IN CNAME c3.test.\n")
	for i := 0; i < 12; i++ { // longer than the re-queries allowed
		fmt.Fprintf(&b, "long%d.test. 300 IN CNAME long%d.test.\n", i, i+1)
	}
	b.WriteString("long12.test. 300 IN MX 10 mx.c3.test.\n")
	srv := resolvertest.Start(t, b.String())
	srv.CutChains(1)
	c := newClient(t, srv.Addr)
	ctx := context.Background()

	mx, err := c.LookupMX(ctx, "c0.test")
	if err != nil || len(mx.Records) != 1 || mx.Records[0].Host != "mx.c3.test" || mx.NXDomain {
		t.Fatalf("MX through a chain cut after each link: %+v %v", mx, err)
	}
	a, err := c.Lookup(ctx, "c0.test", dns.TypeMX)
	if err != nil || fmt.Sprint(a.Aliases) != "[c1.test. c2.test. c3.test.]" {
		t.Fatalf("aliases: %+v %v", a, err)
	}
	// A chain that ends in a real NODATA (the SOA of the last name's zone
	// says so) is not asked again.
	srv.CutChains(0)
	before := askedFor(srv, "c3.test.")
	if a, err := c.Lookup(ctx, "nodata.test", dns.TypeTXT); err != nil || len(a.Records) != 0 || a.NXDomain {
		t.Fatalf("NODATA at the end of a chain: %+v %v", a, err)
	}
	if n := askedFor(srv, "c3.test.") - before; n != 0 {
		t.Fatalf("a chain ending in NODATA was asked again %d times", n)
	}
	// Past the bound, a temporary failure: never "no records".
	srv.CutChains(1)
	if mx, err := c.LookupMX(ctx, "long0.test"); !errors.Is(err, resolver.ErrTemporary) {
		t.Fatalf("a chain cut short more often than allowed: %+v %v", mx, err)
	}
}

// Issue 15, item 8: a shared resolution runs under its own context. The
// first caller's deadline fails nobody else, and a caller whose context
// ends stops waiting at once, while the resolution goes on for the others.
func TestSharedLookupOutlivesAGivingUpCaller(t *testing.T) {
	srv := resolvertest.Start(t, zone)
	c, err := resolver.New([]string{srv.Addr}, resolver.Options{Timeout: 20 * time.Second, Attempts: 1, Mode: resolver.Off})
	if err != nil {
		t.Fatal(err)
	}
	release := srv.Hold("example.test")
	defer release()

	type result struct {
		mx  resolver.MXAnswer
		err error
	}
	first, second := make(chan result, 1), make(chan result, 1)
	// The first caller starts the shared resolution and gives up (its
	// deadline passes) while the upstream is still thinking.
	shortCtx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	go func() { mx, err := c.LookupMX(shortCtx, "example.test"); first <- result{mx, err} }()
	waitFor(t, "the question upstream", func() bool { return askedFor(srv, "example.test.") == 1 })
	go func() { mx, err := c.LookupMX(context.Background(), "example.test"); second <- result{mx, err} }()
	waitFor(t, "the second caller to join", func() bool { return c.WaitingLookups() == 2 })

	r := <-first // at its deadline, with the upstream still holding the answer
	if !errors.Is(r.err, context.DeadlineExceeded) || !errors.Is(r.err, resolver.ErrTemporary) {
		t.Fatalf("the caller that gave up: %+v %v", r.mx, r.err)
	}
	select {
	case r := <-second:
		t.Fatalf("the second caller was failed by the first's deadline: %+v %v", r.mx, r.err)
	default:
	}
	release()
	if r := <-second; r.err != nil || len(r.mx.Records) != 2 {
		t.Fatalf("the second caller: %+v %v", r.mx, r.err)
	}
	if n := askedFor(srv, "example.test."); n != 1 {
		t.Fatalf("the callers did not share one question: %d asked", n)
	}

	// A cancelled caller stops waiting at once, even when it started the
	// resolution, and the answer still lands in the cache.
	release = srv.Hold("mx1.example.test")
	defer release()
	cctx, ccancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := c.LookupAddrs(cctx, "mx1.example.test"); done <- err }()
	waitFor(t, "the address question upstream", func() bool { return askedFor(srv, "mx1.example.test.") == 1 })
	ccancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller: %v", err)
	}
	release()
	// The abandoned resolution went on: its answer is shared or cached, and
	// the question is not asked again.
	if a, err := c.Lookup(context.Background(), "mx1.example.test", dns.TypeAAAA); err != nil || len(a.Records) != 1 {
		t.Fatalf("after the abandoned resolution: %+v %v", a, err)
	}
	if n := askedFor(srv, "mx1.example.test."); n != 1 {
		t.Fatalf("the abandoned resolution was dropped: the question was asked %d times", n)
	}
}

// Issue 15, item 9: a caller's deadline is not an upstream failure and is
// never cached as one; the resolution's own budget running out is one.
func TestCallerDeadlineIsNotCachedAsUpstreamFailure(t *testing.T) {
	srv := resolvertest.Start(t, zone)
	c, err := resolver.New([]string{srv.Addr}, resolver.Options{Timeout: 20 * time.Second, Attempts: 1, Mode: resolver.Off})
	if err != nil {
		t.Fatal(err)
	}
	release := srv.Hold("example.test")
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := c.LookupMX(ctx, "example.test"); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, resolver.ErrTemporary) {
		t.Fatalf("a lookup past the caller's deadline: %v", err)
	}
	release()
	if mx, err := c.LookupMX(context.Background(), "example.test"); err != nil || len(mx.Records) != 2 {
		t.Fatalf("after a caller's deadline: %+v %v", mx, err)
	}

	// An upstream slower than the whole resolution budget has failed: that
	// is remembered for a few seconds (RFC 9520), like a SERVFAIL.
	slow, err := resolver.New([]string{srv.Addr}, resolver.Options{Timeout: 20 * time.Second, Attempts: 1, Mode: resolver.Off,
		ResolveTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	release = srv.Hold("mx2.example.test")
	defer release()
	_, err = slow.LookupAddrs(context.Background(), "mx2.example.test")
	if !errors.Is(err, resolver.ErrTemporary) || errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "budget") {
		t.Fatalf("past the resolution budget: %v", err)
	}
	release()
	if _, err := slow.LookupAddrs(context.Background(), "mx2.example.test"); !strings.Contains(fmt.Sprint(err), "budget") {
		t.Fatalf("the budget's failure was not remembered: %v", err)
	}
}
