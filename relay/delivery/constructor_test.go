package delivery

import (
	"net/netip"
	"testing"

	"github.com/postern/postern/queue"
)

// New, like every constructor, takes a nil logger to mean "log nothing"
// and a nil clock to mean time.Now, rather than panic at the first line
// it logs.
func TestNewDefaultsLoggerAndClock(t *testing.T) {
	e := New(Config{}, Deps{})
	if e.d.Log == nil || e.d.Clock == nil {
		t.Fatalf("New kept a nil logger (%v) or clock (%v)", e.d.Log == nil, e.d.Clock == nil)
	}
	a := &attempt{e: e, m: queue.Message{ID: "q1"}, domain: "dest.test", now: e.d.Clock()}
	a.log("mx.dest.test", netip.AddrPort{}, TLSInfo{}, "451 4.3.0 try later", "deferred")
}
