// Package dkim signs outbound mail (RFC 6376, RFC 8463) with the keys the
// operator configures per sender domain, as the message is queued, so that
// every retry sends the same signature. emersion/go-msgauth does the
// cryptography and canonicalisation; this package picks keys, loads and
// makes them, and streams the message through one signer per key.
package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/postern/postern/internal/mailname"
)

// DefaultHeaders are signed when present; From is listed twice so that a
// second From added on the way breaks the signature (oversigning).
var DefaultHeaders = []string{
	"From", "From", "Reply-To", "Subject", "Date", "To", "Cc", "In-Reply-To", "References", "Message-ID",
	"MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Resent-Date", "Resent-From", "Resent-To",
	"Resent-Cc", "List-Id", "List-Help", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Post",
	"List-Owner", "List-Archive", "TLS-Required",
}

// Key is one signing key of a domain.
type Key struct {
	Domain   string
	Selector string
	Signer   crypto.Signer
}

// Signer holds the configured keys.
type Signer struct {
	keys    map[string][]Key
	headers []string
}

// New returns a signer for keys; headers nil means DefaultHeaders.
func New(keys []Key, headers []string) *Signer {
	if headers == nil {
		headers = DefaultHeaders
	}
	s := &Signer{keys: map[string][]Key{}, headers: headers}
	for _, k := range keys {
		d := mailname.Normalize(k.Domain)
		s.keys[d] = append(s.keys[d], k)
	}
	return s
}

// Keys returns the keys that sign mail from domain: its own, or else
// those of the nearest parent domain that has some (relaxed DMARC
// alignment accepts a parent's signature).
func (s *Signer) Keys(domain string) []Key {
	if s == nil {
		return nil
	}
	d := mailname.Normalize(domain)
	for d != "" {
		if k := s.keys[d]; len(k) > 0 {
			return k
		}
		_, d, _ = strings.Cut(d, ".")
	}
	return nil
}

// Session signs one message: write the whole message to it, then Finish
// returns the DKIM-Signature header fields to put in front. Close releases
// it when the message is abandoned.
type Session struct {
	signers []*dkim.Signer
	w       io.Writer
	closed  bool
}

// Start begins signing with keys (from Keys); nil when there are none.
func (s *Signer) Start(keys []Key) (*Session, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	sess := &Session{}
	var ws []io.Writer
	for _, k := range keys {
		sg, err := dkim.NewSigner(&dkim.SignOptions{
			Domain: k.Domain, Selector: k.Selector, Signer: k.Signer,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
			HeaderKeys: s.headers,
		})
		if err != nil {
			sess.Close()
			return nil, fmt.Errorf("dkim key %s._domainkey.%s: %w", k.Selector, k.Domain, err)
		}
		sess.signers = append(sess.signers, sg)
		ws = append(ws, sg)
	}
	sess.w = io.MultiWriter(ws...)
	return sess, nil
}

func (s *Session) Write(p []byte) (int, error) { return s.w.Write(p) }

// Finish ends the message and returns the signature header fields.
func (s *Session) Finish() ([]byte, error) {
	s.closed = true
	var out []byte
	var errs []error
	for _, sg := range s.signers {
		if err := sg.Close(); err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, sg.Signature()...)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("dkim: %w", err)
	}
	return out, nil
}

// Close abandons the session (a no-op after Finish).
func (s *Session) Close() {
	if s.closed {
		return
	}
	s.closed = true
	for _, sg := range s.signers {
		sg.Close()
	}
}

// LoadKey reads a PEM private key (PKCS #8, or PKCS #1 for RSA): RSA of at
// least 2048 bits, or Ed25519.
func LoadKey(domain, selector, path string) (Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Key{}, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return Key{}, fmt.Errorf("%s: no PEM block", path)
	}
	var key any
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return Key{}, fmt.Errorf("%s: %w", path, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 2048 {
			return Key{}, fmt.Errorf("%s: RSA key of %d bits; DKIM needs at least 2048 (RFC 8301)", path, k.N.BitLen())
		}
		return Key{Domain: domain, Selector: selector, Signer: k}, nil
	case ed25519.PrivateKey:
		return Key{Domain: domain, Selector: selector, Signer: k}, nil
	}
	return Key{}, fmt.Errorf("%s: a %T is neither RSA nor Ed25519", path, key)
}

// Generate makes a key ("rsa" with bits, or "ed25519") and returns it as
// PKCS #8 PEM, with the TXT record to publish at SELECTOR._domainkey.DOMAIN.
func Generate(domain, selector, algorithm string, bits int) (pemKey []byte, record string, err error) {
	var priv crypto.Signer
	var k string
	switch algorithm {
	case "rsa":
		if bits < 2048 {
			return nil, "", fmt.Errorf("RSA keys need at least 2048 bits (RFC 8301)")
		}
		priv, err = rsa.GenerateKey(rand.Reader, bits)
		k = "rsa"
	case "ed25519":
		_, priv, err = ed25519.GenerateKey(rand.Reader)
		k = "ed25519"
	default:
		return nil, "", fmt.Errorf("algorithm %q: use rsa or ed25519", algorithm)
	}
	if err != nil {
		return nil, "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, "", err
	}
	var pub []byte
	switch p := priv.Public().(type) {
	case *rsa.PublicKey:
		pub, err = x509.MarshalPKIXPublicKey(p)
	case ed25519.PublicKey:
		pub = p // RFC 8463 3: the raw 32-byte key
	}
	if err != nil {
		return nil, "", err
	}
	value := fmt.Sprintf("v=DKIM1; k=%s; p=%s", k, base64.StdEncoding.EncodeToString(pub))
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), TXTRecord(domain, selector, value), nil
}

// TXTRecord renders value as a zone-file TXT record, split into strings
// of at most 255 octets as DNS requires.
func TXTRecord(domain, selector, value string) string {
	var parts []string
	for len(value) > 255 {
		parts = append(parts, `"`+value[:255]+`"`)
		value = value[255:]
	}
	parts = append(parts, `"`+value+`"`)
	return fmt.Sprintf("%s._domainkey.%s. IN TXT ( %s )", selector, strings.TrimSuffix(domain, "."), strings.Join(parts, " "))
}
