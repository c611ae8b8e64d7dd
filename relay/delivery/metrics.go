package delivery

import (
	"context"
	"strconv"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// instruments are delivery's OpenTelemetry metrics and tracer, made on the
// global providers (no-ops until the daemon installs real ones).
type instruments struct {
	attempts    metric.Int64Counter
	final       metric.Int64Counter
	timeInQueue metric.Float64Histogram
	notices     metric.Int64Counter
	fallbacks   metric.Int64Counter
	postponed   metric.Int64Counter
	deadDests   metric.Int64Counter
	tracer      trace.Tracer
}

func newInstruments() instruments {
	m := otel.GetMeterProvider().Meter("github.com/postern/postern/relay/delivery")
	in := instruments{tracer: otel.Tracer("github.com/postern/postern/relay/delivery")}
	in.attempts, _ = m.Int64Counter("postern.delivery.attempts",
		metric.WithDescription("Delivery attempts by result (delivered, partial, deferred, refused; failed-transaction, connect failures as deferred, skipped by policy, unreachable: deferred without connecting to a destination marked dead), policy source (dane, mta-sts, local, default, route, memory), RFC 8460 policy type (tlsa, sts, no-policy-found), TLS version, whether the server was authenticated, and the TLS failure (an RFC 8460 result type, or none)"))
	in.final, _ = m.Int64Counter("postern.delivery.recipients",
		metric.WithDescription("Recipients with a final outcome, by result (delivered, bounced, expired), policy source and whether the server was authenticated (verified)"))
	in.timeInQueue, _ = m.Float64Histogram("postern.delivery.time_in_queue", metric.WithUnit("s"),
		metric.WithDescription("From arrival to the final outcome, per recipient"),
		metric.WithExplicitBucketBoundaries(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4*3600, 24*3600, 5*24*3600))
	in.notices, _ = m.Int64Counter("postern.delivery.notices",
		metric.WithDescription("Delivery status notifications queued for senders, by kind (failure, delay)"))
	in.fallbacks, _ = m.Int64Counter("postern.tls.fallbacks",
		metric.WithDescription("Deliveries retried in cleartext after STARTTLS failed where TLS was opportunistic (level may, no published policy), by policy source"))
	in.postponed, _ = m.Int64Counter("postern.delivery.postponed",
		metric.WithDescription("Recipients given back to the queue unattempted because their destination had no free connection (its concurrency window was full, or a probe of a dead destination was running); not attempts"))
	in.deadDests, _ = m.Int64Counter("postern.delivery.dead_destinations",
		metric.WithDescription("Changes of a destination's state by change: dead (marked unreachable after delivery.dead_destination_failures attempts in a row got no session) or revived (a server answered again)"))
	return in
}

func (in instruments) postpone(n int) {
	in.postponed.Add(context.Background(), int64(n))
}

func (in instruments) destination(change string) {
	in.deadDests.Add(context.Background(), 1, metric.WithAttributes(attribute.String("change", change)))
}

func (in instruments) fallback(source string) {
	in.fallbacks.Add(context.Background(), 1, metric.WithAttributes(attribute.String("policy_source", source)))
}

func (in instruments) attempt(result string, t TLSInfo) {
	version := t.Version
	if version == "" {
		version = "none"
	}
	failure := t.ResultType
	if failure == "" {
		failure = "none"
	}
	source := t.PolicySource
	if source == "" {
		source = "none" // failed before a policy was decided (no route, no MX)
	}
	in.attempts.Add(context.Background(), 1, metric.WithAttributes(attribute.String("result", result),
		attribute.String("policy_source", source), attribute.String("policy_type", orNoPolicy(t.PolicyType)), attribute.String("tls_version", version),
		attribute.String("verified", strconv.FormatBool(t.Verified)), attribute.String("tls_failure", failure)))
}

func (in instruments) finished(result, source string, verified bool, seconds float64) {
	if source == "" {
		source = "none"
	}
	in.final.Add(context.Background(), 1, metric.WithAttributes(attribute.String("result", result),
		attribute.String("policy_source", source), attribute.String("verified", strconv.FormatBool(verified))))
	in.timeInQueue.Record(context.Background(), seconds)
}

func (in instruments) notice(kind string) {
	in.notices.Add(context.Background(), 1, metric.WithAttributes(attribute.String("kind", kind)))
}
