package main

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// BenchmarkEndToEnd measures relaying through the built binary: 16
// connections submit 2 KB messages over STARTTLS with AUTH (each answered
// 250 only after fsync), and Postern delivers them over STARTTLS to a sink
// MX. The clock stops when the sink holds every message.
//
//	go test ./cmd/postern -run XXX -bench EndToEnd -benchtime 4000x
func BenchmarkEndToEnd(b *testing.B) {
	d := newDaemon(b, nil)
	if out, err := d.run("pw\n", "user", "add", "load", "--password-stdin"); err != nil {
		b.Fatalf("%v %s", err, out)
	}
	d.start()
	defer d.signal(15)
	content := []byte("Subject: bench\r\nMessage-ID: <bench@load>\r\n\r\n" + strings.Repeat(strings.Repeat("x", 76)+"\r\n", 25))
	const clients = 16
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl, err := smtp.DialStartTLS(d.starttls, e2eTLS)
			if err != nil {
				b.Error(err)
				return
			}
			defer cl.Close()
			if err := cl.Auth(sasl.NewPlainClient("", "load", "pw")); err != nil {
				b.Error(err)
				return
			}
			for next.Add(1) <= int64(b.N) {
				if _, err := submitOn(cl, "", "", "load@example.org", "rcpt@dest.test", content); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	submitted := time.Since(start)
	for i := 0; i < b.N; i++ {
		select {
		case <-d.sink.Arrived:
		case <-time.After(60 * time.Second):
			b.Fatalf("only %d of %d delivered", i, b.N)
		}
	}
	elapsed := time.Since(start)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "relayed-msgs/s")
	b.ReportMetric(float64(b.N)/submitted.Seconds(), "accepted-msgs/s")
}
