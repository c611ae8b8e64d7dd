// Package tlstest makes certificate authorities and certificates for tests:
// a root, intermediates, and leaves for any names, so that PKIX, DANE-EE and
// DANE-TA checks can be exercised against real handshakes.
package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"
)

// CA is a certificate authority; Chain holds it and its issuers, leaf-first
// order excluded (the root last).
type CA struct {
	Cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	chain []*x509.Certificate // this CA up to the root
}

// NewCA returns a self-signed root CA.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	return issueCA(t, name, nil)
}

// Intermediate returns a CA issued by ca.
func (ca *CA) Intermediate(t testing.TB, name string) *CA {
	t.Helper()
	return issueCA(t, name, ca)
}

func issueCA(t testing.TB, name string, parent *CA) *CA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	issuer, signer := tmpl, key
	if parent != nil {
		issuer, signer = parent.Cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &CA{Cert: cert, key: key, chain: []*x509.Certificate{cert}}
	if parent != nil {
		ca.chain = append(ca.chain, parent.chain...)
	}
	return ca
}

// Pool returns a pool with the root of ca's chain.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.chain[len(ca.chain)-1])
	return p
}

// Leaf issues a server certificate for names (DNS names or IP addresses),
// with the chain up to, but not including, the root. expired makes it one
// that ended yesterday.
func (ca *CA) Leaf(t testing.TB, expired bool, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t), Subject: pkix.Name{CommonName: names[0]},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if expired {
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	out := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	for _, c := range ca.chain[:len(ca.chain)-1] {
		out.Certificate = append(out.Certificate, c.Raw)
	}
	if len(ca.chain) == 1 {
		// A root-issued leaf: send the root too, as DANE-TA(2) servers must.
		out.Certificate = append(out.Certificate, ca.Cert.Raw)
	}
	return out
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
