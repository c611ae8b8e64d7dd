package submission

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// BenchmarkSubmit measures durable submissions (STARTTLS, AUTH PLAIN, a 2 KB
// message, fsync before each 250) by 1 and by 16 concurrent clients, each on
// its own connection sending message after message.
//
//	go test ./relay/submission -run XXX -bench Submit -benchtime 5000x
func BenchmarkSubmit(b *testing.B) {
	body := []byte("Subject: bench\r\nMessage-ID: <b@bench>\r\n\r\n" +
		strings.Repeat(strings.Repeat("x", 76)+"\r\n", 26))
	for _, clients := range []int{1, 16} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			h := newHarness(b)
			defer h.srv.smtp.Close()
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for c := 0; c < clients; c++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					cl, err := smtp.DialStartTLS(h.starttls, clientTLS)
					if err != nil {
						b.Error(err)
						return
					}
					defer cl.Close()
					if err := cl.Auth(sasl.NewPlainClient("", "free", testPassword)); err != nil {
						b.Error(err)
						return
					}
					for next.Add(1) <= int64(b.N) {
						if err := cl.SendMail("app@example.org", []string{"a@dest.test"}, bytes.NewReader(body)); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
