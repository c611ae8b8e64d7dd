package dkim

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeysAndRecords(t *testing.T) {
	dir := t.TempDir()
	pemKey, record, err := Generate("example.org", "s1", "rsa", 2048)
	if err != nil {
		t.Fatal(err)
	}
	// A 2048-bit key does not fit in one 255-octet string: the record is split.
	if !strings.HasPrefix(record, `s1._domainkey.example.org. IN TXT ( "v=DKIM1; k=rsa; p=`) || strings.Count(record, `"`) < 4 {
		t.Fatalf("record: %s", record)
	}
	path := filepath.Join(dir, "k.pem")
	os.WriteFile(path, pemKey, 0o600)
	key, err := LoadKey("example.org", "s1", path)
	if err != nil {
		t.Fatal(err)
	}
	s := New([]Key{key}, nil)
	if len(s.Keys("example.org")) != 1 || len(s.Keys("mail.Example.ORG.")) != 1 || len(s.Keys("other.org")) != 0 {
		t.Fatal("key selection by domain and parent domain")
	}
	var none *Signer
	if none.Keys("example.org") != nil {
		t.Fatal("a nil signer has keys")
	}
	// RFC 8301: no RSA key under 2048 bits.
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	der, _ := x509.MarshalPKCS8PrivateKey(small)
	os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	if _, err := LoadKey("example.org", "s1", path); err == nil || !strings.Contains(err.Error(), "2048") {
		t.Fatalf("1024-bit key: %v", err)
	}
	if _, _, err := Generate("example.org", "s1", "dsa", 0); err == nil {
		t.Fatal("unknown algorithm accepted")
	}
}
