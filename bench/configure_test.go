package bench

import (
	"flag"
	"time"

	"github.com/postern/postern/relay/delivery"
)

// configure sets the delivery settings of per-destination concurrency (the
// daemon's defaults). A measurement of the code before them replaces this
// file with one whose configure does nothing.
func configure(cfg *delivery.Config) {
	cfg.InitialConnectionsPerDomain = 5
	if *window > 0 {
		cfg.InitialConnectionsPerDomain, cfg.MaxConnectionsPerDomain = *window, *window
	}
	cfg.DeadDestinationFailures = 5
	cfg.DeadDestinationCooldown = 5 * time.Minute
}

// window, when set, is every domain's window, fixed (initial and maximum).
var window = flag.Int("fair.window", 0, "initial and maximum connections per domain (0: the defaults, 5 and 20)")
