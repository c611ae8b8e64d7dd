package resolver_test

import (
	"context"
	"testing"

	"github.com/miekg/dns"
	"github.com/postern/postern/resolver"
)

// BenchmarkCacheHit is a validated answer served from the cache.
func BenchmarkCacheHit(b *testing.B) {
	h := newHierarchy(b)
	c := h.client(b, resolver.Options{})
	ctx := context.Background()
	if a, err := c.Lookup(ctx, "secure.test", dns.TypeMX); err != nil || a.Security != resolver.Secure {
		b.Fatal(a, err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Lookup(ctx, "secure.test", dns.TypeMX); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkColdMXAndTLSA validates, with empty caches, what DANE delivery
// needs for one domain: MX, the MX host's addresses and its TLSA records,
// from the root anchor down.
func BenchmarkColdMXAndTLSA(b *testing.B) {
	h := newHierarchy(b)
	ctx := context.Background()
	b.ReportAllocs()
	var queries int64
	for i := 0; i < b.N; i++ {
		c := h.client(b, resolver.Options{})
		mx, err := c.LookupMX(ctx, "secure.test")
		if err != nil || mx.Security != resolver.Secure {
			b.Fatal(mx, err)
		}
		addrs, err := c.LookupAddrs(ctx, mx.Records[0].Host)
		if err != nil || addrs.Security != resolver.Secure {
			b.Fatal(addrs, err)
		}
		tlsa, err := c.LookupTLSA(ctx, mx.Records[0].Host, 25)
		if err != nil || tlsa.Security != resolver.Secure || len(tlsa.Records) != 1 {
			b.Fatal(tlsa, err)
		}
		queries += c.UpstreamQueries()
	}
	b.ReportMetric(float64(queries)/float64(b.N), "queries/op")
}
