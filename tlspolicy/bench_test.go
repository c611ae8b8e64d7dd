package tlspolicy_test

import (
	"context"
	"testing"

	"github.com/postern/postern/tlspolicy"
)

// BenchmarkDecideCached is one decision once DNS and the MTA-STS policy are
// cached: the cost delivery pays per MX host and message.
func BenchmarkDecideCached(b *testing.B) {
	w := newSTSWorld(b)
	e, closeDB := w.engine()
	defer closeDB()
	ctx := context.Background()
	req := tlspolicy.Request{Domain: "example.test", MXHost: "mx1.example.test", Port: 25}
	if d, err := e.Decide(ctx, req); err != nil || d.Source != "mta-sts" {
		b.Fatal(d, err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := e.Decide(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}
