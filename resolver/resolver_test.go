package resolver_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

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
