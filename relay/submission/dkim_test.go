package submission

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	msgauth "github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/relay/dkim"
)

// Messages are signed as they are queued, with every key of the From
// domain, and the signatures verify against the published records.
func TestDKIMSignsAtSubmission(t *testing.T) {
	dir := t.TempDir()
	records := map[string]string{}
	var keys []dkim.Key
	for _, k := range []struct{ selector, algorithm string }{{"rsa2026", "rsa"}, {"ed2026", "ed25519"}} {
		pemKey, record, err := dkim.Generate("example.org", k.selector, k.algorithm, 2048)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, k.selector+".pem")
		os.WriteFile(path, pemKey, 0o600)
		key, err := dkim.LoadKey("example.org", k.selector, path)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, key)
		records[k.selector+"._domainkey.example.org"] = txtValue(record)
	}
	h := newHarness(t)
	h.srv.dkim = dkim.New(keys, nil)

	c, err := smtp.DialStartTLS(h.starttls, clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", testUser, testPassword)); err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail("app@example.org", []string{"a@dest.test"}, strings.NewReader(sample)); err != nil {
		t.Fatal(err)
	}
	_, body := h.only()
	if !bytes.HasPrefix(body, []byte("DKIM-Signature: ")) {
		t.Fatalf("not signed first:\n%s", body[:200])
	}
	verifications, err := msgauth.VerifyWithOptions(bytes.NewReader(body), &msgauth.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) { return []string{records[name]}, nil },
	})
	if err != nil || len(verifications) != 2 {
		t.Fatalf("%d verifications, %v", len(verifications), err)
	}
	for _, v := range verifications {
		if v.Err != nil || v.Domain != "example.org" {
			t.Errorf("signature of %s: %v", v.Domain, v.Err)
		}
	}
	// Tampering with the body breaks the signatures: they are real.
	forged := bytes.Replace(body, []byte("Body line 1"), []byte("Body line 2"), 1)
	verifications, _ = msgauth.VerifyWithOptions(bytes.NewReader(forged), &msgauth.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) { return []string{records[name]}, nil },
	})
	for _, v := range verifications {
		if v.Err == nil {
			t.Error("a changed body still verifies")
		}
	}
}

// txtValue joins the strings of a zone-file TXT record.
func txtValue(record string) string {
	_, rest, _ := strings.Cut(record, "( ")
	rest = strings.TrimSuffix(rest, " )")
	return strings.ReplaceAll(strings.ReplaceAll(rest, `" "`, ""), `"`, "")
}
