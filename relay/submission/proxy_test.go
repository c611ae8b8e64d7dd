package submission

import (
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/relay/auth"
)

// The tests write PROXY headers byte by byte as a balancer puts them on the
// wire (haproxy_test.go puts a real HAProxy in front).

// proxyV1 is a version 1 (text) header for a TCP connection from src.
func proxyV1(src string, srcPort int) []byte {
	if strings.Contains(src, ":") {
		return fmt.Appendf(nil, "PROXY TCP6 %s 2001:db8::25 %d 587\r\n", src, srcPort)
	}
	return fmt.Appendf(nil, "PROXY TCP4 %s 192.0.2.25 %d 587\r\n", src, srcPort)
}

// v2Signature opens every version 2 (binary) header.
var v2Signature = []byte("\r\n\r\n\x00\r\nQUIT\n")

// proxyV2 is a version 2 header: PROXY for a TCP connection from src, or
// LOCAL (a balancer's health check) when src is not valid.
func proxyV2(src netip.AddrPort) []byte {
	b := append([]byte(nil), v2Signature...)
	if !src.IsValid() {
		return append(b, 0x20, 0x00, 0, 0) // version 2, LOCAL; UNSPEC; no addresses
	}
	dst := netip.MustParseAddr("192.0.2.25")
	fam := byte(0x11) // AF_INET, STREAM
	if src.Addr().Is6() {
		dst, fam = netip.MustParseAddr("2001:db8::25"), 0x21 // AF_INET6, STREAM
	}
	addrs := append(src.Addr().AsSlice(), dst.AsSlice()...)
	addrs = binary.BigEndian.AppendUint16(addrs, src.Port())
	addrs = binary.BigEndian.AppendUint16(addrs, 465)
	b = append(b, 0x21, fam) // version 2, PROXY
	b = binary.BigEndian.AppendUint16(b, uint16(len(addrs)))
	return append(b, addrs...)
}

func withProxyFrom(nets ...string) harnessOption {
	return func(c *Config, _ *auth.Limits) {
		for _, n := range nets {
			c.ProxyFrom = append(c.ProxyFrom, netip.MustParsePrefix(n))
		}
		c.ProxyHeaderTimeout = 500 * time.Millisecond
	}
}

// dialProxied connects as a balancer would: the header first, then (on
// the implicit-TLS port) the TLS handshake.
func dialProxied(t *testing.T, addr string, header []byte, implicitTLS bool) *raw {
	t.Helper()
	r := dialRaw(t, addr)
	if _, err := r.conn.Write(header); err != nil {
		t.Fatal(err)
	}
	if implicitTLS {
		tc := tls.Client(r.conn, clientTLS)
		r.conn, r.text = tc, textproto.NewConn(tc)
	}
	return r
}

// TestProxyProtocolGivesTheClientAddress: behind a trusted balancer, the
// address in the PROXY header (v1 on 587 before STARTTLS, v2 on 465 before
// the ClientHello) is the one queued, written in the Received header and
// logged, with the balancer's beside it.
func TestProxyProtocolGivesTheClientAddress(t *testing.T) {
	for _, tc := range []struct {
		name        string
		header      []byte
		implicitTLS bool
		clientIP    string
		received    string
	}{
		{"v1 on 587", proxyV1("203.0.113.7", 40001), false, "203.0.113.7", "[203.0.113.7]"},
		{"v1 IPv6 on 587", proxyV1("2001:db8:77::7", 40002), false, "2001:db8:77::7", "[IPv6:2001:db8:77::7]"},
		{"v2 on 465", proxyV2(netip.MustParseAddrPort("198.51.100.8:40003")), true, "198.51.100.8", "[198.51.100.8]"},
		{"v2 IPv6 on 465", proxyV2(netip.MustParseAddrPort("[2001:db8:77::8]:40004")), true, "2001:db8:77::8", "[IPv6:2001:db8:77::8]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, withProxyFrom("127.0.0.0/8"))
			addr := h.starttls
			if tc.implicitTLS {
				addr = h.implicit
			}
			r := dialProxied(t, addr, tc.header, tc.implicitTLS)
			r.expect("", "220")
			r.expect("EHLO client.test", "250")
			if !tc.implicitTLS {
				r.startTLS()
				r.expect("EHLO client.test", "250")
			}
			r.expect("AUTH PLAIN "+plainToken(testUser, testPassword), "235")
			r.expect("MAIL FROM:<app@example.org>", "250")
			r.expect("RCPT TO:<a@dest.test>", "250")
			r.expect("DATA", "354")
			r.expect("From: app@example.org\r\nSubject: x\r\n\r\nhi\r\n.", "250")
			m, body := h.only()
			if m.ClientIP != tc.clientIP {
				t.Errorf("queued client address %q, want %q", m.ClientIP, tc.clientIP)
			}
			if first, _, _ := strings.Cut(string(body), "\r\n"); !strings.Contains(first, "("+tc.received+")") {
				t.Errorf("Received header %q does not name %s", first, tc.received)
			}
			log := h.logs.String()
			if !strings.Contains(log, `msg=authenticated user=app client_ip=`+tc.clientIP+` proxy_ip=127.0.0.1`) {
				t.Errorf("log does not name the client and the balancer:\n%s", log)
			}
		})
	}
}

