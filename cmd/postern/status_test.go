package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"html/template"
	"image"
	"image/png"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
	"github.com/postern/postern/relay/tlsrpt"
	"github.com/postern/postern/resolver"
)

// statusWorld is a queue with one message delivered over DANE, one to an
// MTA-STS domain, one in plaintext, one deferred by a TLS failure, and one
// held, served by the admin HTTP handler.
func statusWorld(t *testing.T, password string, maxEntries ...int) *httptest.Server {
	t.Helper()
	q, err := queue.Open(filepath.Join(t.TempDir(), "queue.db"), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	now := time.Now()
	deliver := func(rcpt string, rec audit.Record, attempt tlsrpt.Attempt, result queue.Result) string {
		id, err := q.Enqueue("", queue.Envelope{From: "app@example.org", Recipients: []queue.Recipient{{Addr: rcpt}}}, strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		l, err := q.Lease(1, time.Minute)
		if err != nil || len(l) != 1 {
			t.Fatalf("lease: %v", err)
		}
		rec.Time, rec.QueueID, rec.Recipient, rec.Result = now, id, rcpt, audit.Delivered
		o := queue.Outcome{Recipient: 0, Result: result, Reply: "250 ok", RetryAt: now.Add(time.Hour), Journal: [][]byte{attempt.Encode()}}
		if result == queue.ResultDelivered {
			o.Journal = append(o.Journal, rec.Encode())
		}
		if _, err := q.Record(id, l[0].Seq, []queue.Outcome{o}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	deliver("a@dane.test", audit.Record{TLSVersion: "TLS 1.3", Verified: true, VerifiedBy: "DANE-EE", PolicySource: "dane"},
		tlsrpt.Attempt{PolicyDomain: "dane.test", PolicyType: "tlsa", MXHost: "mx.dane.test"}, queue.ResultDelivered)
	deliver("b@dane.test", audit.Record{TLSVersion: "TLS 1.3", Verified: true, VerifiedBy: "DANE-TA", PolicySource: "dane"},
		tlsrpt.Attempt{PolicyDomain: "dane.test", PolicyType: "tlsa", MXHost: "mx.dane.test"}, queue.ResultDelivered)
	deliver("c@sts.test", audit.Record{TLSVersion: "TLS 1.2", Verified: true, VerifiedBy: "PKIX", PolicySource: "mta-sts"},
		tlsrpt.Attempt{PolicyDomain: "sts.test", PolicyType: "sts", MXHost: "mx.sts.test"}, queue.ResultDelivered)
	deliver("d@plain.test", audit.Record{PolicySource: "default"},
		tlsrpt.Attempt{PolicyDomain: "plain.test", PolicyType: "no-policy-found", MXHost: "mx.plain.test"}, queue.ResultDelivered)
	deliver("e@broken.test", audit.Record{},
		tlsrpt.Attempt{PolicyDomain: "broken.test", PolicyType: "sts", MXHost: "mx.broken.test", ReceivingIP: "192.0.2.7",
			Result: "certificate-expired", Info: "x509: certificate has expired"}, queue.ResultDeferred)
	held, _ := q.Enqueue("", queue.Envelope{From: "app@example.org", Recipients: []queue.Recipient{{Addr: "f@later.test"}}}, strings.NewReader("x"))
	q.Hold(held)
	web := &adminHTTP{hostname: "relay.example", password: password, metrics: http.NotFoundHandler(), q: q,
		stats: &statsCache{q: q}, log: slog.New(slog.DiscardHandler),
		ready: []readiness{{"queue", func(context.Context) error { _, err := q.Count(); return err }}}}
	if len(maxEntries) > 0 {
		web.maxEntries = maxEntries[0]
	}
	srv := httptest.NewServer(web.handler())
	t.Cleanup(srv.Close)
	return srv
}

func TestStatusPage(t *testing.T) {
	srv := statusWorld(t, "")
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Content-Security-Policy") == "" {
		t.Error("no Content-Security-Policy")
	}
	_, page := httpGet(t, srv.URL+"/")
	for _, want := range []string{
		`<div class="tile" id="q-deferred"><b>1</b>deferred</div>`,
		`<div class="tile" id="q-held"><b>1</b>held</div>`,
		`<td>dane.test</td><td class="n">2</td><td class="n">2</td>`,
		`<td>sts.test</td><td class="n">1</td><td class="n">0</td><td class="n">1</td>`,
		`<td class="n bad">1</td>`, // plain.test went in plaintext
		`<td>broken.test</td><td class="bad">certificate-expired</td><td>mx.broken.test</td><td class="n">1</td>`,
		`<td>x509: certificate has expired</td>`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %s", want)
		}
	}
	if t.Failed() {
		t.Log(page)
	}
}

// TestStatusPageReadsNewestFirst: with a cap on the journal entries read,
// the page shows the newest and says it is partial.
func TestStatusPageReadsNewestFirst(t *testing.T) {
	srv := statusWorld(t, "", 2) // the newest two entries: broken.test's failure and plain.test's delivery
	_, page := httpGet(t, srv.URL+"/")
	if !strings.Contains(page, "newest entries only") || !strings.Contains(page, "<td>broken.test</td>") ||
		strings.Contains(page, "<td>dane.test</td>") {
		t.Fatalf("capped page:\n%s", page)
	}
}

func TestAdminHTTPPassword(t *testing.T) {
	srv := statusWorld(t, "s3cret")
	for path, want := range map[string]int{"/": 401, "/metrics": 401, "/healthz": 200, "/readyz": 200} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s without the password: %d, want %d", path, resp.StatusCode, want)
		}
	}
	req, _ := http.NewRequest("GET", srv.URL+"/", nil)
	req.SetBasicAuth("ops", "s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("with the password: %d", resp.StatusCode)
	}
}

