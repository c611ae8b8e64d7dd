package main

import (
	"context"
	"net"
	"testing"
	"time"
)

// The source's count and the sink's agree, over STARTTLS and plain SMTP, with connections reused and reopened as asked.
func TestSourceIntoSink(t *testing.T) {
	for _, mode := range []string{"starttls", "plain"} {
		t.Run(mode, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			s, err := newSink(l, 60)
			if err != nil {
				t.Fatal(err)
			}
			res, err := runSource(sourceOptions{server: l.Addr().String(), mode: mode, user: "u", pass: "p",
				from: "a@example.org", to: "b@example.net", count: 60, size: 4096, connections: 4, perConn: 10},
				func(int64, int64, time.Duration) {})
			if err != nil || res.Accepted != 60 || res.Errors != 0 || res.TxP99Ms <= 0 || res.DotP50Ms > res.TxP50Ms {
				t.Fatalf("source: %+v %v", res, err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			got := s.wait(ctx, func(int64, int64, time.Duration) {})
			// 10 messages per connection: at least 6 sessions, and at most one
			// more per worker that connected as the last messages were taken.
			if got.Received != 60 || got.NthAt == "" || got.Sessions < 6 || got.Sessions > 10 {
				t.Fatalf("sink: %+v", got)
			}
			if tls := got.TLSHandshakes; mode == "starttls" && tls != got.Sessions || mode == "plain" && tls != 0 {
				t.Fatalf("%d handshakes for %d sessions over %s", tls, got.Sessions, mode)
			}
		})
	}
}

func TestMessageSize(t *testing.T) {
	for _, size := range []int{2048, 51200} {
		if n := len(message(size, 1)); n > size || n < size-80 {
			t.Errorf("asked %d bytes, made %d", size, n)
		}
	}
}
