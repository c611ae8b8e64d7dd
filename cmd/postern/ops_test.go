package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/submission"
	"github.com/postern/postern/resolver/resolvertest"
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
	if out, err := d.run("", "health", "--ready", "--addr", d.web); err != nil || !strings.Contains(out, `"ready":true`) {
		t.Fatalf("postern health --ready: %v %s", err, out)
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
		`postern_delivery_attempts_total{policy_source="default",policy_type="no-policy-found",result="delivered",tls_failure="none",tls_version="TLS 1.3",verified="false"} 1`,
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
	eventually(t, 10*time.Second, func() bool {
		_, metrics = httpGet(t, base+"/metrics")
		return containsAll(metrics, want)
	})
	for _, w := range want {
		if !strings.Contains(metrics, w+"\n") {
			t.Errorf("scrape lacks %s", w)
		}
	}
	if !regexp.MustCompile(`postern_dns_validation_total\{status="secure"\} [1-9]`).MatchString(metrics) {
		t.Error("scrape lacks secure DNS validations")
	}
	checkMetricNamesInConfigs(t, metrics)
	if t.Failed() {
		t.Logf("scrape:\n%s", grepLines(metrics, "postern_"))
	}
	code, page := httpGet(t, base+"/")
	if code != 200 || !regexp.MustCompile(`<td>dest\.test</td><td class="n">1</td>`).MatchString(page) ||
		!strings.Contains(page, `<th class="n">delivered</th>`) {
		t.Fatalf("status page: %d\n%s", code, page)
	}
	// With DNS down the relay is alive but not ready.
	d.dns.Fail(resolvertest.Silent)
	if code, body := httpGet(t, base+"/readyz"); code != 503 || !strings.Contains(body, "no DNS server answers") {
		t.Fatalf("readyz with DNS down: %d %s", code, body)
	}
	// The same through "postern health", a container's HEALTHCHECK.
	if out, err := d.run("", "health", "--addr", d.web); err != nil || out != "ok\n" {
		t.Errorf("postern health: %v %q", err, out)
	}
	if out, err := d.run("", "health", "--ready", "--addr", d.web); processExit(err) != 1 || !strings.Contains(out, "503") {
		t.Errorf("postern health --ready with DNS down: exit %d\n%s", processExit(err), out)
	}
	if code, _ := httpGet(t, base+"/healthz"); code != 200 {
		t.Fatalf("healthz with DNS down: %d", code)
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

// TestQueueOperations drives the queue commands through the admin socket:
// filters by state and age, flush, bounce with its notice, and the exit
// code for a message that does not exist.
func TestQueueOperations(t *testing.T) {
	d := newDaemon(t, nil)
	if out, err := d.run("pw\n", "user", "add", "app", "--password-stdin"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d.start()
	reply, err := submit(d.starttls, "app", "pw", "app@dest.test", "rcpt@stuck.test", []byte("Subject: stuck\r\n\r\nx\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	id := queueID(reply)
	// Its MX refuses connections: after the first attempt it is deferred.
	var msgs []messageView
	eventually(t, 20*time.Second, func() bool {
		out, _ := d.run("", "queue", "list", "--state", "deferred", "--json")
		return json.Unmarshal([]byte(out), &msgs) == nil && len(msgs) == 1
	})
	if len(msgs) != 1 || msgs[0].ID != id || msgs[0].Recipients[0].Attempts != 1 || !strings.Contains(msgs[0].Recipients[0].LastReply, "4.4.1") {
		t.Fatalf("deferred list: %+v", msgs)
	}
	if out, _ := d.run("", "queue", "list", "--older-than", "1h"); strings.Contains(out, id) {
		t.Fatalf("--older-than 1h lists a new message:\n%s", out)
	}
	if out, _ := d.run("", "queue", "list", "--newer-than", "1h"); !regexp.MustCompile(id + `\s.*\s1/1\s+deferred\s+4\.4\.1`).MatchString(out) {
		t.Fatalf("queue list table:\n%s", out)
	}
	if out, err := d.run("", "queue", "show", id); err != nil || !regexp.MustCompile(`state:\s+deferred\n`).MatchString(out) ||
		!regexp.MustCompile(`rcpt@stuck\.test\s+pending\s+1\s.*4\.4\.1 connect to mx\.stuck\.test`).MatchString(out) {
		t.Fatalf("queue show: %v\n%s", err, out)
	}
	if out, err := d.run("", "queue", "flush"); err != nil || !strings.Contains(out, "1 deferred messages due now") {
		t.Fatalf("flush: %v %s", err, out)
	}
	if out, err := d.run("", "queue", "list", "--state", "parked"); err == nil || processExit(err) != 2 {
		t.Fatalf("bad --state: %v %s", err, out)
	}
	if _, err := d.run("", "queue", "bounce", "nonexistent"); processExit(err) != 3 {
		t.Fatalf("bounce of a missing ID: %v", err)
	}
	// Bounce: the message goes, and a failure notice to its sender comes.
	if !eventually(t, 20*time.Second, func() bool {
		// A retry may be in flight (the flush made it due): then bounce says so and exits 3.
		_, err := d.run("", "queue", "bounce", id)
		return err == nil
	}) {
		t.Fatal("bounce never succeeded")
	}
	// The sender's domain is the sink's: the notice arrives there.
	select {
	case <-d.sink.Arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("no failure notice")
	}
	dsn := d.sink.Received()[0]
	if dsn.From != "" || dsn.Rcpts[0] != "app@dest.test" || !strings.Contains(string(dsn.Data), "Action: failed") ||
		!strings.Contains(string(dsn.Data), "postern queue bounce") {
		t.Fatalf("failure notice: from %q to %v\n%s", dsn.From, dsn.Rcpts, dsn.Data)
	}
	if out, _ := d.run("", "queue", "list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("queue after the bounce: %s", out)
	}
	// The operator's bounce is delivery evidence like any other: an audit
	// record (found by queue ID too), counted as bounced, on the status page.
	out, err := d.run("", "audit", "--message-id", id, "--format", "json")
	var rec audit.Record
	if err != nil || json.Unmarshal([]byte(out), &rec) != nil || rec.QueueID != id || rec.Result != audit.Bounced ||
		rec.Recipient != "rcpt@stuck.test" || !strings.Contains(rec.Reply, "postern queue bounce") {
		t.Fatalf("audit record of the bounce: %v\n%s", err, out)
	}
	if _, metrics := httpGet(t, "http://"+d.web+"/metrics"); !strings.Contains(metrics,
		`postern_delivery_recipients_total{policy_source="none",result="bounced",verified="false"} 1`+"\n") {
		t.Errorf("the bounce is not counted:\n%s", grepLines(metrics, "postern_delivery_recipients_total"))
	}
	// Delivered: the failure notice; bounced: the message.
	if _, page := httpGet(t, "http://"+d.web+"/"); !strings.Contains(page,
		`<tr><td class="n">1</td><td class="n">1</td><td class="n">0</td></tr>`) {
		t.Errorf("the status page does not show the bounce:\n%s", page)
	}
	d.signal(syscall.SIGTERM)
}

func processExit(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// TestReload: SIGHUP makes new connections see a replaced certificate, and
// "postern reload" applies a changed limit at once and names a setting that
// needs a restart.
func TestReload(t *testing.T) {
	d := newDaemon(t, nil)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCert := func(name string) {
		cert, err := submission.SelfSigned(name)
		if err != nil {
			t.Fatal(err)
		}
		key, _ := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
		os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600)
		os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600)
	}
	writeCert("first.test")
	d.editConfig(`tls_listen: ["127.0.0.1:0"]`, fmt.Sprintf(`tls_listen: ["127.0.0.1:0"]
  max_recipients: 5
  tls: {cert_file: %s, key_file: %s, reload_interval: 1h}`, certFile, keyFile))
	if out, err := d.run("pw\n", "user", "add", "app", "--password-stdin"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d.start()
	served := func() string {
		c, err := tls.Dial("tcp", d.implicit, e2eTLS)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if name := served(); name != "first.test" {
		t.Fatalf("serving %q", name)
	}
	writeCert("second.test")
	d.cmd.Process.Signal(syscall.SIGHUP)
	var name string
	eventually(t, 10*time.Second, func() bool { name = served(); return name == "second.test" })
	if name != "second.test" {
		t.Fatalf("after SIGHUP a new connection sees %q", name)
	}

	b, _ := os.ReadFile(d.cfg)
	text := strings.Replace(string(b), "max_recipients: 5", "max_recipients: 1\n  max_message_bytes: 1000000", 1)
	os.WriteFile(d.cfg, []byte(text), 0o600)
	out, err := d.run("", "reload")
	if err != nil || !strings.Contains(out, "applied: submission.max_recipients") || !strings.Contains(out, "need a restart: submission.max_message_bytes") {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	c, err := smtp.DialStartTLS(d.starttls, e2eTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "app", "pw")); err != nil {
		t.Fatal(err)
	}
	c.Mail("app@example.org", nil)
	if err := c.Rcpt("a@dest.test", nil); err != nil {
		t.Fatal(err)
	}
	var se *smtp.SMTPError
	if err := c.Rcpt("b@dest.test", nil); !errors.As(err, &se) || se.Code != 452 {
		t.Fatalf("second recipient after max_recipients went to 1: %v", err)
	}
	// A configuration that does not validate changes nothing.
	os.WriteFile(d.cfg, []byte(strings.Replace(text, "max_recipients: 1", "max_recipients: 0", 1)), 0o600)
	if out, err := d.run("", "reload"); err == nil || !strings.Contains(out, "submission.max_recipients") {
		t.Fatalf("bad reload: %v\n%s", err, out)
	}
	d.signal(syscall.SIGTERM)
}

// TestOTLPExport: with telemetry.otlp_endpoint set, the daemon pushes
// metrics and the traces of a submission and its delivery to the collector.
func TestOTLPExport(t *testing.T) {
	var mu sync.Mutex
	posts := map[string]int{}
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		if r.Method == "POST" && r.Header.Get("Content-Type") == "application/x-protobuf" && len(b) > 0 {
			posts[r.URL.Path]++
		}
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer collector.Close()
	d := newDaemon(t, nil)
	d.editConfig(`admin: {metrics_listen: "127.0.0.1:0"}`, fmt.Sprintf(`admin: {metrics_listen: "127.0.0.1:0"}
telemetry: {otlp_endpoint: %q, otlp_interval: 200ms}`, collector.URL))
	if out, err := d.run("pw\n", "user", "add", "app", "--password-stdin"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d.start()
	if _, err := submit(d.starttls, "app", "pw", "app@example.org", "rcpt@dest.test", []byte("Subject: m\r\n\r\nhi\r\n")); err != nil {
		t.Fatal(err)
	}
	<-d.sink.Arrived
	// Spans are batched; the stop flushes them.
	d.signal(syscall.SIGTERM)
	mu.Lock()
	defer mu.Unlock()
	if posts["/v1/metrics"] == 0 || posts["/v1/traces"] == 0 {
		t.Fatalf("collector received %v", posts)
	}
}

// checkMetricNamesInConfigs: every metric the alert rules and the Grafana
// dashboard use is one Postern exports (a typo would make an alert that
// never fires). Counters that only appear once their event has happened
// are listed.
func checkMetricNamesInConfigs(t *testing.T, scrape string) {
	t.Helper()
	eventOnly := map[string]bool{"postern_delivery_notices_total": true, "postern_submission_refused_total": true,
		"postern_submission_limited_total": true}
	for _, file := range []string{"../../configs/prometheus-alerts.yaml", "../../configs/grafana-dashboard.json"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		names := regexp.MustCompile(`postern_[a-z_]+`).FindAllString(string(b), -1)
		if len(names) < 5 {
			t.Errorf("%s uses only %d metrics", file, len(names))
		}
		for _, n := range names {
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_count"), "_sum")
			if !strings.Contains(scrape, "# HELP "+base+" ") && !eventOnly[base] {
				t.Errorf("%s uses %s, which Postern does not export", file, n)
			}
		}
	}
}

// TestServiceUnit: the systemd unit is hardened as the design asks, may
// write only data_dir, and gives the drain time to finish.
func TestServiceUnit(t *testing.T) {
	b, err := os.ReadFile("../../configs/postern.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	cfg, err := loadConfig("../../configs/postern.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=" + cfg.DataDir + "\n",
		"AmbientCapabilities=CAP_NET_BIND_SERVICE", "User=postern", "Type=notify\n",
		// A refused configuration fails "systemctl reload" (SIGHUP would not).
		"ExecReload=/usr/local/bin/postern reload -c /etc/postern/postern.yaml\n",
		"ExecStart=/usr/local/bin/postern serve -c /etc/postern/postern.yaml"} {
		if !strings.Contains(unit, want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	// systemd's own check, where it is installed, with the binary the test built.
	if analyze, err := exec.LookPath("systemd-analyze"); err == nil {
		bin, err := buildOnce()
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(t.TempDir(), "postern.service")
		os.WriteFile(f, []byte(strings.ReplaceAll(unit, "/usr/local/bin/postern", bin)), 0o644)
		if out, err := exec.Command(analyze, "verify", f).CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	}
	// The install steps: the user exists before the configuration is made
	// readable to its group (root-owned 0640 alone is unreadable to the
	// service, and "config check" fails with "permission denied").
	steps := regexp.MustCompile(`(?m)^#   (.+)$`).FindAllStringSubmatch(unit, -1)
	useradd, cfgInstall := -1, -1
	for i, s := range steps {
		switch {
		case strings.HasPrefix(s[1], "useradd ") && strings.HasSuffix(s[1], " postern"):
			useradd = i
		case strings.HasSuffix(s[1], " /etc/postern/postern.yaml") && strings.HasPrefix(s[1], "install "):
			cfgInstall = i
			if !strings.Contains(s[1], "-m 0640") || !strings.Contains(s[1], "-g postern") {
				t.Errorf("the configuration is not installed readable to the service's group: %s", s[1])
			}
		}
	}
	if useradd < 0 || cfgInstall < 0 || useradd > cfgInstall {
		t.Errorf("install steps: useradd at %d, the configuration at %d: the user must come first", useradd, cfgInstall)
	}
	m := regexp.MustCompile(`(?m)^TimeoutStopSec=(\S+)$`).FindStringSubmatch(unit)
	if m == nil {
		t.Fatal("no TimeoutStopSec")
	}
	if stop, err := time.ParseDuration(m[1]); err != nil || stop <= cfg.Shutdown.Timeout {
		t.Errorf("TimeoutStopSec=%s must exceed shutdown.timeout (%s)", m[1], cfg.Shutdown.Timeout)
	}
}

// TestBackupWhileRunning: "postern backup" through the running daemon
// gives a directory that opens as a data_dir with the queued messages, their
// bodies and the users.
func TestBackupWhileRunning(t *testing.T) {
	d := newDaemon(t, nil)
	if out, err := d.run("pw\n", "user", "add", "app", "--password-stdin"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d.start()
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("b", 98)+"\r\n", 2000) // spooled
	var ids []string
	for _, body := range []string{"Subject: small\r\n\r\nx\r\n", big} {
		reply, err := submit(d.starttls, "app", "pw", "app@example.org", "rcpt@stuck.test", []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, queueID(reply))
	}
	dir := filepath.Join(t.TempDir(), "backup")
	out, err := d.run("", "backup", dir)
	if err != nil || !strings.Contains(out, "2 messages (1 spool files)") {
		t.Fatalf("backup: %v %s", err, out)
	}
	d.signal(syscall.SIGTERM)
	q, err := queue.Open(filepath.Join(dir, "queue.db"), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	rc, err := q.Body(ids[1])
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(rc)
	rc.Close()
	if !strings.HasSuffix(string(body), big) {
		t.Fatalf("spooled body in the backup: %d bytes", len(body))
	}
	state, err := bolt.Open(filepath.Join(dir, "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer state.Close()
	users, _ := auth.NewStore(state, nil)
	if _, err := users.Get("app"); err != nil {
		t.Fatalf("user in the backup: %v", err)
	}
}