// TestStatusPageInChromium renders the page in headless Chromium, checks
// the DOM it built and that its screenshot is a page, not a blank. It is
// skipped where Chromium is not installed (.ci/run installs it).
func TestStatusPageInChromium(t *testing.T) {
	browser := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			browser = p
			break
		}
	}
	if browser == "" {
		t.Skip("no chromium installed")
	}
	srv := statusWorld(t, "")
	dir := t.TempDir()
	shot := filepath.Join(dir, "status.png")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := func(args ...string) []byte {
		args = append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
			"--user-data-dir=" + filepath.Join(dir, "profile"), "--window-size=1200,900"}, args...)
		out, err := exec.CommandContext(ctx, browser, append(args, srv.URL+"/")...).Output()
		if err != nil {
			t.Fatalf("chromium %v: %v", args, err)
		}
		return out
	}
	dom := string(run("--dump-dom"))
	for _, want := range []string{"Postern on relay.example", "dane.test", "certificate-expired"} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered DOM lacks %q", want)
		}
	}
	run("--screenshot=" + shot)
	f, err := os.ReadFile(shot)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(f))
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != 1200 || b.Dy() != 900 {
		t.Fatalf("screenshot is %v", b)
	}
	// Text and table rules make dark and grey pixels; a blank or failed
	// render is all one colour.
	dark, red := inkCount(img)
	t.Logf("screenshot: %d dark pixels, %d red pixels (%s)", dark, red, shot)
	if dark < 2000 {
		t.Fatalf("the screenshot is nearly blank: %d dark pixels", dark)
	}
	if red == 0 {
		t.Fatal("no red in the screenshot: the TLS failure and plaintext delivery are not flagged")
	}
	if dst := os.Getenv("POSTERN_SCREENSHOT"); dst != "" {
		os.WriteFile(dst, f, 0o644)
	}
}

func inkCount(img image.Image) (dark, red int) {
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			r, g, bl = r>>8, g>>8, bl>>8
			if r < 100 && g < 100 && bl < 100 {
				dark++
			}
			if r > 140 && g < 60 && bl < 80 {
				red++
			}
		}
	}
	return dark, red
}

