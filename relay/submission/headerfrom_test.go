package submission

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/dkim"
)

// The header From and Sender of a restricted user's message must be
// addresses the user may send as, however the header is written: the
// attacker's ways of hiding a second identity in it are each refused at the
// end of DATA with 550 5.7.1, and the honest ways of writing one's own
// address pass. The user "app" may send as *@example.org; "idn" as
// *@xn--bcher-kva.example (bücher.example).
func TestHeaderFromMustBeTheUsers(t *testing.T) {
	h := newHarness(t)
	if err := h.users.Add("idn", testPassword, []string{"*@xn--bcher-kva.example"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, user, from, header string
		want                     string // reply prefix at the end of DATA
	}{
		{"own address", "app", "app@example.org", "From: App <app@example.org>", "250"},
		{"another domain", "app", "app@example.org", "From: ceo@bank.example", "550 5.7.1"},
		{"another domain, display name of one's own", "app", "app@example.org", `From: "app@example.org" <ceo@bank.example>`, "550 5.7.1"},
		{"case of field name and address", "app", "app@example.org", "fROM: App <APP@Example.ORG>", "250"},
		{"case does not hide a foreign domain", "app", "app@example.org", "FROM: CEO@BANK.EXAMPLE", "550 5.7.1"},
		{"second From field", "app", "app@example.org", "From: app@example.org\r\nFrom: ceo@bank.example", "550 5.7.1"},
		{"second From field, both own", "app", "app@example.org", "From: app@example.org\r\nFrom: b@example.org", "550 5.7.1"},
		{"several addresses, one foreign", "app", "app@example.org", "From: app@example.org, ceo@bank.example", "550 5.7.1"},
		{"several addresses, all own", "app", "app@example.org", "From: app@example.org, b@example.org\r\nSender: app@example.org", "250"},
		{"group with a foreign member", "app", "app@example.org", "From: staff: app@example.org, ceo@bank.example;", "550 5.7.1"},
		{"empty group", "app", "app@example.org", "From: undisclosed-recipients:;", "550 5.7.1"},
		{"empty field", "app", "app@example.org", "From: ", "550 5.7.1"},
		{"encoded word in the display name", "app", "app@example.org", "From: =?utf-8?q?app=40example.org?= <ceo@bank.example>", "550 5.7.1"},
		{"encoded word as the address", "app", "app@example.org", "From: =?utf-8?q?ceo=40bank.example?=", "550 5.7.1"},
		{"own address in a comment", "app", "app@example.org", "From: (app@example.org) ceo@bank.example", "550 5.7.1"},
		{"foreign address in a comment", "app", "app@example.org", "From: app@example.org (ceo@bank.example)", "250"},
		{"folded field hides a second address", "app", "app@example.org", "From: app@example.org,\r\n ceo@bank.example", "550 5.7.1"},
		{"folded field, own address", "app", "app@example.org", "From:\r\n\tApp\r\n <app@example.org>", "250"},
		{"white space before the colon (obsolete syntax)", "app", "app@example.org", "From : ceo@bank.example", "550 5.7.1"},
		{"source route (obsolete syntax)", "app", "app@example.org", "From: <@example.org:ceo@bank.example>", "550 5.7.1"},
		{"address and angle address run together", "app", "app@example.org", "From: app@example.org <ceo@bank.example>", "550 5.7.1"},
		{"quoted local part naming a foreign address", "app", "app@example.org", `From: "app@example.org"@bank.example`, "550 5.7.1"},
		{"quoted local part, own domain", "app", "app@example.org", `From: "ceo@bank.example"@example.org`, "250"},
		{"foreign Sender", "app", "app@example.org", "From: app@example.org\r\nSender: ceo@bank.example", "550 5.7.1"},
		{"two Sender fields", "app", "app@example.org", "From: app@example.org\r\nSender: app@example.org\r\nSender: b@example.org", "550 5.7.1"},
		{"look-alike domain (IDN homograph)", "app", "app@example.org", "From: app@exаmple.org", "550 5.7.1"},
		{"IDN domain in U-labels", "idn", "a@xn--bcher-kva.example", "From: a@bücher.example", "250"},
		{"IDN domain in A-labels", "idn", "a@xn--bcher-kva.example", "From: a@XN--BCHER-KVA.example", "250"},
		{"IDN user, a different domain", "idn", "a@xn--bcher-kva.example", "From: a@bucher.example", "550 5.7.1"},
		{"no From field names no one", "app", "app@example.org", "To: a@dest.test", "250"},
		{"unrestricted user", "free", "app@example.org", "From: ceo@bank.example", "250"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.loggedIn(tc.user)
			r.expect("MAIL FROM:<"+tc.from+"> SMTPUTF8", "250")
			r.expect("RCPT TO:<a@dest.test>", "250")
			got := r.sendData(tc.header + "\r\nSubject: t\r\n\r\nbody\r\n.\r\n")
			if !strings.HasPrefix(got, tc.want) {
				t.Fatalf("header %q: got %q, want %q", tc.header, got, tc.want)
			}
			r.expect("QUIT", "221")
		})
	}
}

