package delivery

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/smtptest"
	"github.com/postern/postern/resolver"
	"github.com/postern/postern/resolver/resolvertest"
)

// egressZone has mail servers reachable over IPv4 only, IPv6 only and both;
// every address is on the loopback interface, where the test MX listens.
const egressZone = `
v4.test.          300 IN MX 10 mx.v4.test.
mx.v4.test.       300 IN A 127.0.0.1
v6.test.          300 IN MX 10 mx.v6.test.
mx.v6.test.       300 IN AAAA ::1
dual.test.        300 IN MX 10 mx.dual.test.
mx.dual.test.     300 IN A 127.0.0.1
mx.dual.test.     300 IN AAAA ::1
bounces.test.     300 IN MX 10 mx.v4.test.
`

func source(addr, helo string) Source { return Source{Addr: netip.MustParseAddr(addr), HELO: helo} }

// egressWorld is a world whose MX listens on 127.0.0.1 and [::1] at one
// port, with the sources and address preference given.
func egressWorld(t *testing.T, sources []Source, preferIPv6 bool, routes ...Route) *world {
	t.Helper()
	mx := smtptest.Start(t, func(mx *smtptest.MX) { mx.IPv6 = true })
	dns, anchors := resolvertest.StartSigned(t, egressZone)
	res, _ := resolver.New([]string{dns.Addr}, resolver.Options{Timeout: time.Second, Attempts: 1, Anchors: anchors})
	w := buildWorld(t, mx, dns, res, nil, nil, routes...)
	w.engine.cfg.Sources, w.engine.cfg.PreferIPv6 = sources, preferIPv6
	return w
}

// TestEgressAddresses: each connection leaves from a configured source of
// the MX address's family and says that source's name in EHLO; a route
// pins its own; IPv4 and IPv6 are both used, in the preferred order; the
// audit trail records the source.
func TestEgressAddresses(t *testing.T) {
	pool := []Source{source("127.0.0.2", "out2.relay.test"), source("127.0.0.3", "out3.relay.test"), source("::1", "out6.relay.test")}
	names := map[string]string{"127.0.0.2": "out2.relay.test", "127.0.0.3": "out3.relay.test", "::1": "out6.relay.test",
		"127.0.0.1": "relay.test"}
	pinned := Route{Match: "routed.test", Host: "127.0.0.1", Source: source("127.0.0.3", "pinned.relay.test")}
	for _, tc := range []struct {
		name       string
		sources    []Source
		preferIPv6 bool
		rcpt       string
		peers      []string // acceptable source addresses as the MX saw them
		helo       string   // "" : the name paired with the peer in names
	}{
		{"IPv4 MX from an IPv4 source", pool, false, "a@v4.test", []string{"127.0.0.2", "127.0.0.3"}, ""},
		{"IPv6 MX from the IPv6 source", pool, false, "a@v6.test", []string{"::1"}, ""},
		{"dual-stack MX, IPv4 preferred", pool, false, "a@dual.test", []string{"127.0.0.2", "127.0.0.3"}, ""},
		{"dual-stack MX, IPv6 preferred", pool, true, "a@dual.test", []string{"::1"}, ""},
		{"IPv6 preferred but no IPv6 source", pool[:1], true, "a@dual.test", []string{"127.0.0.2"}, ""},
		{"route pins its source", pool[:1], false, "a@routed.test", []string{"127.0.0.3"}, "pinned.relay.test"},
		{"no sources: the kernel's choice and the host name", nil, false, "a@v4.test", []string{"127.0.0.1"}, ""},
		{"no sources, IPv6", nil, true, "a@dual.test", []string{"::1"}, "relay.test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := egressWorld(t, tc.sources, tc.preferIPv6, pinned)
			w.submit(sender, tc.rcpt)
			w.run()
			got := w.mx.Received()
			if len(got) != 1 {
				t.Fatalf("%d messages arrived, want 1", len(got))
			}
			peer, helo := got[0].Peer, got[0].Helo
			want := tc.helo
			if want == "" {
				want = names[peer]
			}
			if !contains(tc.peers, peer) || helo != want {
				t.Errorf("arrived from %s saying EHLO %s; want from %v saying %s", peer, helo, tc.peers, want)
			}
			if rec := w.delivered(tc.rcpt); len(rec) != 1 || rec[0].SourceIP != peer {
				t.Errorf("audit record does not name the source %s: %+v", peer, rec)
			}
		})
	}
}

// TestEgressSameSourceForAHost: every connection to one host leaves from
// the same source, and the sources are spread over hosts.
func TestEgressSameSourceForAHost(t *testing.T) {
	e := New(Config{Sources: []Source{source("192.0.2.1", "a"), source("192.0.2.2", "b"), source("2001:db8::1", "c")}}, Deps{})
	v4, v6 := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8:1::1")
	used := map[string]bool{}
	for i := range 50 {
		host := "mx" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + ".example"
		first, _ := e.sourceFor(Hop{Host: host}, v4)
		again, _ := e.sourceFor(Hop{Host: host}, netip.MustParseAddr("198.51.100.2"))
		if first != again {
			t.Fatalf("%s: %v then %v", host, first, again)
		}
		used[first.HELO] = true
		if s, ok := e.sourceFor(Hop{Host: host}, v6); !ok || s.HELO != "c" {
			t.Fatalf("%s over IPv6: %v %v", host, s, ok)
		}
	}
	if !used["a"] || !used["b"] || used["c"] {
		t.Errorf("IPv4 sources used over 50 hosts: %v", used)
	}
}

// TestEgressNoSourceForTheFamily: a mail server reachable only over a
// family no source has is not reached from an unlisted address: the mail
// waits (4.4.4), saying why.
func TestEgressNoSourceForTheFamily(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sources []Source
		rcpt    string
		want    string
	}{
		{"IPv6 MX, IPv4 sources", []Source{source("127.0.0.2", "out2.relay.test")}, "a@v6.test",
			"has only IPv6 addresses and delivery.source_addresses has no IPv6 address"},
		{"IPv4 MX, IPv6 source", []Source{source("::1", "out6.relay.test")}, "a@v4.test",
			"has only IPv4 addresses and delivery.source_addresses has no IPv4 address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := egressWorld(t, tc.sources, false)
			id := w.submit(sender, tc.rcpt)
			w.run()
			r := w.state(id).Recipients[0]
			if r.State != queue.Pending || !strings.Contains(r.LastReply, "4.4.4") || !strings.Contains(r.LastReply, tc.want) {
				t.Fatalf("recipient %+v; want pending with %q", r, tc.want)
			}
			if n := len(w.mx.Received()); n != 0 {
				t.Fatalf("%d messages arrived from an unlisted address", n)
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
