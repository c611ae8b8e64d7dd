package tlspolicy

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
)

// instruments are the engine's OpenTelemetry metrics, made on the global
// meter provider when the engine is built (no-ops until the daemon installs
// a real one), like every package's.
type instruments struct {
	downgrades metric.Int64Counter
	stsFetches metric.Int64Counter
}

func newInstruments() instruments {
	m := otel.GetMeterProvider().Meter("github.com/postern/postern/tlspolicy")
	var in instruments
	in.downgrades, _ = m.Int64Counter("postern.tls.downgrades",
		metric.WithDescription("Deliveries weaker than the destination domain has shown before"))
	in.stsFetches, _ = m.Int64Counter("postern.mta_sts.fetches",
		metric.WithDescription("MTA-STS policy fetches by result (ok, error)"))
	return in
}