// With the check off (for every user, or for one), the message is accepted,
// but DKIM never signs for a From domain the user may not send as: the
// envelope sender's domain signs instead.
func TestForeignHeaderFromNeverGetsItsDomainsKey(t *testing.T) {
	var keys []dkim.Key
	records := map[string]string{}
	dir := t.TempDir()
	for _, domain := range []string{"example.org", "bank.example"} {
		pemKey, record, err := dkim.Generate(domain, "s1", "ed25519", 0)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, domain+".pem")
		os.WriteFile(path, pemKey, 0o600)
		key, err := dkim.LoadKey(domain, "s1", path)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, key)
		records["s1._domainkey."+domain] = txtValue(record)
	}
	signedBy := func(t *testing.T, body []byte) []string {
		vs, err := msgauth.VerifyWithOptions(bytes.NewReader(body), &msgauth.VerifyOptions{
			LookupTXT: func(name string) ([]string, error) { return []string{records[name]}, nil },
		})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, v := range vs {
			if v.Err == nil {
				out = append(out, v.Domain)
			}
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		opts   []harnessOption
		exempt bool
		header string
		want   string // the one domain that signs
	}{
		{"check off for everyone", []harnessOption{func(c *Config, _ *auth.Limits) { c.AnyHeaderFrom = true }}, false, "From: ceo@bank.example", "example.org"},
		{"user exempt", nil, true, "From: ceo@bank.example", "example.org"},
		{"user exempt, own and foreign From", nil, true, "From: app@example.org, ceo@bank.example", "example.org"},
		{"user exempt, own From", nil, true, "From: b@example.org", "example.org"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.opts...)
			h.srv.dkim = dkim.New(keys, nil)
			if tc.exempt {
				if err := h.users.SetAnyHeaderFrom(testUser, true); err != nil {
					t.Fatal(err)
				}
			}
			r := h.inTransaction(testUser)
			if got := r.sendData(tc.header + "\r\nSubject: t\r\n\r\nbody\r\n.\r\n"); !strings.HasPrefix(got, "250") {
				t.Fatalf("got %q", got)
			}
			_, body := h.only()
			if got := signedBy(t, body); len(got) != 1 || got[0] != tc.want {
				t.Fatalf("signed by %v, want only %s", got, tc.want)
			}
		})
	}
}

// BDAT carries the same header as DATA: a foreign From split over chunks,
// folded across the chunk boundary, is refused and nothing is queued.
func TestHeaderFromOverBDAT(t *testing.T) {
	h := newHarness(t)
	r := h.inTransaction(testUser)
	part1, part2 := "Subject: chunks\r\nFrom: app@example.org,\r\n", " ceo@bank.example\r\n\r\nbody\r\n"
	fmt.Fprintf(r.conn, "BDAT %d\r\n%s", len(part1), part1)
	r.expect("", "250")
	fmt.Fprintf(r.conn, "BDAT %d LAST\r\n%s", len(part2), part2)
	r.expect("", "550 5.7.1 Message refused: From address ceo@bank.example")
	if n := h.count(); n != 0 {
		t.Fatalf("%d messages queued", n)
	}
	r.expect("MAIL FROM:<app@example.org>", "250")
}
