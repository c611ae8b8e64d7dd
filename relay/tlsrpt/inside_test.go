package tlsrpt_test

import (
	"context"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/relay/tlsrpt"
)

// TestHTTPSReportsNeverGoInside: the recipient domain chooses its rua, so
// an https: address that is (or resolves to) loopback, private, link-local,
// unique-local or shared address space is refused before any connection,
// unless the operator allowed that range; names resolve through the
// reporter's own resolver.
func TestHTTPSReportsNeverGoInside(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	port := u.Port()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())

	// Everything these names resolve to is refused; none is ever dialled.
	inside := map[string][]netip.Addr{
		"private.dest.example":     {netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("192.168.0.7")},
		"metadata.dest.example":    {netip.MustParseAddr("169.254.169.254")},
		"ula.dest.example":         {netip.MustParseAddr("fd00::1")},
		"cgnat.dest.example":       {netip.MustParseAddr("100.64.1.1")},
		"mapped.example.com":       {netip.MustParseAddr("::ffff:127.0.0.1")}, // within the test certificate
		"example.com":              {netip.MustParseAddr("127.0.0.1")},        // the test server's name, on loopback
		"unspecified.dest.example": {netip.MustParseAddr("0.0.0.0")},
	}
	lookup := func(_ context.Context, host string) ([]netip.Addr, error) { return inside[host], nil }
	var ruas []string
	for host := range inside {
		ruas = append(ruas, "https://"+host+":"+port+"/tlsrpt")
	}
	ruas = append(ruas, "https://127.0.0.1:"+port+"/tlsrpt", "https://[::1]:"+port+"/tlsrpt")

	send := func(t *testing.T, allow []netip.Prefix) []tlsrpt.Outcome {
		c := &clock{now: time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)}
		q, db := oneDayOfAttempts(t, c)
		r, err := tlsrpt.NewReporter(tlsrpt.Config{OrganizationName: "O", ContactInfo: "c@b.example", Submitter: "relay.example",
			From: "reports@b.example", Roots: roots, AllowNetworks: allow},
			tlsrpt.Deps{Queue: q, DB: db, Clock: c.Now, LookupAddrs: lookup, LookupTXT: func(context.Context, string) ([]string, error) {
				return []string{"v=TLSRPTv1; rua=" + strings.Join(ruas, ",")}, nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		out, _ := r.Send(context.Background(), c.now)
		return out
	}

	out := send(t, nil)
	if len(out) != len(ruas) {
		t.Fatalf("%d outcomes for %d addresses", len(out), len(ruas))
	}
	for _, o := range out {
		if o.Err == nil || !strings.Contains(o.Err.Error(), "no address a report may be sent to") {
			t.Errorf("%s: %v", o.URI, o.Err)
		}
	}
	if hits.Load() != 0 {
		t.Fatalf("the report server inside was reached %d times", hits.Load())
	}

	// A lab that allows loopback reaches its report server, by name too.
	out = send(t, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
	posted := 0
	for _, o := range out {
		if o.Err == nil {
			posted++
			if !strings.Contains(o.URI, "example.com") && !strings.Contains(o.URI, "127.0.0.1") {
				t.Errorf("posted to %s, outside the allowed range", o.URI)
			}
		}
	}
	if posted != 3 || hits.Load() != 3 {
		t.Fatalf("posted %d, server saw %d; want 3 (127.0.0.1, example.com, ::ffff:127.0.0.1): %+v", posted, hits.Load(), out)
	}
}
