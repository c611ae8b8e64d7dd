package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/otlptranslator"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// telemetry is the daemon's meter (and, with OTLP, tracer) provider. Every
// package makes its instruments on the global providers, which forward to
// these once they are installed.
type telemetry struct {
	metrics  http.Handler // Prometheus exposition of every instrument
	shutdown []func(context.Context) error
}

func startTelemetry(cfg TelemetryConfig, log *slog.Logger) (*telemetry, error) {
	res := resource.NewSchemaless(attribute.String("service.name", "postern"), attribute.String("service.version", version()))
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	prom, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo(),
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	t := &telemetry{metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogPromLogger{log}})}
	opts := []sdkmetric.Option{sdkmetric.WithResource(res), sdkmetric.WithReader(prom)}
	if cfg.OTLPEndpoint != "" {
		cfg.OTLPEndpoint = strings.TrimRight(cfg.OTLPEndpoint, "/")
		exp, err := otlpmetrichttp.New(context.Background(), otlpmetrichttp.WithEndpointURL(cfg.OTLPEndpoint+"/v1/metrics"))
		if err != nil {
			return nil, fmt.Errorf("telemetry.otlp_endpoint: %w", err)
		}
		opts = append(opts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(cfg.OTLPInterval))))
		spans, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(cfg.OTLPEndpoint+"/v1/traces"))
		if err != nil {
			return nil, fmt.Errorf("telemetry.otlp_endpoint: %w", err)
		}
		tp := sdktrace.NewTracerProvider(sdktrace.WithResource(res), sdktrace.WithBatcher(spans),
			sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.TraceSampleRatio))))
		otel.SetTracerProvider(tp)
		t.shutdown = append(t.shutdown, tp.Shutdown)
		log.Info("OTLP export on", "endpoint", cfg.OTLPEndpoint, "interval", cfg.OTLPInterval, "trace_sample_ratio", cfg.TraceSampleRatio)
	}
	mp := sdkmetric.NewMeterProvider(opts...)
	otel.SetMeterProvider(mp)
	t.shutdown = append(t.shutdown, mp.Shutdown)
	if err := exportAtZero(); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return t, nil
}

// Close flushes what OTLP has not sent yet.
func (t *telemetry) Close(ctx context.Context) error {
	var errs []error
	for _, f := range t.shutdown {
		errs = append(errs, f(ctx))
	}
	return errors.Join(errs...)
}

type slogPromLogger struct{ log *slog.Logger }

func (l slogPromLogger) Println(v ...any) {
	l.log.Error("metrics exposition", "detail", fmt.Sprint(v...))
}

// exportAtZero makes the counters that the dashboard and the alerts graph
// show 0 from the start, instead of "No data" until their first event (a
// TLS downgrade, an MTA-STS fetch). They are tlspolicy's instruments: the
// meter provider returns the same instrument, and so the same series, for
// the same scope, name and description (a different description would be
// a second stream, which the SDK warns of: TestCountersExportedAtZero).
func exportAtZero() error {
	ctx := context.Background()
	m := otel.GetMeterProvider().Meter("github.com/postern/postern/tlspolicy")
	downgrades, err := m.Int64Counter("postern.tls.downgrades",
		metric.WithDescription("Deliveries weaker than the destination domain has shown before"))
	if err != nil {
		return err
	}
	fetches, err := m.Int64Counter("postern.mta_sts.fetches", metric.WithDescription("MTA-STS policy fetches by result (ok, error)"))
	if err != nil {
		return err
	}
	downgrades.Add(ctx, 0)
	for _, result := range []string{"ok", "error"} {
		fetches.Add(ctx, 0, metric.WithAttributes(attribute.String("result", result)))
	}
	return nil
}

// queueGauges reports the queue's size by state and the age of its oldest
// message at each collection.
func queueGauges(stats *statsCache) error {
	m := otel.GetMeterProvider().Meter("github.com/postern/postern/queue")
	messages, err := m.Int64ObservableGauge("postern.queue.messages",
		metric.WithDescription("Queued messages by state (active, deferred, held, exported)"))
	if err != nil {
		return err
	}
	recipients, err := m.Int64ObservableGauge("postern.queue.recipients",
		metric.WithDescription("Recipients still to be delivered"))
	if err != nil {
		return err
	}
	oldest, err := m.Float64ObservableGauge("postern.queue.oldest_age", metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest queued message (0 when the queue is empty)"))
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st, err := stats.get()
		if err != nil {
			return err
		}
		for state, n := range st.Messages {
			o.ObserveInt64(messages, int64(n), metric.WithAttributes(attribute.String("state", state)))
		}
		o.ObserveInt64(recipients, int64(st.Recipients))
		age := 0.0
		if !st.Oldest.IsZero() {
			age = time.Since(st.Oldest).Seconds()
		}
		o.ObserveFloat64(oldest, age)
		return nil
	}, messages, recipients, oldest)
	return err
}