// BenchmarkStatusPage renders the status page over a journal of 200,000
// entries in its window (100,000 deliveries, each with its TLS session).
//
//	go test ./cmd/postern -run '^$' -bench StatusPage -benchtime 5x
func BenchmarkStatusPage(b *testing.B) {
	q, err := queue.Open(filepath.Join(b.TempDir(), "queue.db"), queue.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	now := time.Now()
	for batch := range 100 {
		id, _ := q.Enqueue("", queue.Envelope{From: "app@example.org", Recipients: []queue.Recipient{{Addr: "r@x.test"}}}, strings.NewReader("x"))
		l, _ := q.Lease(1, time.Minute)
		o := queue.Outcome{Recipient: 0, Result: queue.ResultDelivered}
		for i := range 1000 {
			dom := fmt.Sprintf("d%d.test", (batch*1000+i)%500)
			o.Journal = append(o.Journal, tlsrpt.Attempt{PolicyDomain: dom, PolicyType: "sts", MXHost: "mx." + dom}.Encode(),
				audit.Record{Time: now, QueueID: id, Recipient: "r@" + dom, Result: audit.Delivered, TLSVersion: "TLS 1.3",
					Verified: true, VerifiedBy: "PKIX", PolicySource: "mta-sts"}.Encode())
		}
		if _, err := q.Record(id, l[0].Seq, []queue.Outcome{o}); err != nil {
			b.Fatal(err)
		}
		q.Retire(id, l[0].Seq+1)
	}
	web := &adminHTTP{hostname: "relay.example", q: q, stats: &statsCache{q: q}, log: slog.New(slog.DiscardHandler), metrics: http.NotFoundHandler()}
	h := web.handler()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
		if w.Code != 200 || !strings.Contains(w.Body.String(), "d1.test") {
			b.Fatalf("%d", w.Code)
		}
	}
}

// TestStatusPageShowsWhatIsWrong: the page says when the relay is not
// ready and why, when the DNS upstream strips DNSSEC and what that does,
// and why mail waits, also when no TLS report data was written (a
// smarthost route's certificate failure); and it refreshes itself.
func TestStatusPageShowsWhatIsWrong(t *testing.T) {
	q, err := queue.Open(filepath.Join(t.TempDir(), "queue.db"), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	id, err := q.Enqueue("", queue.Envelope{From: "app@example.org", Recipients: []queue.Recipient{{Addr: "x@partner.example"}}}, strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := q.Lease(1, time.Minute)
	if err != nil || len(l) != 1 {
		t.Fatalf("lease: %v", err)
	}
	const reply = "4.7.5 TLS policy for smarthost.example: certificate not trusted (route tls: verify)"
	if _, err := q.Record(id, l[0].Seq, []queue.Outcome{{Recipient: 0, Result: queue.ResultDeferred, Reply: reply,
		Host: "smarthost.example", RetryAt: time.Now().Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	web := &adminHTTP{hostname: "relay.example", metrics: http.NotFoundHandler(), q: q, stats: &statsCache{q: q},
		log: slog.New(slog.DiscardHandler), onBroken: "defer",
		dns: func() resolver.Health {
			return resolver.Health{Checked: time.Now().Add(-time.Minute), Broken: true, Problem: "192.0.2.53:53 over udp answered without RRSIGs."}
		},
		ready: []readiness{
			{"queue", func(context.Context) error { return nil }},
			{"dns", func(context.Context) error { return errors.New("no DNS server answers") }},
		}}
	srv := httptest.NewServer(web.handler())
	defer srv.Close()
	_, page := httpGet(t, srv.URL+"/")
	for _, want := range []string{
		`<meta http-equiv="refresh" content="30">`,
		`<tr><th>ready</th><td class="bad">no: <a href="/readyz">/readyz</a> answers 503</td></tr>`,
		`<tr><th>queue</th><td>ok</td></tr>`,
		`<tr><th>dns</th><td class="bad">no DNS server answers</td></tr>`,
		`192.0.2.53:53 over udp answered without RRSIGs. Mail to DNSSEC-signed domains waits until it is fixed`,
		`<td>partner.example</td><td class="n">1</td>`,
		`<td>smarthost.example</td><td class="bad">` + template.HTMLEscapeString(reply) + `</td>`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %s", want)
		}
	}
	if t.Failed() {
		t.Log(page)
	}
}
