package lab

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// Destination is one recipient domain of the demo world: what it publishes,
// and what a relay that keeps its promises must do with mail for it.
type Destination struct {
	Domain    string
	Publishes string // what the domain has set up, in a line
	Demands   string // what the relay must do, in a line
	Expect    Expect
}

// Expect is the outcome a destination's policy demands.
type Expect struct {
	Result     string // "delivered", "waiting" (still queued) or "bounced"
	VerifiedBy string // delivered: DANE-EE, DANE-TA, PKIX, or "" for TLS without authentication
	Status     string // waiting or bounced: the start of the enhanced status code (RFC 3463)
	Failure    string // waiting: the TLS report's result type (RFC 8460 4.3)
}

// SenderDomain is where the world's mail comes from; its MX takes the
// delivery status notifications the relay sends back.
const SenderDomain = "sender.example"

// Destinations returns the destinations of the world, in the order a
// story tells them.
func Destinations() []Destination {
	return []Destination{
		{"dane-ee.example", "signed zone, TLSA 3 1 1 (DANE-EE) for its MX's key", "deliver, verified by DANE-EE",
			Expect{Result: "delivered", VerifiedBy: "DANE-EE"}},
		{"dane-ta.example", "signed zone, TLSA 2 0 1 (DANE-TA): its MX's certificate comes from the domain's own private CA", "deliver, verified by DANE-TA",
			Expect{Result: "delivered", VerifiedBy: "DANE-TA"}},
		{"mta-sts.example", "unsigned zone, MTA-STS mode enforce (policy over HTTPS), MX certificate from a public CA", "deliver, verified by PKIX",
			Expect{Result: "delivered", VerifiedBy: "PKIX"}},
		{"no-policy.example", "unsigned zone, no TLSA, no MTA-STS, a self-signed MX certificate", "deliver over TLS, unverified (tls.default: may)",
			Expect{Result: "delivered"}},
		{"wrong-cert.example", "signed zone, TLSA 3 1 1 for a key its MX no longer presents (a rollover without a TLSA update)", "keep it queued (4.7.x, tlsa-invalid): never hand it to that certificate",
			Expect{Result: "waiting", Status: "4.7.", Failure: "tlsa-invalid"}},
		{"stripped.example", "signed zone, but its TLSA answer arrives without its RRSIG (an attacker stripping DANE)", "keep it queued (4.7.x, dnssec-invalid): never fall back to unverified TLS",
			Expect{Result: "waiting", Status: "4.7.", Failure: "dnssec-invalid"}},
		{"null-mx.example", "MX 0 . (RFC 7505 null MX: the domain accepts no mail)", "bounce at once (5.1.10) and tell the sender",
			Expect{Result: "bounced", Status: "5.1.10"}},
	}
}

// World is the demo's private internet: a DNS server answering for a root
// signed with a key of the world's own, one MX server on 127.0.0.1 that
// presents each MX host's certificate by SNI, and an HTTPS server for the
// MTA-STS policy.
type World struct {
	DNS     *DNS
	Anchor  string // the root's DS in zone-file syntax: the trust anchor
	CAPEM   []byte // the "public" demo CA, which the relay must trust (tls.ca_file)
	CA      *CA
	MX      *MX // every MX host of the world: they share this server and its port
	STSPort int // the HTTPS port of the MTA-STS policy hosts

	sts    *http.Server
	served chan struct{}
}

// MXPort is the one port all of the world's MX hosts listen on: a relay
// delivers to it instead of 25 (delivery.port).
func (w *World) MXPort() int { return w.MX.Port }

