package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/relay/audit"
)

// haproxyConfig puts a real HAProxy in front of both submission listeners,
// as docs/operations.md ("Running several Postern nodes") shows: PROXY v1
// to 587, v2 to 465, from its own address 127.0.0.9, with SMTP health
// checks that carry a PROXY header too.
const haproxyConfig = `global
    log stderr format short local0 notice
defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 10m
    timeout server 10m
frontend submission
    bind 127.0.0.1:%d
    default_backend postern_submission
frontend submissions
    bind 127.0.0.1:%d
    default_backend postern_submissions
backend postern_submission
    source 127.0.0.9
    option tcp-check
    tcp-check expect rstring ^220
    tcp-check send QUIT\r\n
    tcp-check expect rstring ^221
    server node1 %s send-proxy check check-send-proxy inter 200ms
backend postern_submissions
    source 127.0.0.9
    option tcp-check
    tcp-check expect rstring ^220
    tcp-check send QUIT\r\n
    tcp-check expect rstring ^221
    server node1 %s send-proxy-v2 check check-send-proxy check-ssl verify none inter 200ms
`

// TestBehindHAProxy runs the daemon behind a real HAProxy: the client's
// address (not the balancer's) is the one queued, logged and written in
// the Received header; delivery leaves from the configured source address
// with its EHLO name; a PROXY header sent straight to Postern from an
// address not in submission.proxy_protocol closes the connection. Skipped
// where haproxy is not installed (.ci/run installs it).
func TestBehindHAProxy(t *testing.T) {
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy is not installed (apt-get install haproxy)")
	}
	d := newDaemon(t, nil)
	d.editConfig("  tls_listen: [\"127.0.0.1:0\"]\n", "  tls_listen: [\"127.0.0.1:0\"]\n  proxy_protocol: [127.0.0.9/32]\n")
	d.editConfig("  port: ", "  source_addresses: [{address: 127.0.0.3, helo: out3.e2e.test}]\n  port: ")
	if out, err := d.run("s3cret\n", "user", "add", "app", "--password-stdin", "--allow-from", "*@example.org"); err != nil {
		t.Fatalf("user add: %v\n%s", err, out)
	}
	var mu sync.Mutex
	var logged []map[string]any
	d.onLog = func(line map[string]any) { mu.Lock(); logged = append(logged, line); mu.Unlock() }
	d.start()

	p587, p465 := freePort(t), freePort(t)
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	os.WriteFile(cfg, fmt.Appendf(nil, haproxyConfig, p587, p465, d.starttls, d.implicit), 0o600)
	if out, err := exec.Command(haproxy, "-c", "-f", cfg).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	hout := &lockedBuffer{}
	hp := exec.Command(haproxy, "-db", "-f", cfg)
	hp.Stdout, hp.Stderr = hout, hout
	if err := hp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		hp.Process.Kill()
		hp.Wait()
		if t.Failed() {
			t.Logf("haproxy:\n%s", hout.String())
		}
	})
	front587, front465 := fmt.Sprintf("127.0.0.1:%d", p587), fmt.Sprintf("127.0.0.1:%d", p465)
	if !eventually(t, 10*time.Second, func() bool {
		c, err := net.Dial("tcp", front587)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		t.Fatal("haproxy did not start listening")
	}

	// 587 through HAProxy (PROXY v1), from 127.0.0.5.
	conn, err := dialFrom("127.0.0.5", front587)
	if err != nil {
		t.Fatal(err)
	}
	c, err := smtp.NewClientStartTLS(conn, e2eTLS)
	if err != nil {
		t.Fatalf("STARTTLS through haproxy: %v", err)
	}
	if _, err := submitOn(c, "app", "s3cret", "app@example.org", "rcpt@dest.test", []byte("Subject: lb\r\n\r\nvia haproxy\r\n")); err != nil {
		t.Fatalf("submission through haproxy: %v", err)
	}
	c.Close()
	select {
	case <-d.sink.Arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("message never reached the MX")
	}
	got := d.sink.Received()[0]
	if first, _, _ := strings.Cut(string(got.Data), "\r\n"); !strings.Contains(first, "([127.0.0.5])") {
		t.Errorf("Received header %q does not name the client 127.0.0.5", first)
	}
	if got.Peer != "127.0.0.3" || got.Helo != "out3.e2e.test" {
		t.Errorf("the MX saw the delivery from %s saying EHLO %s; want 127.0.0.3 and out3.e2e.test", got.Peer, got.Helo)
	}

	// 465 through HAProxy (PROXY v2 before the ClientHello), from 127.0.0.6;
	// stuck.test's MX never answers, so the message stays in the queue.
	raw, err := dialFrom("127.0.0.6", front465)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, e2eTLS)
	c = smtp.NewClient(tc)
	reply, err := submitOn(c, "app", "s3cret", "app@example.org", "rcpt@stuck.test", []byte("Subject: lb2\r\n\r\nvia haproxy\r\n"))
	if err != nil {
		t.Fatalf("implicit TLS through haproxy: %v", err)
	}
	c.Close()
	out, err := d.run("", "queue", "list", "--json")
	type listed struct {
		ID       string `json:"id"`
		ClientIP string `json:"client_ip"`
	}
	var msgs []listed
	if err := json.Unmarshal([]byte(out), &msgs); err != nil {
		t.Fatalf("queue list: %v\n%s", err, out)
	}
	if i := slices.IndexFunc(msgs, func(m listed) bool { return m.ID == queueID(reply) }); i < 0 || msgs[i].ClientIP != "127.0.0.6" {
		t.Fatalf("queue list should show %s from 127.0.0.6:\n%s", queueID(reply), out)
	}

	// The evidence of the first delivery names the source address.
	var evidence string
	eventually(t, 10*time.Second, func() bool {
		evidence, _ = d.run("", "audit", "--rcpt-domain", "dest.test", "--format", "json")
		return strings.Contains(evidence, "rcpt@dest.test")
	})
	var rec audit.Record
	if err := json.Unmarshal([]byte(evidence), &rec); err != nil || rec.SourceIP != "127.0.0.3" {
		t.Errorf("audit record should name source 127.0.0.3: %v\n%s", err, evidence)
	}

	// A PROXY header straight to Postern from 127.0.0.1, which is not a
	// trusted balancer: the greeting, then the connection is closed.
	direct, err := net.Dial("tcp", d.starttls)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	direct.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(direct, "PROXY TCP4 203.0.113.7 127.0.0.1 40000 587\r\n")
	br := bufio.NewReader(direct)
	if line, _ := br.ReadString('\n'); !strings.HasPrefix(line, "220 ") {
		t.Fatalf("greeting: %q", line)
	}
	if line, err := br.ReadString('\n'); err == nil {
		t.Fatalf("the connection went on after an untrusted PROXY header: %q", line)
	}

	has := func(msg, key, value string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, l := range logged {
			if l["msg"] == msg && (key == "" || l[key] == value) {
				return true
			}
		}
		return false
	}
	if !eventually(t, 10*time.Second, func() bool {
		return has("PROXY protocol header from an address not in submission.proxy_protocol; connection closed", "client_ip", "127.0.0.1")
	}) {
		t.Fatal("the untrusted PROXY header was not logged")
	}
	for _, ip := range []string{"127.0.0.5", "127.0.0.6"} {
		if !has("authenticated", "client_ip", ip) {
			t.Errorf("no authentication logged from client_ip %s", ip)
		}
	}
	if !has("authenticated", "proxy_ip", "127.0.0.9") {
		t.Error("the balancer's address is not logged as proxy_ip")
	}
	// HAProxy's health checks (check-send-proxy) are served, never refused.
	for _, msg := range []string{"PROXY protocol header missing from a trusted address (submission.proxy_protocol); connection closed",
		"malformed PROXY protocol header from a trusted address; connection closed"} {
		if has(msg, "", "") {
			t.Errorf("logged %q", msg)
		}
	}
	if strings.Contains(hout.String(), "DOWN") {
		t.Errorf("haproxy took the node down:\n%s", hout.String())
	}
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestOperationsHAProxyExampleIsValid: the HAProxy configuration that
// docs/operations.md shows passes haproxy -c.
func TestOperationsHAProxyExampleIsValid(t *testing.T) {
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy is not installed (apt-get install haproxy)")
	}
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "\n```haproxy\n")
	example, _, closed := strings.Cut(rest, "\n```\n")
	if !ok || !closed {
		t.Fatal("docs/operations.md has no ```haproxy block")
	}
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	os.WriteFile(cfg, []byte(example+"\n"), 0o600)
	if out, err := exec.Command(haproxy, "-c", "-f", cfg).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c on the documented configuration: %v\n%s", err, out)
	}
}

func dialFrom(local, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 10 * time.Second}
	return d.Dial("tcp", addr)
}

// freePort finds a port for a listener the test cannot ask for port 0
// (haproxy's), by taking one and giving it back.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
