package interop

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// tlsrptMailbox receives the TLS reports (its domain's MX is Postfix).
const tlsrptMailbox = "tlsrpt@sender.test"

// tlsrptScript reads a mailed TLS report from stdin with Python's email
// package and checks it against RFC 8460: the message (5.3) and the JSON
// (4.4, every field section 4 requires); it prints the report.
const tlsrptScript = `
import email, email.policy, gzip, json, sys
msg = email.message_from_binary_file(sys.stdin.buffer, policy=email.policy.default)
assert msg.get_content_type() == "multipart/report", msg.get_content_type()
assert msg.get_param("report-type") == "tlsrpt", msg.get_param("report-type")
for h in ("TLS-Report-Domain", "TLS-Report-Submitter", "Subject", "Date", "Message-ID"):
    assert msg[h], "missing " + h
assert "Report Domain:" in msg["Subject"] and "Submitter:" in msg["Subject"] and "Report-ID:" in msg["Subject"], msg["Subject"]
gz = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
assert len(gz) == 1, [p.get_content_type() for p in msg.walk()]
report = json.loads(gzip.decompress(gz[0].get_payload(decode=True)))
for k in ("organization-name", "date-range", "contact-info", "report-id", "policies"):
    assert k in report, "missing " + k
for k in ("start-datetime", "end-datetime"):
    assert k in report["date-range"], "missing date-range." + k
assert report["policies"], "no policies"
for p in report["policies"]:
    for k in ("policy-type", "policy-domain"):
        assert k in p["policy"], "missing policy." + k
    assert p["policy"]["policy-type"] in ("tlsa", "sts", "no-policy-found"), p["policy"]["policy-type"]
    if p["policy"]["policy-type"] != "no-policy-found":
        assert p["policy"].get("policy-string"), "missing policy.policy-string"
    for k in ("total-successful-session-count", "total-failure-session-count"):
        assert isinstance(p["summary"][k], int), "summary." + k
    for d in p.get("failure-details", []):
        for k in ("result-type", "failed-session-count"):
            assert k in d, "missing failure-details." + k
print(json.dumps({"domain": msg["TLS-Report-Domain"], "report": report}))
`

// TestTLSReport: the TLS report for a domain publishing _smtp._tls (the
// DANE-EE domain Postfix serves) goes out by mail ("postern tlsrpt send"
// for today) through Postern's queue and Postfix; it is the message RFC
// 8460 5.3 describes, its JSON has every field section 4 requires, and its
// DKIM signatures verify with dkimverify.
func TestTLSReport(t *testing.T) {
	w := needWorld(t)
	pf := w.receivers[0]
	domain := pf.domain("dane-ee")
	// A session to report: a delivery verified by DANE-EE.
	s := w.send(t, "tlsrpt", "bob@"+domain, "")
	if _, ok := w.sink.find(s.tok, 30*time.Second); !ok {
		t.Fatal("the DANE-EE delivery did not arrive")
	}
	// The report is recorded with the delivery outcome; send today's.
	var out string
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err = w.postern.cli("", "tlsrpt", "send", "--day", time.Now().UTC().Format("2006-01-02"))
		if err == nil && strings.Contains(out, domain) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil || !strings.Contains(out, domain+" mailto:"+tlsrptMailbox+": sent") {
		t.Fatalf("tlsrpt send: %v\n%s", err, out)
	}
	var report []byte
	deadline = time.Now().Add(30 * time.Second)
	for report == nil && time.Now().Before(deadline) {
		for _, m := range w.sink.all("TLS-Report-Domain: " + domain) {
			report = m.data
		}
		time.Sleep(100 * time.Millisecond)
	}
	if report == nil {
		t.Fatal("the report never reached " + tlsrptMailbox)
	}
	cmd := exec.Command("/usr/bin/python3", "-c", tlsrptScript)
	cmd.Stdin = bytes.NewReader(report)
	parsed, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the report does not pass RFC 8460: %v\n%s\n%s", err, parsed, report)
	}
	var got struct {
		Domain string `json:"domain"`
		Report struct {
			Policies []struct {
				Policy struct {
					Type   string `json:"policy-type"`
					Domain string `json:"policy-domain"`
				} `json:"policy"`
				Summary struct {
					OK int `json:"total-successful-session-count"`
				} `json:"summary"`
			} `json:"policies"`
		} `json:"report"`
	}
	if err := json.Unmarshal(parsed, &got); err != nil {
		t.Fatalf("%v: %s", err, parsed)
	}
	t.Logf("report: %s", parsed)
	if got.Domain != domain || len(got.Report.Policies) == 0 || got.Report.Policies[0].Policy.Type != "tlsa" ||
		got.Report.Policies[0].Summary.OK < 1 {
		t.Errorf("report for %s: %s", domain, parsed)
	}
	n := bytes.Count(report, []byte("\nDKIM-Signature:"))
	if n < 1 {
		t.Fatalf("the report is not DKIM-signed:\n%s", headerOf(report))
	}
	for i := 0; i < n; i++ {
		if out, err := w.dkimverify(report, i); err != nil || out != "signature ok" {
			t.Errorf("dkimverify --index %d: %v: %s", i, err, out)
		}
	}
}