// StartWorld builds and starts the world; Close stops it.
func StartWorld() (w *World, err error) {
	w = &World{}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	if w.CA, err = NewCA("Postern Demo Public Root CA"); err != nil {
		return nil, err
	}
	w.CAPEM = w.CA.PEM()
	private, err := NewCA("dane-ta.example private CA")
	if err != nil {
		return nil, err
	}
	certs := map[string]tls.Certificate{}
	issue := func(host string, ca *CA) (tls.Certificate, error) {
		var c tls.Certificate
		var err error
		if ca == nil {
			c, err = SelfSigned(host)
		} else {
			c, err = ca.Leaf(false, host)
		}
		certs[host] = c
		return c, err
	}
	eeCert, err := issue("mx.dane-ee.example", nil)
	if err != nil {
		return nil, err
	}
	// A leaf issued by a root carries the root in its chain: a DANE-TA(2)
	// server must present its trust anchor (RFC 7671 5.2.2).
	if _, err = issue("mx.dane-ta.example", private); err != nil {
		return nil, err
	}
	if _, err = issue("mx.mta-sts.example", w.CA); err != nil {
		return nil, err
	}
	if _, err = issue("mx.no-policy.example", nil); err != nil {
		return nil, err
	}
	if _, err = issue("mx."+SenderDomain, nil); err != nil {
		return nil, err
	}
	strippedCert, err := issue("mx.stripped.example", nil)
	if err != nil {
		return nil, err
	}
	if _, err = issue("mx.wrong-cert.example", nil); err != nil {
		return nil, err
	}
	oldKey, err := SelfSigned("mx.wrong-cert.example") // the key before the rollover
	if err != nil {
		return nil, err
	}
	w.MX, err = StartMX(func(mx *MX) {
		mx.Server.Domain = "mx.example"
		mx.Server.TLSConfig = &tls.Config{GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, ok := certs[strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))]
			if !ok {
				return nil, fmt.Errorf("no MX host %q here", hello.ServerName)
			}
			return &c, nil
		}}
	})
	if err != nil {
		return nil, err
	}
	if err := w.startSTS(); err != nil {
		return nil, err
	}
	tlsa := func(host string, usage, selector uint8, digest string) string {
		return fmt.Sprintf("_%d._tcp.%s. 300 IN TLSA %d %d 1 %s\n", w.MX.Port, host, usage, selector, digest)
	}
	mx := func(domain string) string {
		return fmt.Sprintf("%[1]s. 300 IN MX 10 mx.%[1]s.\nmx.%[1]s. 300 IN A 127.0.0.1\n", domain)
	}
	type zone struct {
		origin  string
		signed  bool
		records string
	}
	zones := []zone{
		{"dane-ee.example", true, mx("dane-ee.example") + tlsa("mx.dane-ee.example", 3, 1, spkiSHA256(eeCert))},
		{"dane-ta.example", true, mx("dane-ta.example") + tlsa("mx.dane-ta.example", 2, 0, certSHA256(private.Cert))},
		{"mta-sts.example", false, mx("mta-sts.example") +
			"_mta-sts.mta-sts.example. 300 IN TXT \"v=STSv1; id=20261129T000000;\"\nmta-sts.mta-sts.example. 300 IN A 127.0.0.1\n"},
		{"no-policy.example", false, mx("no-policy.example")},
		{"wrong-cert.example", true, mx("wrong-cert.example") + tlsa("mx.wrong-cert.example", 3, 1, spkiSHA256(oldKey))},
		{"stripped.example", true, mx("stripped.example") + tlsa("mx.stripped.example", 3, 1, spkiSHA256(strippedCert))},
		{"null-mx.example", true, "null-mx.example. 300 IN MX 0 .\n"},
		{SenderDomain, false, mx(SenderDomain)},
	}
	root, err := NewZone(".", dns.ECDSAP256SHA256, "")
	if err != nil {
		return nil, err
	}
	tld, err := NewZone("example.", dns.ECDSAP256SHA256, "")
	if err != nil {
		return nil, err
	}
	all := []*Zone{root, tld}
	for _, z := range zones {
		var alg uint8
		if z.signed {
			alg = dns.ECDSAP256SHA256
		}
		child, err := NewZone(z.origin, alg, z.records)
		if err != nil {
			return nil, err
		}
		if err := tld.Delegate(child); err != nil {
			return nil, err
		}
		all = append(all, child)
	}
	if err := root.Delegate(tld); err != nil {
		return nil, err
	}
	w.Anchor = root.Anchor()
	if w.DNS, err = StartDNS(all...); err != nil {
		return nil, err
	}
	// The stripped signature: the TLSA answer of stripped.example's MX
	// loses its RRSIG on the way, as an attacker who wants DANE gone
	// would make it.
	strippedName := dns.Fqdn(fmt.Sprintf("_%d._tcp.mx.stripped.example", w.MX.Port))
	w.DNS.Tamper(func(q dns.Question, m *dns.Msg) {
		if q.Qtype != dns.TypeTLSA || !strings.EqualFold(q.Name, strippedName) {
			return
		}
		m.Answer = slices.DeleteFunc(m.Answer, func(rr dns.RR) bool { return rr.Header().Rrtype == dns.TypeRRSIG })
	})
	return w, nil
}

// startSTS serves mta-sts.example's policy over HTTPS with a certificate
// from the demo CA: mode enforce, its one MX.
func (w *World) startSTS() error {
	cert, err := w.CA.Leaf(false, "mta-sts.mta-sts.example")
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("mta-sts policy server: %w", err)
	}
	w.STSPort = l.Addr().(*net.TCPAddr).Port
	w.sts = &http.Server{
		Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/.well-known/mta-sts.txt" || r.Host != "mta-sts.mta-sts.example" {
				http.NotFound(rw, r)
				return
			}
			rw.Header().Set("Content-Type", "text/plain") // RFC 8461 3.3
			fmt.Fprint(rw, "version: STSv1\r\nmode: enforce\r\nmx: mx.mta-sts.example\r\nmax_age: 86400\r\n")
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		ErrorLog:  log.New(io.Discard, "", 0), // a relay that gives up on a handshake is not news
	}
	w.served = make(chan struct{})
	go func() { w.sts.ServeTLS(l, "", ""); close(w.served) }()
	return nil
}

// Close stops everything the world runs.
func (w *World) Close() {
	if w.DNS != nil {
		w.DNS.Close()
	}
	if w.MX != nil {
		w.MX.Close()
	}
	if w.sts != nil {
		w.sts.Close()
		<-w.served
	}
}

func spkiSHA256(c tls.Certificate) string {
	leaf := c.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return ""
		}
	}
	sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

func certSHA256(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}
