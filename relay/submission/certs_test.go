package submission

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func writePair(t *testing.T, certFile, keyFile, host string, mtime time.Time) {
	t.Helper()
	cert, err := SelfSigned(host)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(cert.PrivateKey.(*ecdsa.PrivateKey))
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	os.Chtimes(certFile, mtime, mtime)
	os.Chtimes(keyFile, mtime, mtime)
}

func servedName(t *testing.T, c *Certificates) string {
	t.Helper()
	cert, _ := c.GetCertificate(nil)
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.Subject.CommonName
}

func TestCertificateRotation(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	base := time.Now().Add(-time.Hour)
	writePair(t, certFile, keyFile, "old.test", base)
	c, err := NewCertificates(certFile, keyFile, "relay.test", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if got := servedName(t, c); got != "old.test" {
		t.Fatalf("serving %s", got)
	}
	if changed, err := c.Reload(); changed || err != nil {
		t.Fatalf("unchanged files reloaded: %v %v", changed, err)
	}
	writePair(t, certFile, keyFile, "new.test", base.Add(time.Minute))
	if changed, err := c.Reload(); !changed || err != nil {
		t.Fatalf("rotation not picked up: %v %v", changed, err)
	}
	if got := servedName(t, c); got != "new.test" {
		t.Fatalf("after rotation serving %s", got)
	}
	// A broken pair mid-rotation is refused and the current one kept.
	os.WriteFile(keyFile, []byte("not a key"), 0o600)
	if _, err := c.Reload(); err == nil {
		t.Fatal("broken key accepted")
	}
	if got := servedName(t, c); got != "new.test" {
		t.Fatalf("after a failed reload serving %s", got)
	}
	if _, err := NewCertificates(certFile, keyFile, "relay.test", slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		t.Fatal("start with a broken key succeeded")
	}
}
