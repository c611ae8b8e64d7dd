// Package tlspolicy decides how strong the TLS of each delivery must be,
// from the operator's local policy, DANE (RFC 7672), MTA-STS (RFC 8461) and
// the message's own demands (REQUIRETLS, TLS-Required: No, RFC 8689); the
// delivery code enforces the Decision on the wire through the tls.Config it
// builds. A policy that cannot be met defers; it never falls back to a
// weaker channel in silence.
package tlspolicy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// Level is how much TLS a connection needs, weakest first.
type Level uint8

const (
	None    Level = iota // no TLS, even if offered
	May                  // STARTTLS when offered, certificate not checked (RFC 7435)
	Encrypt              // TLS required, any certificate
	Verify               // TLS required, authenticated by PKIX or, with TLSA records, by DANE
)

var names = [...]string{"none", "may", "encrypt", "verify"}

func (l Level) String() string { return names[l] }

// ParseLevel reads a level's name, in any case, as ParseMode reads a mode's.
func ParseLevel(s string) (Level, error) {
	for i, n := range names {
		if strings.EqualFold(s, n) {
			return Level(i), nil
		}
	}
	return 0, fmt.Errorf("%q: use none, may, encrypt or verify", s)
}

// Decision is what a connection to one MX host must satisfy, and why.
type Decision struct {
	Level  Level
	Source string         // "local", "dane", "mta-sts", "default", "route"
	Roots  *x509.CertPool // PKIX roots; nil means the system pool
	// TLSA, when not empty, makes Verify mean DANE: the certificate must
	// match one of these usable records (RFC 7672 3).
	TLSA []*dns.TLSA
	// SNI is the server name sent; the MX host when empty (for DANE, the
	// TLSA base domain).
	SNI string
	// Names are the names a PKIX (or DANE-TA) certificate may carry; the
	// MX host when empty.
	Names      []string
	MinVersion uint16 // 0: TLS 1.2 for Encrypt and Verify, 1.0 for May
	// Testing is an MTA-STS policy in testing mode: the certificate is
	// checked and a failure recorded, but delivery goes on.
	Testing bool
	Reason  string // why this decision, for logs and queue show
	// PolicyType and PolicyStrings describe the policy for TLS reports
	// (RFC 8460 4.3): "tlsa", "sts" or "no-policy-found".
	PolicyType    string
	PolicyStrings []string
	PolicyDomain  string
	// ClientCertificate is presented when the server asks for one.
	ClientCertificate *tls.Certificate
	// Pinned marks TLSA records that are the operator's public-key pins
	// for a route (PinnedKeys), not records published in DNS.
	Pinned bool
}

// PinnedKeys turns SHA-256 digests of public keys (SPKI) into the records
// that match them, DANE-EE(3) SPKI(1) SHA-256(1): a pinned key is checked
// exactly as RFC 7672 checks such a record, names and dates aside.
func PinnedKeys(sums [][]byte) []*dns.TLSA {
	out := make([]*dns.TLSA, 0, len(sums))
	for _, sum := range sums {
		out = append(out, &dns.TLSA{Hdr: dns.RR_Header{Rrtype: dns.TypeTLSA, Class: dns.ClassINET},
			Usage: 3, Selector: 1, MatchingType: 1, Certificate: hex.EncodeToString(sum)})
	}
	return out
}

// Required reports whether delivery must stop when TLS cannot be had.
func (d Decision) Required() bool { return d.Level >= Encrypt }

// AllowsCleartextRetry reports whether a failed STARTTLS may be followed
// by a try in cleartext: only where nothing asks for TLS (level may, no
// MTA-STS policy observing in testing mode, no DANE, no REQUIRETLS, no
// downgrade memory holding the domain to more). That is opportunistic TLS
// as RFC 7435 describes it, and what Postfix and maddy do at "may".
func (d Decision) AllowsCleartextRetry() bool {
	return d.Level == May && !d.Testing && len(d.TLSA) == 0 && orNone(d.PolicyType) == "no-policy-found"
}

func orNone(policyType string) string {
	if policyType == "" {
		return "no-policy-found"
	}
	return policyType
}

