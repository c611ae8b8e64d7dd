package interop

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Exim doubles as a smarthost that requires AUTH for these domains; Postern
// routes them to it with delivery.routes.
var smarthostDomains = []string{"smarthost.test", "badauth.test", "notls.smarthost.test"}

const (
	smarthostUser = "relay"
	smarthostPass = "smarthost-secret-7"
)

// routes is delivery.routes of Postern's config.
func (w *world) routes() string {
	exim := w.receiverNamed("exim")
	var b strings.Builder
	for _, r := range []struct{ domain, host, pass string }{
		{"smarthost.test", exim.mxName(), smarthostPass},
		{"badauth.test", exim.mxName(), "wrong-password"},
		{"notls.smarthost.test", exim.notlsName(), smarthostPass},
	} {
		fmt.Fprintf(&b, "    - {domain: %s, next_hop: \"%s:25\", username: %s, password: %s, tls: verify}\n",
			r.domain, r.host, smarthostUser, r.pass)
	}
	return b.String()
}

func (w *world) receiverNamed(name string) *receiver {
	for _, r := range w.receivers {
		if r.name == name {
			return r
		}
	}
	panic("no receiver " + name)
}

// TestSmarthostAUTH: a route to Exim, which requires AUTH (offered only
// inside TLS), with tls: verify: the message goes over verified TLS with
// AUTH; with a wrong password, or to Exim's address without STARTTLS,
// it waits (never cleartext, never a bounce for the operator's mistake).
func TestSmarthostAUTH(t *testing.T) {
	w := needWorld(t)
	ok := w.send(t, "smarthost", "bob@smarthost.test", "")
	bad := w.send(t, "smarthost-badauth", "bob@badauth.test", "")
	notls := w.send(t, "smarthost-notls", "bob@notls.smarthost.test", "")
	m, found := w.sink.find(ok.tok, 30*time.Second)
	if !found {
		msg, _ := w.postern.message(ok.id)
		t.Fatalf("never relayed by the smarthost; queue: %+v", msg)
	}
	// Exim's Received field: "with esmtpsa" is ESMTP with TLS and AUTH
	// (RFC 3848).
	if !strings.Contains(string(headerOf(m.data)), "with esmtpsa") {
		t.Errorf("Exim did not receive it with TLS and AUTH:\n%s", headerOf(m.data))
	}
	rec, err := w.postern.waitAudit(ok.rcpt, 10*time.Second)
	if err != nil || !rec.Verified || rec.TLSVersion == "" {
		t.Errorf("evidence: %v %+v", err, rec)
	}
	for _, s := range []sent{bad, notls} {
		r, err := w.postern.waitAttempted(s.id, s.rcpt, 30*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", s.rcpt, err)
		}
		w.postern.cli("", "queue", "hold", s.id)
		t.Logf("%s: %v %q", s.rcpt, r.State, r.LastReply)
		// Pending is what matters: Exim's 535 is kept as the reason, but a
		// smarthost refusing our credentials is the operator's to fix,
		// not the sender's (Postern defers it).
		if r.State != "pending" {
			t.Errorf("%s: %v %q, want a wait", s.rcpt, r.State, r.LastReply)
		}
		if _, ok := w.sink.lookup(s.tok); ok {
			t.Errorf("%s: delivered", s.rcpt)
		}
	}
}
