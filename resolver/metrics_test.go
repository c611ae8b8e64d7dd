package resolver_test

import (
	"context"
	"testing"

	"github.com/miekg/dns"
	"go.opentelemetry.io/otel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/postern/postern/resolver"
)

func TestMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	prev := otel.GetMeterProvider()
	otel.SetMeterProvider(provider)
	t.Cleanup(func() { otel.SetMeterProvider(prev) })

	h := newHierarchy(t)
	c := h.client(t, resolver.Options{})
	ctx := context.Background()
	c.Lookup(ctx, "secure.test", dns.TypeMX)
	c.Lookup(ctx, "secure.test", dns.TypeMX)
	c.Lookup(ctx, "expired.test", dns.TypeMX)

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch data := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range data.DataPoints {
					key := m.Name
					for _, kv := range p.Attributes.ToSlice() {
						key += " " + string(kv.Key) + "=" + kv.Value.AsString()
					}
					got[key] = p.Value
				}
			case metricdata.Gauge[int64]:
				for _, p := range data.DataPoints {
					got[m.Name] = p.Value
				}
			}
		}
	}
	want := map[string]int64{
		"postern.dns.cache.lookups result=hit":  1,
		"postern.dns.cache.lookups result=miss": 2,
		"postern.dns.validation status=secure":  2,
		"postern.dns.validation status=bogus":   1,
		"postern.dns.upstream.dnssec_broken":    0,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
	if got["postern.dns.upstream.queries"] != c.UpstreamQueries() || c.UpstreamQueries() == 0 {
		t.Errorf("upstream queries %d, counted %d", got["postern.dns.upstream.queries"], c.UpstreamQueries())
	}
}
