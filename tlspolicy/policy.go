// Package tlspolicy decides how strong the TLS of a delivery must be; the
// delivery code enforces the decision on the wire. Today's policies are the
// operator's (a default level, and a level per route); DANE, MTA-STS and
// per-domain local policy come next and plug in behind the same Policy.
package tlspolicy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
)

// Level is how much TLS a connection needs, weakest first.
type Level uint8

const (
	None    Level = iota // no TLS, even if offered
	May                  // STARTTLS when offered, certificate not checked (RFC 7435)
	Encrypt              // TLS required, any certificate
	Verify               // TLS required with a PKIX-valid certificate for the host name
)

var names = [...]string{"none", "may", "encrypt", "verify"}

func (l Level) String() string { return names[l] }

// ParseLevel reads a level's name.
func ParseLevel(s string) (Level, error) {
	for i, n := range names {
		if s == n {
			return Level(i), nil
		}
	}
	return 0, fmt.Errorf("%q: use none, may, encrypt or verify", s)
}

// Decision is what a connection to one MX host must satisfy.
type Decision struct {
	Level  Level
	Source string         // where the decision came from: "default", "route"
	Roots  *x509.CertPool // for Verify; nil means the system roots
}

// Required reports whether delivery must stop when TLS cannot be had.
func (d Decision) Required() bool { return d.Level >= Encrypt }

// ClientConfig is the TLS configuration that enforces d for host.
func (d Decision) ClientConfig(host string) *tls.Config {
	cfg := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	switch d.Level {
	case Verify:
		cfg.RootCAs = d.Roots
	case May:
		// Opportunistic TLS takes what the server has: anything is better
		// than the cleartext it would otherwise be (RFC 7435 3).
		cfg.InsecureSkipVerify = true
		cfg.MinVersion = tls.VersionTLS10
	default:
		cfg.InsecureSkipVerify = true
	}
	return cfg
}

// Policy decides for a recipient domain and one of its MX hosts.
type Policy interface {
	Decide(ctx context.Context, domain, mxHost string) (Decision, error)
}

// Fixed decides the same for every destination.
type Fixed struct {
	Level Level
	Roots *x509.CertPool
}

func (f Fixed) Decide(context.Context, string, string) (Decision, error) {
	return Decision{Level: f.Level, Source: "default", Roots: f.Roots}, nil
}