// TestProxyProtocolLimitsCountTheClient: the per-address connection limit
// counts the client in the header, not the balancer every client shares.
func TestProxyProtocolLimitsCountTheClient(t *testing.T) {
	h := newHarness(t, withProxyFrom("127.0.0.1/32"), func(c *Config, _ *auth.Limits) { c.MaxConnectionsPerIP = 1 })
	first := dialProxied(t, h.starttls, proxyV1("203.0.113.1", 40010), false)
	first.expect("", "220")
	again := dialProxied(t, h.starttls, proxyV2(netip.MustParseAddrPort("203.0.113.1:40011")), false)
	again.expect("", "421 4.7.0 relay.test Too many connections from your address")
	other := dialProxied(t, h.starttls, proxyV1("203.0.113.2", 40012), false)
	other.expect("", "220")
}

// TestProxyProtocolThrottleCountsTheClient: failed AUTH locks out the
// client that failed, not every client behind the same balancer.
func TestProxyProtocolThrottleCountsTheClient(t *testing.T) {
	h := newHarness(t, withProxyFrom("127.0.0.0/8"), func(_ *Config, l *auth.Limits) {
		l.FreeFailures, l.MaxFailures = 0, 2
	})
	login := func(src, password, want string) {
		t.Helper()
		r := dialProxied(t, h.implicit, proxyV1(src, 40020), true)
		r.expect("", "220")
		r.expect("EHLO client.test", "250")
		r.expect("AUTH PLAIN "+plainToken(testUser, password), want)
	}
	login("203.0.113.66", "wrong", "535 5.7.8")
	login("203.0.113.66", "wrong", "535 5.7.8")
	login("203.0.113.66", testPassword, "454 4.7.0")
	login("203.0.113.67", testPassword, "235")
	if log := h.logs.String(); !strings.Contains(log, "client_ip=203.0.113.66 proxy_ip=127.0.0.1 user=app") {
		t.Errorf("the failures are not logged under the client's address:\n%s", log)
	}
}

// TestProxyProtocolHealthCheck: a v2 LOCAL header (HAProxy's
// check-send-proxy) is the balancer speaking for itself: it is served
// under the balancer's address.
func TestProxyProtocolHealthCheck(t *testing.T) {
	h := newHarness(t, withProxyFrom("127.0.0.0/8"))
	r := dialProxied(t, h.starttls, proxyV2(netip.AddrPort{}), false)
	r.expect("", "220 relay.test")
	r.expect("QUIT", "221")
}