// ConnKey names what a connection made under d was checked for: two
// decisions with the same key accept exactly the same servers, so a
// session opened for one may carry mail for the other (connection reuse),
// and no message rides on a session made for a weaker or different policy.
func (d Decision) ConnKey() string {
	var tlsa []string
	for _, r := range d.TLSA {
		tlsa = append(tlsa, fmt.Sprintf("%d %d %d %s", r.Usage, r.Selector, r.MatchingType, strings.ToLower(r.Certificate)))
	}
	slices.Sort(tlsa)
	return fmt.Sprintf("%s|testing=%t|pinned=%t|min=%x|sni=%s|names=%s|tlsa=%s|roots=%p|client=%p",
		d.Level, d.Testing, d.Pinned, d.MinVersion, d.SNI, strings.Join(d.Names, ","), strings.Join(tlsa, ","), d.Roots, d.ClientCertificate)
}

// Describe is the decision in a few words, for logs and replies.
func (d Decision) Describe() string {
	s := d.Source + " " + d.Level.String()
	if d.Level == Verify && len(d.TLSA) > 0 && !d.Pinned {
		s = "dane" // authenticated by TLSA records, whatever asked for it
	}
	if d.Pinned {
		s += " (pinned key)"
	}
	if d.Testing {
		s += " (testing)"
	}
	return s
}

// Verification reports, after a handshake, how the peer was authenticated.
type Verification struct {
	Method  string // "DANE-EE", "DANE-TA", "PKIX", or "" when not authenticated
	Failure string // why authentication failed (in testing mode, where it does not stop delivery)
	// PassivePKIX: where nothing was required, the certificate would still
	// have passed PKIX; the downgrade memory learns from it.
	PassivePKIX bool
}

// ClientConfig is the TLS configuration that enforces d for host; the
// Verification it returns is filled in during the handshake.
func (d Decision) ClientConfig(host string) (*tls.Config, *Verification) {
	v := &Verification{}
	cfg := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12, InsecureSkipVerify: true}
	if d.SNI != "" {
		cfg.ServerName = d.SNI
	}
	if d.MinVersion != 0 {
		cfg.MinVersion = d.MinVersion
	}
	if d.ClientCertificate != nil {
		cert := d.ClientCertificate
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	names := d.Names
	if len(names) == 0 {
		names = []string{host}
	}
	switch {
	case d.Level == Verify && len(d.TLSA) > 0:
		// InsecureSkipVerify only turns off Go's own check, which knows
		// nothing of DANE; VerifyConnection does the real one.
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			method, err := verifyDANE(cs.PeerCertificates, d.TLSA, names)
			if d.Pinned && method != "" {
				method = "pinned-key"
			}
			v.Method = method
			if err != nil {
				v.Failure = err.Error()
			}
			return err
		}
	case d.Level == Verify:
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			err := verifyPKIX(cs.PeerCertificates, d.Roots, names)
			if err == nil {
				v.Method = "PKIX"
			} else {
				v.Failure = err.Error()
			}
			return err
		}
	case d.Testing:
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if err := verifyPKIX(cs.PeerCertificates, d.Roots, names); err != nil {
				v.Failure = err.Error()
			} else {
				v.Method = "PKIX"
			}
			return nil
		}
	default:
		if d.Level == May && d.MinVersion == 0 {
			// Opportunistic TLS takes what the server has: anything is
			// better than the cleartext it would otherwise be (RFC 7435 3).
			cfg.MinVersion = tls.VersionTLS10
		}
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			v.PassivePKIX = verifyPKIX(cs.PeerCertificates, d.Roots, names) == nil
			return nil
		}
	}
	return cfg, v
}

// ResultType names a failed handshake under d as RFC 8460 4.3.2 does.
func ResultType(err error, d Decision) string {
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var unknown x509.UnknownAuthorityError
	switch {
	case d.Level == Verify && len(d.TLSA) > 0:
		return "tlsa-invalid"
	case errors.As(err, &hostErr):
		return "certificate-host-mismatch"
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "certificate-expired"
	case errors.As(err, &unknown):
		return "certificate-not-trusted"
	}
	return "validation-failure"
}

