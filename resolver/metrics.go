package resolver

import (
	"context"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// metrics are the resolver's OpenTelemetry instruments, created on the
// global meter provider (a no-op until the daemon installs one).
type metrics struct {
	lookups    metric.Int64Counter
	upstreams  metric.Int64Counter
	validation metric.Int64Counter
	broken     *atomic.Bool
}

func newMetrics() metrics {
	m := otel.GetMeterProvider().Meter("github.com/postern/postern/resolver")
	out := metrics{broken: new(atomic.Bool)}
	out.lookups, _ = m.Int64Counter("postern.dns.cache.lookups",
		metric.WithDescription("DNS lookups by cache result (hit or miss)"))
	out.upstreams, _ = m.Int64Counter("postern.dns.upstream.queries",
		metric.WithDescription("Questions sent to the upstream resolvers"))
	out.validation, _ = m.Int64Counter("postern.dns.validation",
		metric.WithDescription("DNS answers by DNSSEC status (secure, insecure, bogus, indeterminate) or error"))
	broken := out.broken
	_, _ = m.Int64ObservableGauge("postern.dns.upstream.dnssec_broken",
		metric.WithDescription("1 while the last probe found that the upstream strips DNSSEC"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			v := int64(0)
			if broken.Load() {
				v = 1
			}
			o.Observe(v)
			return nil
		}))
	return out
}

// Attribute sets are built once: building them per lookup is most of the
// cost of a cache hit.
var (
	hitAttr     = metric.WithAttributes(attribute.String("result", "hit"))
	missAttr    = metric.WithAttributes(attribute.String("result", "miss"))
	errorAttr   = metric.WithAttributes(attribute.String("status", "error"))
	statusAttrs = func() (out [4]metric.AddOption) {
		for s := range out {
			out[s] = metric.WithAttributes(attribute.String("status", Security(s).String()))
		}
		return out
	}()
)

func (m metrics) lookup(ctx context.Context, hit bool, s Security, err error) {
	if hit {
		m.lookups.Add(ctx, 1, hitAttr)
	} else {
		m.lookups.Add(ctx, 1, missAttr)
	}
	if err != nil {
		m.validation.Add(ctx, 1, errorAttr)
		return
	}
	m.validation.Add(ctx, 1, statusAttrs[s])
}

func (m metrics) upstream(ctx context.Context) { m.upstreams.Add(ctx, 1) }

func (m metrics) setBroken(b bool) { m.broken.Store(b) }
