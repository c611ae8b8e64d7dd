// Package tlstest makes certificate authorities and certificates for tests:
// a root, intermediates, and leaves for any names, so that PKIX, DANE-EE and
// DANE-TA checks can be exercised against real handshakes.
//
// It is a thin wrapper over internal/lab, which `postern demo` shares.
package tlstest

import (
	"crypto/tls"
	"crypto/x509"
	"testing"

	"github.com/postern/postern/internal/lab"
)

// CA is a certificate authority.
type CA struct {
	Cert *x509.Certificate

	ca *lab.CA
}

// NewCA returns a self-signed root CA.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	ca, err := lab.NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: ca.Cert, ca: ca}
}

// Intermediate returns a CA issued by ca.
func (ca *CA) Intermediate(t testing.TB, name string) *CA {
	t.Helper()
	in, err := ca.ca.Intermediate(name)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: in.Cert, ca: in}
}

// Pool returns a pool with the root of ca's chain.
func (ca *CA) Pool() *x509.CertPool { return ca.ca.Pool() }

// Leaf issues a server certificate for names (DNS names or IP addresses),
// with the chain up to, but not including, the root. expired makes it one
// that ended yesterday.
func (ca *CA) Leaf(t testing.TB, expired bool, names ...string) tls.Certificate {
	t.Helper()
	leaf, err := ca.ca.Leaf(expired, names...)
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}
