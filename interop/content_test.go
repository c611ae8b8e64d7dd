package interop

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// offers reports whether a receiver advertises an SMTP extension (asked
// on its address without STARTTLS, which advertises the same).
func (r *receiver) offers(ext string) (bool, error) {
	c, err := smtp.Dial(r.plainIP + ":25")
	if err != nil {
		return false, err
	}
	defer c.Close()
	if err := c.Hello("probe.interop.test"); err != nil {
		return false, err
	}
	ok, _ := c.Extension(ext)
	return ok, c.Quit()
}

// deliverableDomain is the receiver's domain that gets mail: under may,
// or its address without STARTTLS where its own TLS is broken.
func (r *receiver) deliverableDomain() string {
	if r.brokenTLS != "" {
		return r.domain("may-no-tls")
	}
	return r.domain("may")
}

// TestContentPerReceiver: through each receiving MTA, an 8-bit body
// (BODY=8BITMIME), a UTF-8 address and header (SMTPUTF8, where the
// receiver offers it; where it does not, Postern must not downgrade:
// RFC 6531 3.4 makes that a 5.6.7 bounce), and a 10 MB message, each
// arriving with a byte-identical body.
func TestContentPerReceiver(t *testing.T) {
	w := needWorld(t)
	big := bytes.Repeat([]byte(strings.Repeat("0123456789abcdef", 4)+"ABCDEFGHIJKL\r\n"), 10<<20/78+1)
	type sendCase struct {
		r      *receiver
		name   string
		s      sent
		bounce bool // the expected outcome is a 5.6.7 bounce
	}
	var sends []*sendCase
	for _, r := range w.receivers {
		utf8, err := r.offers("SMTPUTF8")
		if err != nil {
			t.Fatalf("%s: EHLO: %v", r.name, err)
		}
		mime8, err := r.offers("8BITMIME")
		if err != nil || !mime8 {
			t.Fatalf("%s: does not offer 8BITMIME (%v): the suite assumes every receiver does", r.name, err)
		}
		t.Logf("%s offers 8BITMIME, SMTPUTF8=%v", r.name, utf8)
		domain := r.deliverableDomain()
		mk := func(name, rcpt, headers string, body []byte) *sendCase {
			tok := token(r.name + "-" + name)
			var b bytes.Buffer
			fmt.Fprintf(&b, "From: Alice <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s@sender.test>\r\n%s\r\ntoken %s\r\n", senderAddr, rcpt, tok, tok, headers, tok)
			b.Write(body)
			s := sent{label: name, rcpt: rcpt, tok: tok, content: b.Bytes()}
			var err error
			if s.id, err = w.postern.submit(senderAddr, []string{rcpt}, s.content); err != nil {
				t.Fatalf("%s %s: submit: %v", r.name, name, err)
			}
			return &sendCase{r: r, name: name, s: s}
		}
		sends = append(sends,
			mk("8bitmime", "bob@"+domain, "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
				[]byte("Grüße aus Köln. Ünïcödé in the body, 8-bit, not encoded: 東京\r\n")),
			mk("10mb", "bob@"+domain, "", big))
		c := mk("smtputf8", "bøb@"+domain, "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\nX-Greeting: Grüße\r\n",
			[]byte("UTF-8 address and header.\r\n"))
		c.bounce = !utf8
		sends = append(sends, c)
	}
	for _, c := range sends {
		t.Run(c.r.name+"/"+c.name, func(t *testing.T) {
			t.Parallel()
			if c.bounce {
				// The notice to the sender names the status.
				deadline := time.Now().Add(30 * time.Second)
				for time.Now().Before(deadline) {
					for _, m := range w.sink.all(c.s.tok) {
						if m.from == "" && bytes.Contains(m.data, []byte("Status: 5.6.7")) {
							t.Logf("not offered: bounced 5.6.7 as RFC 6531 3.4 requires")
							return
						}
						if m.from != "" {
							t.Fatal("delivered to a receiver that does not offer SMTPUTF8")
						}
					}
					time.Sleep(100 * time.Millisecond)
				}
				t.Fatal("no 5.6.7 bounce")
			}
			var m sunk
			deadline := time.Now().Add(60 * time.Second)
			for found := false; !found; {
				for _, x := range w.sink.all(c.s.tok) {
					if x.from != "" {
						m, found = x, true
					}
				}
				if time.Now().After(deadline) {
					msg, _ := w.postern.message(c.s.id)
					t.Fatalf("never arrived; queue: %+v", msg)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if got, want := sum(bodyOf(m.data)), sum(bodyOf(c.s.content)); got != want || len(bodyOf(m.data)) != len(bodyOf(c.s.content)) {
				t.Fatalf("body changed: %d bytes sha256 %s, sent %d bytes %s", len(bodyOf(m.data)), got, len(bodyOf(c.s.content)), want)
			}
			if c.name == "smtputf8" && (!m.utf8 || !bytes.Contains(m.data, []byte("X-Greeting: Grüße"))) {
				t.Errorf("SMTPUTF8 lost on the way (utf8=%v)", m.utf8)
			}
		})
	}
}