// TestProxyProtocolRefusals: a trusted address that does not open with a
// valid header, and an untrusted one that sends a header, are cut off: no
// session, nothing read as a command, and a warning that says why.
func TestProxyProtocolRefusals(t *testing.T) {
	for _, tc := range []struct {
		name        string
		trusted     string
		send        []byte
		implicitTLS bool
		greeting    bool // the greeting comes before the server reads anything
		log         string
	}{
		{"no header from a trusted address", "127.0.0.0/8", []byte("EHLO client.test\r\n"), false, false,
			"PROXY protocol header missing from a trusted address"},
		{"malformed v1", "127.0.0.0/8", []byte("PROXY TCP4 203.0.113.7 nonsense\r\n"), false, false,
			"malformed PROXY protocol header from a trusted address"},
		{"truncated v2", "127.0.0.0/8", proxyV2(netip.MustParseAddrPort("203.0.113.7:1"))[:20], false, false,
			"no PROXY protocol header from a trusted address in time"},
		{"silence from a trusted address", "127.0.0.0/8", nil, false, false,
			"no PROXY protocol header from a trusted address in time"},
		{"ClientHello without a header", "127.0.0.0/8", nil, true, false,
			"PROXY protocol header missing from a trusted address"},
		{"v1 from an untrusted address on 587", "192.0.2.0/24", proxyV1("203.0.113.7", 40030), false, true,
			"PROXY protocol header from an address not in submission.proxy_protocol"},
		{"v2 from an untrusted address on 465", "192.0.2.0/24", proxyV2(netip.MustParseAddrPort("203.0.113.7:40031")), true, false,
			"PROXY protocol header from an address not in submission.proxy_protocol"},
		{"v1 with the protocol off", "", proxyV1("203.0.113.7", 40032), false, true,
			"PROXY protocol header from an address not in submission.proxy_protocol"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var nets []string
			if tc.trusted != "" {
				nets = append(nets, tc.trusted)
			}
			h := newHarness(t, withProxyFrom(nets...))
			addr := h.starttls
			if tc.implicitTLS {
				addr = h.implicit
			}
			r := dialRaw(t, addr)
			r.conn.Write(tc.send)
			if tc.implicitTLS {
				if err := tls.Client(r.conn, clientTLS).Handshake(); err == nil {
					t.Fatal("TLS handshake succeeded")
				}
			} else {
				if tc.greeting {
					r.expect("", "220")
				}
				if got := r.reply(); !strings.HasPrefix(got, "EOF") {
					t.Fatalf("got %q, want the connection closed", got)
				}
			}
			waitFor(t, func() bool { return strings.Contains(h.logs.String(), tc.log) }, "log: "+tc.log)
		})
	}
}

// TestProxyProtocolTCPHealthCheckIsQuiet: a balancer's plain TCP check
// (connect, then close or reset, without a byte) is not refused noisily.
func TestProxyProtocolTCPHealthCheckIsQuiet(t *testing.T) {
	h := newHarness(t, withProxyFrom("127.0.0.0/8"))
	for _, reset := range []bool{false, true} {
		c, err := net.Dial("tcp", h.starttls)
		if err != nil {
			t.Fatal(err)
		}
		if reset {
			c.(*net.TCPConn).SetLinger(0) // close with RST, as HAProxy's checks do
		}
		c.Close()
	}
	const quiet = "level=DEBUG msg=\"connection from a trusted address closed before a PROXY protocol header\""
	waitFor(t, func() bool { return strings.Count(h.logs.String(), quiet) == 2 }, "both checks")
	if log := h.logs.String(); strings.Contains(log, "level=WARN") {
		t.Errorf("a TCP health check was logged:\n%s", log)
	}
}

// TestProxyProtocolTrustFollowsReload: the trusted networks may change
// while the server runs; a header from a network no longer trusted closes
// the connection.
func TestProxyProtocolTrustFollowsReload(t *testing.T) {
	h := newHarness(t, withProxyFrom("127.0.0.0/8"))
	dialProxied(t, h.starttls, proxyV1("203.0.113.5", 40040), false).expect("", "220")
	h.srv.SetProxyNetworks(nil)
	r := dialProxied(t, h.starttls, proxyV1("203.0.113.5", 40041), false)
	r.expect("", "220")
	if got := r.reply(); !strings.HasPrefix(got, "EOF") {
		t.Fatalf("got %q, want the connection closed", got)
	}
	h.srv.SetProxyNetworks([]netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")})
	plain := dialRaw(t, h.starttls)
	plain.conn.Write([]byte("EHLO client.test\r\n"))
	if got := plain.reply(); !strings.HasPrefix(got, "EOF") {
		t.Fatalf("got %q from a trusted address without a header, want the connection closed", got)
	}
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
