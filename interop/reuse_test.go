package interop

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// postfixQueueID is the queue ID Postfix wrote into its Received field.
var postfixQueueID = regexp.MustCompile(`\(Postfix\) with ESMTPS? id ([0-9A-F]+)`)

// TestConnectionReuseAcrossDomains: two messages for two recipient
// domains whose MX is the same Postfix host travel over one SMTP session
// (RSET between them, no second connection, no repeated EHLO); Postfix's
// log shows both received by the same smtpd process with no new
// connection in between.
func TestConnectionReuseAcrossDomains(t *testing.T) {
	w := needWorld(t)
	pf := w.receivers[0]
	var qids []string
	for _, domain := range []string{pf.domain("may"), pf.reuseDomain()} {
		s := w.send(t, "reuse", "bob@"+domain, "")
		m, ok := w.sink.find(s.tok, 30*time.Second)
		if !ok {
			t.Fatalf("%s: never arrived", domain)
		}
		id := postfixQueueID.FindSubmatch(m.data)
		if id == nil {
			t.Fatalf("no Postfix queue ID in\n%s", headerOf(m.data))
		}
		qids = append(qids, string(id[1]))
	}
	log, err := os.ReadFile(pf.proc.log)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(log), "\n")
	find := func(qid string) (int, string) {
		re := regexp.MustCompile(`postfix/smtpd\[(\d+)\]: ` + qid + `: client=`)
		for i, l := range lines {
			if m := re.FindStringSubmatch(l); m != nil {
				return i, m[1]
			}
		}
		t.Fatalf("Postfix's log does not show %s received:\n%s", qid, pf.proc.tail())
		return 0, ""
	}
	i1, pid1 := find(qids[0])
	i2, pid2 := find(qids[1])
	if pid1 != pid2 {
		t.Fatalf("received by smtpd %s and %s: two connections", pid1, pid2)
	}
	for _, l := range lines[i1:i2] {
		if strings.Contains(l, fmt.Sprintf("postfix/smtpd[%s]: connect from", pid1)) ||
			strings.Contains(l, fmt.Sprintf("postfix/smtpd[%s]: disconnect from", pid1)) {
			t.Fatalf("a new connection between the two messages:\n%s", strings.Join(lines[i1:i2+1], "\n"))
		}
	}
}
