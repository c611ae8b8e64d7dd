package interop

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"path/filepath"
	"time"
)

// testCA is the private PKI of the suite: Postern trusts it through
// tls.ca_file (for verify), and DANE-TA records name it.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // PEM, written by writeFiles
}

func newTestCA() (*testCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Postern interop test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(48 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key}, err
}

func (ca *testCA) writeFiles(dir string) error {
	ca.file = filepath.Join(dir, "ca.pem")
	return writeFile(ca.file, pemCert(ca.cert.Raw), 0o644)
}

// leaf is a server certificate and its files: the key, and the chain
// (leaf then CA: DANE-TA needs the trust anchor in the chain, RFC 7671 5.2.2).
type leaf struct {
	cert      *x509.Certificate
	keyFile   string
	certFile  string // the leaf alone
	chainFile string // leaf + CA
}

func (ca *testCA) issue(dir, name string, dnsNames []string) (*leaf, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: dnsNames[0]},
		DNSNames:     dnsNames,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(48 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	l := &leaf{
		cert:      cert,
		keyFile:   filepath.Join(dir, name+".key"),
		certFile:  filepath.Join(dir, name+".crt"),
		chainFile: filepath.Join(dir, name+".chain"),
	}
	// OpenSMTPD refuses a key that others can read; an MTA that reads it
	// as its own user is given it by group (see startExim).
	if err := writeFile(l.keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})), 0o600); err != nil {
		return nil, err
	}
	if err := writeFile(l.certFile, pemCert(der), 0o644); err != nil {
		return nil, err
	}
	return l, writeFile(l.chainFile, pemCert(der)+pemCert(ca.cert.Raw), 0o644)
}

func pemCert(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// spkiSHA256 is the association data of a "3 1 1" TLSA record.
func spkiSHA256(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// certSHA256 is the association data of a "2 0 1" TLSA record.
func certSHA256(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}
