package submission

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// instruments are the submission service's OpenTelemetry metrics, made on
// the global meter provider (a no-op until the daemon installs one).
type instruments struct {
	accepted      metric.Int64Counter
	refused       metric.Int64Counter
	authFailures  metric.Int64Counter
	limitedCount  metric.Int64Counter
	proxyRefusals metric.Int64Counter
	latency       metric.Float64Histogram
	tracer        trace.Tracer

	// Attribute sets are built once per distinct value: building them per
	// command costs more than the count.
	mu    sync.Mutex
	attrs map[string]metric.AddOption
}

func newInstruments() *instruments {
	m := otel.GetMeterProvider().Meter("github.com/postern/postern/relay/submission")
	in := &instruments{attrs: map[string]metric.AddOption{}, tracer: otel.Tracer("github.com/postern/postern/relay/submission")}
	in.accepted, _ = m.Int64Counter("postern.submission.accepted",
		metric.WithDescription("Messages accepted (answered 250 after the queue committed them)"))
	in.refused, _ = m.Int64Counter("postern.submission.refused",
		metric.WithDescription("MAIL, RCPT and DATA commands refused, by command and enhanced status code"))
	in.authFailures, _ = m.Int64Counter("postern.submission.auth.failures",
		metric.WithDescription("Failed AUTH attempts, by reason (bad_credentials, throttled, error)"))
	in.limitedCount, _ = m.Int64Counter("postern.submission.limited",
		metric.WithDescription("MAIL and RCPT refused by a credential's sending limits, by reason (messages, recipients, suspended)"))
	in.proxyRefusals, _ = m.Int64Counter("postern.submission.proxy.refused",
		metric.WithDescription("Connections closed for their PROXY protocol header, by reason (missing, malformed, timeout from a trusted network; untrusted from any other)"))
	in.latency, _ = m.Float64Histogram("postern.submission.duration", metric.WithUnit("s"),
		metric.WithDescription("From DATA to the 250 reply, the queue's fsync included"),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
	return in
}

func (in *instruments) attr(key, value string) metric.AddOption {
	in.mu.Lock()
	defer in.mu.Unlock()
	k := key + "\x00" + value
	a, ok := in.attrs[k]
	if !ok {
		a = metric.WithAttributes(attribute.String(key, value))
		in.attrs[k] = a
	}
	return a
}

// command counts a refusal of MAIL, RCPT or DATA.
func (in *instruments) command(command string, err error) {
	var se *smtp.SMTPError
	if err == nil || !errors.As(err, &se) || se.Code < 400 {
		return
	}
	code := fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	if se.EnhancedCode == smtp.NoEnhancedCode || se.EnhancedCode == smtp.EnhancedCodeNotSet {
		code = fmt.Sprint(se.Code)
	}
	in.refused.Add(context.Background(), 1, in.attr("command", command), in.attr("code", code))
}

func (in *instruments) authFailed(reason string) {
	in.authFailures.Add(context.Background(), 1, in.attr("reason", reason))
}

func (in *instruments) proxyRefused(reason string) {
	in.proxyRefusals.Add(context.Background(), 1, in.attr("reason", reason))
}

func (in *instruments) queued(took time.Duration) {
	in.accepted.Add(context.Background(), 1)
	in.latency.Record(context.Background(), took.Seconds())
}
