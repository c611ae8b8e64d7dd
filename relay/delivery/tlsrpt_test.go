package delivery

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	msgauth "github.com/emersion/go-msgauth/dkim"
	"go.etcd.io/bbolt"

	"github.com/postern/postern/relay/dkim"
	"github.com/postern/postern/relay/smtptest"
	"github.com/postern/postern/relay/tlsrpt"
	"github.com/postern/postern/resolver"
)

// TestTLSReportsAreSent: a day of deliveries to dest.test, whose
// _smtp._tls record asks for reports by mail and over HTTPS. The mailed
// report reaches the fake MX, multipart/report with a gzipped RFC 8460
// JSON report and a DKIM signature that verifies; the HTTPS one is POSTed.
// Neither report's own delivery is counted in a report.
func TestTLSReportsAreSent(t *testing.T) {
	w := newWorld(t, smtptest.Start(t, nil))
	// Two messages, one session: the second rides the first's connection.
	w.submit(sender, "a@dest.test")
	w.submit(sender, "b@dest.test")
	w.run()
	if len(w.mx.Received()) != 2 {
		t.Fatalf("%d delivered", len(w.mx.Received()))
	}

	var mu sync.Mutex
	var posted [][]byte
	var postedType string
	https := httptest.NewTLSServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		posted, postedType = append(posted, b), r.Header.Get("Content-Type")
		mu.Unlock()
	}))
	defer https.Close()

	pemKey, record, err := dkim.Generate("bounces.test", "rpt", "ed25519", 0)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "rpt.pem")
	os.WriteFile(keyFile, pemKey, 0o600)
	key, err := dkim.LoadKey("bounces.test", "rpt", keyFile)
	if err != nil {
		t.Fatal(err)
	}
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	roots := x509.NewCertPool()
	roots.AddCert(https.Certificate())
	reporter, err := tlsrpt.NewReporter(tlsrpt.Config{OrganizationName: "Postern Test", ContactInfo: "tls-reports@bounces.test",
		Submitter: "relay.test", From: "tls-reports@bounces.test", Roots: roots,
		AllowNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, // the test's report server is on loopback
		tlsrpt.Deps{Queue: w.q, DKIM: dkim.New([]dkim.Key{key}, nil), DB: db, Clock: w.clock.Now,
			LookupTXT: func(_ context.Context, name string) ([]string, error) {
				if name == "_smtp._tls.dest.test" {
					return []string{"v=spf1 -all", "v=TLSRPTv1; rua=mailto:reports@dest.test," + https.URL + "/tlsrpt"}, nil
				}
				return nil, nil
			}})
	if err != nil {
		t.Fatal(err)
	}
	day := w.clock.Now()
	outcomes, err := reporter.Send(context.Background(), day)
	if err != nil || len(outcomes) != 2 {
		t.Fatalf("send: %+v %v", outcomes, err)
	}
	if again, _ := reporter.Send(context.Background(), day); len(again) != 0 {
		t.Fatalf("sent twice: %+v", again)
	}
	w.run()

	// The HTTPS report.
	mu.Lock()
	if len(posted) != 1 || postedType != "application/tlsrpt+gzip" {
		t.Fatalf("posted %d, type %q", len(posted), postedType)
	}
	checkReport(t, posted[0])
	mu.Unlock()

	// The mailed report, as the MX received it.
	var arrived []byte
	for _, m := range w.mx.Received() {
		if len(m.Rcpts) == 1 && m.Rcpts[0] == "reports@dest.test" {
			arrived = m.Data
		}
	}
	if arrived == nil {
		t.Fatal("no report reached the MX")
	}
	msg, err := mail.ReadMessage(bytes.NewReader(arrived))
	if err != nil {
		t.Fatal(err)
	}
	h := msg.Header
	if h.Get("TLS-Report-Domain") != "dest.test" || h.Get("TLS-Report-Submitter") != "relay.test" || h.Get("TLS-Required") != "No" ||
		!strings.HasPrefix(h.Get("Subject"), "Report Domain: dest.test Submitter: relay.test Report-ID: <") {
		t.Fatalf("headers: %v", h)
	}
	mediaType, params, _ := mime.ParseMediaType(h.Get("Content-Type"))
	if mediaType != "multipart/report" || params["report-type"] != "tlsrpt" {
		t.Fatalf("content type %q", h.Get("Content-Type"))
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	mr.NextPart() // the text part
	att, err := mr.NextPart()
	if err != nil || att.Header.Get("Content-Type") != "application/tlsrpt+gzip" ||
		!strings.Contains(att.Header.Get("Content-Disposition"), `filename="relay.test!dest.test!`) {
		t.Fatalf("attachment: %v %v", att, err)
	}
	b64, _ := io.ReadAll(att)
	gz, err := base64Decode(b64)
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, gz)
	// The key is published in the test DNS and looked up there.
	w.dns.Add(t, record)
	res, _ := resolver.New([]string{w.dns.Addr}, resolver.Options{Mode: resolver.Off, Attempts: 1})
	verifications, err := msgauth.VerifyWithOptions(bytes.NewReader(arrived), &msgauth.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			txts, _, err := res.LookupTXT(context.Background(), name)
			return txts, err
		},
	})
	if err != nil || len(verifications) != 1 || verifications[0].Err != nil {
		t.Fatalf("DKIM: %v %+v", err, verifications)
	}

	// The report's own delivery is not in the report of the day.
	agg, _ := tlsrpt.Aggregate(w.q, day)
	if s := agg["dest.test"][0].Summary; s.Successful != 1 {
		t.Fatalf("sessions after the report went out: %+v", s)
	}
}

func checkReport(t *testing.T, gz []byte) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	var report map[string]any
	if err := json.NewDecoder(zr).Decode(&report); err != nil {
		t.Fatal(err)
	}
	dr := report["date-range"].(map[string]any)
	policies := report["policies"].([]any)
	p := policies[0].(map[string]any)
	policy, summary := p["policy"].(map[string]any), p["summary"].(map[string]any)
	if report["organization-name"] != "Postern Test" || report["contact-info"] != "tls-reports@bounces.test" ||
		!strings.HasSuffix(report["report-id"].(string), "@relay.test") || dr["start-datetime"] != "2026-11-28T00:00:00Z" || dr["end-datetime"] != "2026-11-28T23:59:59Z" ||
		len(policies) != 1 || policy["policy-type"] != "no-policy-found" || policy["policy-domain"] != "dest.test" ||
		summary["total-successful-session-count"] != float64(1) || summary["total-failure-session-count"] != float64(0) {
		t.Fatalf("report: %v", report)
	}
}

func base64Decode(b []byte) ([]byte, error) {
	return io.ReadAll(base64NewDecoder(bytes.NewReader(bytes.ReplaceAll(b, []byte("\r\n"), nil))))
}

func base64NewDecoder(r io.Reader) io.Reader { return base64.NewDecoder(base64.StdEncoding, r) }