// verifyPKIX checks the chain against roots and the leaf against any of names.
func verifyPKIX(chain []*x509.Certificate, roots *x509.CertPool, names []string) error {
	if len(chain) == 0 {
		return errors.New("no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	var firstErr error
	for _, name := range names {
		_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: strings.TrimSuffix(name, ".")})
		if err == nil {
			return nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return fmt.Errorf("certificate not valid for %s: %w", strings.Join(names, " or "), firstErr)
}

// verifyDANE accepts the chain when a usable TLSA record matches (RFC 7672
// 3.1): DANE-EE(3) matches the leaf, with neither names nor dates checked;
// DANE-TA(2) matches a certificate the server sent, which must then issue
// the leaf for one of names.
func verifyDANE(chain []*x509.Certificate, tlsa []*dns.TLSA, names []string) (string, error) {
	if len(chain) == 0 {
		return "", errors.New("no certificate")
	}
	var taErr error
	for _, r := range tlsa {
		switch r.Usage {
		case 3:
			if r.Verify(chain[0]) == nil {
				return "DANE-EE", nil
			}
		case 2:
			for i, c := range chain[1:] {
				if r.Verify(c) != nil {
					continue
				}
				anchor := x509.NewCertPool()
				anchor.AddCert(c)
				if err := verifyPKIX(chain[:i+1], anchor, names); err != nil {
					taErr = err
					continue
				}
				return "DANE-TA", nil
			}
		}
	}
	if taErr != nil {
		return "", fmt.Errorf("DANE-TA trust anchor found, but %w", taErr)
	}
	return "", errors.New("no TLSA record matches the certificate chain")
}

// Usable keeps the TLSA records RFC 7672 3.1 lets SMTP use: DANE-TA(2) and
// DANE-EE(3), with selector 0 or 1 and matching type 0, 1 or 2.
func Usable(records []*dns.TLSA) []*dns.TLSA {
	var out []*dns.TLSA
	for _, r := range records {
		if (r.Usage == 2 || r.Usage == 3) && r.Selector <= 1 && r.MatchingType <= 2 {
			out = append(out, r)
		}
	}
	return out
}

// Request is one question to a Policy.
type Request struct {
	Domain      string // the recipient domain
	MXHost      string // the host about to be connected to
	Port        int    // its SMTP port (the TLSA records are at _PORT._tcp.host)
	RequireTLS  bool   // the message carries REQUIRETLS (RFC 8689)
	TLSOptional bool   // the message has "TLS-Required: No"
	// Report marks a TLS report's own delivery, which is not held to the
	// recipient's published policies (RFC 8460 3).
	Report bool
	// Route marks a configured next hop (a smarthost): the recipient's
	// DANE and MTA-STS policies describe its MX hosts, not this host.
	Route bool
}

// Policy decides for a recipient domain and one of its MX hosts. An error
// means this host must not be used; a *Refusal says whether to wait or fail.
type Policy interface {
	Decide(ctx context.Context, r Request) (Decision, error)
}

// Observer learns how each delivery to a domain was protected.
type Observer interface {
	Observe(ctx context.Context, domain string, seen Seen)
}

// Refusal is a policy's "do not deliver to this host", with the enhanced
// status code to report.
type Refusal struct {
	Permanent  bool
	Enhanced   string // 4.7.x or 5.7.x
	Reason     string
	ResultType string // RFC 8460 4.3.2, when the refusal is a TLS policy failure
	// PolicyType and PolicyStrings name the policy that refused, for TLS reports.
	PolicyType    string
	PolicyStrings []string
}

func (r *Refusal) Error() string { return r.Reason }

// Fixed decides the same for every destination.
type Fixed struct {
	Level Level
	Roots *x509.CertPool
}

func (f Fixed) Decide(context.Context, Request) (Decision, error) {
	return Decision{Level: f.Level, Source: "default", Roots: f.Roots, PolicyType: "no-policy-found"}, nil
}
