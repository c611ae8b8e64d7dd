package tlsrpt_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/tlsrpt"
)

type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

// A scripted day of attempts becomes the RFC 8460 report, field by field.
func TestReportFromScriptedAttempts(t *testing.T) {
	c := &clock{now: time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)}
	q, err := queue.Open(filepath.Join(t.TempDir(), "queue.db"), queue.Options{Clock: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	sts := []string{"version: STSv1", "mode: enforce", "mx: *.mail.company-y.example", "max_age: 86400"}
	script := []tlsrpt.Attempt{
		{PolicyDomain: "company-y.example", PolicyType: "sts", PolicyStrings: sts, MXHost: "mx1.mail.company-y.example", ReceivingIP: "203.0.113.56"},
		{PolicyDomain: "company-y.example", PolicyType: "sts", PolicyStrings: sts, MXHost: "mx1.mail.company-y.example", ReceivingIP: "203.0.113.56"},
		{PolicyDomain: "company-y.example", PolicyType: "sts", PolicyStrings: sts, MXHost: "mx2.mail.company-y.example",
			ReceivingIP: "203.0.113.57", Result: "certificate-expired", Info: "x509: certificate has expired"},
		{PolicyDomain: "company-y.example", PolicyType: "sts", PolicyStrings: sts, MXHost: "mx2.mail.company-y.example",
			ReceivingIP: "203.0.113.57", Result: "certificate-expired", Info: "x509: certificate has expired"},
		{PolicyDomain: "company-y.example", PolicyType: "sts", PolicyStrings: sts, MXHost: "mx3.mail.company-y.example",
			Result: "starttls-not-supported", ReceivingIP: "203.0.113.58"},
		{PolicyDomain: "other.example", PolicyType: "no-policy-found", MXHost: "mx.other.example", ReceivingIP: "192.0.2.9"},
	}
	for _, a := range script {
		id, _ := q.Enqueue("", queue.Envelope{From: "a@b.example", Recipients: []queue.Recipient{{Addr: "x@" + a.PolicyDomain}}}, strings.NewReader("x\r\n"))
		l, _ := q.Lease(1, time.Minute)
		if _, err := q.Record(id, l[0].Seq, []queue.Outcome{{Recipient: 0, Result: queue.ResultDelivered, Journal: [][]byte{a.Encode()}}}); err != nil {
			t.Fatal(err)
		}
	}
	// Another day's attempt is not in this day's report.
	c.now = c.now.Add(24 * time.Hour)
	id, _ := q.Enqueue("", queue.Envelope{From: "a@b.example", Recipients: []queue.Recipient{{Addr: "x@company-y.example"}}}, strings.NewReader("x\r\n"))
	l, _ := q.Lease(1, time.Minute)
	q.Record(id, l[0].Seq, []queue.Outcome{{Recipient: 0, Result: queue.ResultDelivered, Journal: [][]byte{script[0].Encode()}}})

	agg, err := tlsrpt.Aggregate(q, time.Date(2026, 11, 28, 23, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	report := tlsrpt.NewReport("Company-X", "sts-reporting@company-x.example", "mail.company-x.example", "company-y.example",
		time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC), agg["company-y.example"])
	if !strings.HasPrefix(report.ReportID, "20261128.company-y.example.") || !strings.HasSuffix(report.ReportID, "@mail.company-x.example") {
		t.Errorf("report-id %q", report.ReportID)
	}
	report.ReportID = "20261128.company-y.example.NONCE@mail.company-x.example" // random in real reports
	got, err := json.MarshalIndent(report, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "01-company-y.json", append(got, '\n'))
	if len(agg["other.example"]) != 1 || agg["other.example"][0].Policy.Type != "no-policy-found" {
		t.Fatalf("other domain: %+v", agg["other.example"])
	}
}

func TestParseRecord(t *testing.T) {
	uris, err := tlsrpt.FindRecord([]string{"v=spf1 -all", "v=TLSRPTv1; rua=mailto:reports@example.com,https://reporting.example.com/v1/tlsrpt"})
	if err != nil || len(uris) != 2 || uris[0].Opaque != "reports@example.com" || uris[1].Host != "reporting.example.com" {
		t.Fatalf("%v %v", uris, err)
	}
	for _, bad := range [][]string{
		{"v=TLSRPTv1;"},
		{"v=TLSRPTv1; rua=ftp://x.example/"},
		{"v=TLSRPTv1; rua=mailto:not an address"},
		{"v=TLSRPTv1; rua=mailto:a@b.example", "v=TLSRPTv1; rua=mailto:c@d.example"},
		{"rua=mailto:a@b.example; v=TLSRPTv1"},
		{"v=TLSRPTv1; rua=mailto:a@b.example; rua=mailto:c@d.example"},
	} {
		if _, err := tlsrpt.FindRecord(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// FuzzRecord: the _smtp._tls parser never panics and only returns
// mailto: and https: addresses.
func FuzzRecord(f *testing.F) {
	f.Add("v=TLSRPTv1; rua=mailto:reports@example.com,https://reporting.example.com/v1/tlsrpt")
	f.Add("v=TLSRPTv1;rua=mailto:a@b;ext=1;")
	f.Fuzz(func(t *testing.T, txt string) {
		uris, err := tlsrpt.ParseRecord(txt)
		if err != nil {
			return
		}
		for _, u := range uris {
			if u.Scheme != "mailto" && u.Scheme != "https" {
				t.Fatalf("%q gave %s", txt, u)
			}
		}
	})
}

// Run sends yesterday's reports once after the send hour, and does not
// aggregate a finished day again at the next hourly pass.
func TestRunSendsYesterdayOnce(t *testing.T) {
	c := &clock{now: time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)}
	q, db := oneDayOfAttempts(t, c)
	lookups := 0
	r, err := tlsrpt.NewReporter(tlsrpt.Config{OrganizationName: "O", ContactInfo: "c@b.example", Submitter: "relay.example",
		From: "reports@b.example", SendHour: 1},
		tlsrpt.Deps{Queue: q, DB: db, Clock: c.Now, LookupTXT: func(context.Context, string) ([]string, error) {
			lookups++
			return []string{"v=TLSRPTv1; rua=mailto:tlsrpt@dest.example"}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	c.now = time.Date(2026, 11, 29, 0, 30, 0, 0, time.UTC) // before the send hour
	run := func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // one pass, then Run returns
		r.Run(ctx)
	}
	run()
	if lookups != 0 {
		t.Fatal("sent before the send hour")
	}
	c.now = c.now.Add(time.Hour)
	run()
	run()
	if n, _ := q.Count(); lookups != 1 || n != 2 {
		t.Fatalf("%d lookups, %d messages queued (the delivered one and one report)", lookups, n)
	}
}

// oneDayOfAttempts opens a queue in which one delivery to dest.example was
// made today, with its TLS report data journalled, and a state database;
// both close when the test ends.
func oneDayOfAttempts(t *testing.T, c *clock) (*queue.Queue, *bbolt.DB) {
	t.Helper()
	dir := t.TempDir()
	q, err := queue.Open(filepath.Join(dir, "queue.db"), queue.Options{Clock: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	id, _ := q.Enqueue("", queue.Envelope{From: "a@b.example", Recipients: []queue.Recipient{{Addr: "x@dest.example"}}}, strings.NewReader("x\r\n"))
	l, _ := q.Lease(1, time.Minute)
	a := tlsrpt.Attempt{PolicyDomain: "dest.example", PolicyType: "no-policy-found", MXHost: "mx.dest.example"}
	q.Record(id, l[0].Seq, []queue.Outcome{{Recipient: 0, Result: queue.ResultDelivered, Journal: [][]byte{a.Encode()}}})
	db, err := bbolt.Open(filepath.Join(dir, "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return q, db
}

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ from the current output")

// golden compares got, byte for byte, with testdata/name; testdata/README
// says what each file proves, and -update rewrites it after a deliberate
// change.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	file := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (run with -update after a deliberate change):\n--- got\n%s\n--- want\n%s", file, got, want)
	}
}
