package tlsrpt

import (
	"context"
	"errors"
	"net/netip"
	"testing"
)

// TestReportAddressesInsideInOtherForms: an address that reaches the
// relay's own network is refused however it is written. IPv6 forms that
// carry an IPv4 address inside (NAT64 per RFC 6052 and RFC 8215, which a
// NAT64 gateway translates to that IPv4 address; IPv4-compatible; 6to4)
// reach the embedded address, so an embedded internal address is
// internal; so are the deprecated site-local range and IPv4 ranges that
// are never on the public internet.
func TestReportAddressesInsideInOtherForms(t *testing.T) {
	inside := []string{
		"64:ff9b::7f00:1",    // NAT64 well-known prefix, 127.0.0.1
		"64:ff9b::a9fe:a9fe", // NAT64, 169.254.169.254 (cloud metadata)
		"64:ff9b::a01:203",   // NAT64, 10.1.2.3
		"64:ff9b:1::a01:203", // RFC 8215 local-use NAT64 prefix, 10.1.2.3
		"::7f00:1",           // IPv4-compatible ::127.0.0.1
		"::a9fe:a9fe",        // IPv4-compatible ::169.254.169.254
		"2002:a9fe:a9fe::1",  // 6to4 of 169.254.169.254
		"2002:c0a8:1::1",     // 6to4 of 192.168.0.1
		"fec0::1",            // site-local (RFC 3879, deprecated, still routed inside some networks)
		"198.18.0.1",         // benchmarking (RFC 2544), used inside labs and by some VPNs
		"192.0.0.170",        // IETF protocol assignments (RFC 6890)
		"240.0.0.1",          // reserved
		"255.255.255.255",    // broadcast
	}
	r := &Reporter{d: Deps{LookupAddrs: func(_ context.Context, host string) ([]netip.Addr, error) {
		return []netip.Addr{netip.MustParseAddr(host[len("h-"):])}, nil
	}}}
	for _, s := range inside {
		_, err := r.reportAddrs(context.Background(), "h-"+s)
		var ie *insideError
		if !errors.As(err, &ie) {
			t.Errorf("%s: a report may be posted there (err %v)", s, err)
		}
		if _, err := r.reportAddrs(context.Background(), "["+s+"]"); !errors.As(err, &ie) {
			t.Errorf("literal [%s]: a report may be posted there (err %v)", s, err)
		}
	}
	// Public addresses, in the same forms, still go.
	for _, s := range []string{"64:ff9b::808:808", "2002:808:808::1", "192.0.2.1", "2001:db8::1", "8.8.8.8"} {
		if _, err := r.reportAddrs(context.Background(), "["+s+"]"); err != nil {
			t.Errorf("%s: refused: %v", s, err)
		}
	}
}
