package main

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestMetricsHealthAndStatus: after one submission and its delivery, the
// Prometheus scrape shows the expected series with the right values, the
// health checks pass, and the status page shows the destination.
func TestMetricsHealthAndStatus(t *testing.T) {
	d := newDaemon(t, nil)
	if out, err := d.run("pw\n", "user", "add", "app", "--password-stdin"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d.start()
	base := "http://" + d.web
	if code, body := httpGet(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("healthz: %d %q", code, body)
	}
	if code, body := httpGet(t, base+"/readyz"); code != 200 || !strings.Contains(body, `"dns":"ok"`) {
		t.Fatalf("readyz: %d %s", code, body)
	}
	if _, err := submit(d.starttls, "app", "wrong", "app@example.org", "rcpt@dest.test", []byte("x")); err == nil {
		t.Fatal("wrong password accepted")
	}
	if _, err := submit(d.starttls, "app", "pw", "app@example.org", "rcpt@dest.test", []byte("Subject: m\r\n\r\nhi\r\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.sink.Arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("not delivered")
	}
	want := []string{
		`postern_submission_accepted_total 1`,
		`postern_submission_auth_failures_total{reason="bad_credentials"} 1`,
		`postern_submission_duration_seconds_count 1`,
		`postern_delivery_attempts_total{policy_type="no-policy-found",result="delivered",tls_version="TLS 1.3",verified="false"} 1`,
		`postern_delivery_recipients_total{policy_source="default",result="delivered",verified="false"} 1`,
		`postern_delivery_time_in_queue_seconds_count 1`,
		`postern_queue_messages{state="active"} 0`,
		`postern_queue_messages{state="deferred"} 0`,
		`postern_queue_oldest_age_seconds 0`,
		`postern_dns_upstream_dnssec_broken 0`,
	}
	// The outcome is recorded just after the MX answers, and the queue
	// counts are kept a second: wait for them.
	var metrics string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if _, metrics = httpGet(t, base+"/metrics"); containsAll(metrics, want) {
			break
		}
	}
	for _, w := range want {
		if !strings.Contains(metrics, w+"\n") {
			t.Errorf("scrape lacks %s", w)
		}
	}
	if !regexp.MustCompile(`postern_dns_validation_total\{status="secure"\} [1-9]`).MatchString(metrics) {
		t.Error("scrape lacks secure DNS validations")
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", grepLines(metrics, "postern_"))
	}
	code, page := httpGet(t, base+"/")
	if code != 200 || !regexp.MustCompile(`<td>dest\.test</td><td class="n">1</td>`).MatchString(page) ||
		!strings.Contains(page, `<th>delivered</th>`) {
		t.Fatalf("status page: %d\n%s", code, page)
	}
	if err := d.signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
}

func grepLines(text, prefix string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func containsAll(text string, lines []string) bool {
	for _, l := range lines {
		if !strings.Contains(text, l+"\n") {
			return false
		}
	}
	return true
}
