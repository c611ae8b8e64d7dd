package submission

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/relay/dkim"
)

// BenchmarkSubmit measures durable submissions (STARTTLS, AUTH PLAIN, a 2 KB
// message, fsync before each 250) by 1 and by 16 concurrent clients, each on
// its own connection sending message after message.
//
//	go test ./relay/submission -run XXX -bench Submit -benchtime 5000x
func BenchmarkSubmit(b *testing.B) {
	body := []byte("Subject: bench\r\nMessage-ID: <b@bench>\r\n\r\n" +
		strings.Repeat(strings.Repeat("x", 76)+"\r\n", 26))
	for _, tc := range []struct {
		clients int
		dkim    string // "", "ed25519" or "rsa"
	}{{1, ""}, {16, ""}, {16, "ed25519"}, {16, "rsa"}} {
		clients := tc.clients
		name := fmt.Sprintf("clients=%d", clients)
		if tc.dkim != "" {
			name += "/dkim=" + tc.dkim
		}
		b.Run(name, func(b *testing.B) {
			h := newHarness(b)
			defer h.srv.smtp.Close()
			if tc.dkim != "" {
				pemKey, _, err := dkim.Generate("example.org", "bench", tc.dkim, 2048)
				if err != nil {
					b.Fatal(err)
				}
				path := filepath.Join(b.TempDir(), "k.pem")
				os.WriteFile(path, pemKey, 0o600)
				key, err := dkim.LoadKey("example.org", "bench", path)
				if err != nil {
					b.Fatal(err)
				}
				h.srv.dkim = dkim.New([]dkim.Key{key}, nil)
			}
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

// BenchmarkReadContent is the per-message work of DATA beyond the network:
// the bare-CR/LF guard and the header scan over a 2 KB message.
func BenchmarkReadContent(b *testing.B) {
	msg := []byte("From: App <app@example.org>\r\nTo: a@dest.test\r\nSubject: bench\r\nMessage-ID: <b@bench>\r\n\r\n" +
		strings.Repeat(strings.Repeat("x", 76)+"\r\n", 24))
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for i := 0; i < b.N; i++ {
		br := bufio.NewReaderSize(&crlfGuard{r: bytes.NewReader(msg)}, 64<<10)
		if _, _, err := readHeader(br); err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, br); err != nil {
			b.Fatal(err)
		}
	}
}
