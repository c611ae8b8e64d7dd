package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
	"github.com/postern/postern/relay/smtptest"
	"github.com/postern/postern/resolver/resolvertest"
)

// buildBinary compiles postern once per test run.
var buildOnce = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "postern-e2e")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "postern")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

type daemon struct {
	t        testing.TB
	bin, cfg string
	dataDir  string
	cmd      *exec.Cmd
	starttls string
	implicit string
	web      string // the admin HTTP listener
	exited   chan error
	sink     *smtptest.MX
	dns      *resolvertest.Server
	wrap     []string                  // a command that runs serve (unshare, a shell setting the umask)
	onLog    func(line map[string]any) // sees every JSON log line, when set before start

	logMu  sync.Mutex
	logged []map[string]any // every JSON line serve wrote
}

// waitLog waits for a log line that match accepts, and returns it (nil
// after 10 seconds without one).
func (d *daemon) waitLog(match func(line map[string]any) bool) map[string]any {
	var found map[string]any
	eventually(d.t, 10*time.Second, func() bool {
		d.logMu.Lock()
		defer d.logMu.Unlock()
		for _, l := range d.logged {
			if match(l) {
				found = l
				return true
			}
		}
		return false
	})
	return found
}

// The daemon's world: its own DNS, where dest.test's MX is the test's sink
// and stuck.test's MX accepts no connections (mail to it stays queued).
const e2eZone = `
dest.test.       60 IN MX 10 mx.dest.test.
mx.dest.test.    60 IN A 127.0.0.1
stuck.test.      60 IN MX 10 mx.stuck.test.
mx.stuck.test.   60 IN A 127.0.0.2
`

func newDaemon(t testing.TB, configureMX func(*smtptest.MX)) *daemon {
	t.Helper()
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	// The zones are signed under a root key of the test's own, which the
	// daemon is given as its trust anchor: delivery validates DNSSEC as it
	// would on the internet.
	dns, anchors := resolvertest.StartSigned(t, e2eZone)
	sink := smtptest.Start(t, configureMX)
	dir := t.TempDir()
	anchorFile := filepath.Join(dir, "root.anchor")
	var anchorText strings.Builder
	for _, rr := range anchors {
		anchorText.WriteString(rr.String() + "\n")
	}
	os.WriteFile(anchorFile, []byte(anchorText.String()), 0o600)
	cfg := filepath.Join(dir, "postern.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`hostname: e2e.test
data_dir: %s
log: {format: json, level: info}
submission:
  listen: ["127.0.0.1:0"]
  tls_listen: ["127.0.0.1:0"]
dns:
  servers: [%q]
  trust_anchor_file: %s
delivery:
  port: %d
  poll_interval: 100ms
shutdown: {timeout: 5s}
admin: {metrics_listen: "127.0.0.1:0"}
`, filepath.Join(dir, "data"), dns.Addr, anchorFile, sink.Port)), 0o600)
	return &daemon{t: t, bin: bin, cfg: cfg, dataDir: filepath.Join(dir, "data"), sink: sink, dns: dns}
}

// run executes a postern subcommand to completion.
func (d *daemon) run(stdin string, args ...string) (string, error) {
	cmd := exec.Command(d.bin, append(args, "-c", d.cfg)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// start launches serve and waits until both listeners are reported.
func (d *daemon) start() {
	d.t.Helper()
	args := append(append([]string{}, d.wrap...), d.bin, "serve", "-c", d.cfg)
	d.cmd = exec.Command(args[0], args[1:]...)
	stderr, _ := d.cmd.StderrPipe()
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.exited = make(chan error, 1)
	ready := make(chan struct{})
	stopped := make(chan struct{})
	// A test that leaves the daemon running must not leave a process (and
	// this reader) behind.
	d.t.Cleanup(func() {
		select {
		case <-stopped:
		default:
			d.cmd.Process.Kill()
			<-stopped
		}
	})
	go func() {
		defer close(stopped)
		sc := bufio.NewScanner(stderr)
		started := false
		for sc.Scan() {
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				d.t.Logf("postern: %s", sc.Text())
				continue
			}
			if d.onLog != nil {
				d.onLog(line)
			}
			if lvl, _ := line["level"].(string); lvl == "ERROR" {
				d.t.Logf("postern: %s", sc.Text())
			}
			d.logMu.Lock()
			d.logged = append(d.logged, line)
			d.logMu.Unlock()
			switch line["msg"] {
			case "submission listening":
				if line["mode"] == "starttls" {
					d.starttls = line["addr"].(string)
				} else {
					d.implicit = line["addr"].(string)
				}
			case "admin listening":
				d.web = line["addr"].(string)
			case "postern started":
				if !started {
					started = true
					close(ready)
				}
			}
		}
		d.exited <- d.cmd.Wait()
	}()
	select {
	case <-ready:
	case err := <-d.exited:
		d.t.Fatalf("postern exited at start: %v", err)
	case <-time.After(30 * time.Second):
		d.t.Fatal("postern did not start")
	}
}

func (d *daemon) signal(sig syscall.Signal) error {
	d.cmd.Process.Signal(sig)
	select {
	case err := <-d.exited:
		return err
	case <-time.After(30 * time.Second):
		d.t.Fatal("postern did not exit")
		return nil
	}
}

var e2eTLS = &tls.Config{InsecureSkipVerify: true}

func submit(addr, user, pass, from, to string, body []byte) (string, error) {
	c, err := smtp.DialStartTLS(addr, e2eTLS)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return submitOn(c, user, pass, from, to, body)
}

func submitOn(c *smtp.Client, user, pass, from, to string, body []byte) (string, error) {
	if user != "" {
		if err := c.Auth(sasl.NewPlainClient("", user, pass)); err != nil {
			return "", err
		}
	}
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	if err := c.Rcpt(to, nil); err != nil {
		return "", err
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	w.Write(body)
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

func queueID(reply string) string {
	_, id, _ := strings.Cut(reply, "queued as ")
	return id
}

func TestBinaryLifecycle(t *testing.T) {
	d := newDaemon(t, nil)
	if out, err := d.run("s3cret\n", "user", "add", "app", "--password-stdin", "--allow-from", "*@example.org"); err != nil {
		t.Fatalf("user add without daemon: %v\n%s", err, out)
	}
	d.start()
	content := "Subject: e2e\r\nMessage-ID: <e2e-1@example.org>\r\n\r\nhello\r\n"
	if _, err := submit(d.starttls, "app", "s3cret", "app@example.org", "rcpt@dest.test", []byte(content)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.sink.Arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("message never reached the MX")
	}
	arrived := string(d.sink.Received()[0].Data)
	if !strings.HasSuffix(arrived, content) || !strings.HasPrefix(arrived, "Received: from ") ||
		!strings.Contains(arrived, "by e2e.test (Postern) with ESMTPSA") {
		t.Fatalf("at the MX: %q", arrived)
	}
	// The evidence of that delivery, through the admin socket. The outcome
	// is recorded just after the MX answers: wait for it.
	var evidence string
	eventually(t, 10*time.Second, func() bool {
		evidence, _ = d.run("", "audit", "--rcpt-domain", "dest.test", "--format", "json")
		return strings.Contains(evidence, "rcpt@dest.test")
	})
	var rec audit.Record
	if err := json.Unmarshal([]byte(evidence), &rec); err != nil || rec.MessageID != "<e2e-1@example.org>" || rec.Result != "delivered" ||
		rec.IP != "127.0.0.1" || rec.TLSVersion == "" || rec.PeerCertSHA256 == "" || rec.PolicyMode != "default may" || rec.Verified {
		t.Fatalf("audit record: %v\n%s", err, evidence)
	}
	if out, err := d.run("", "tlsrpt", "show"); err != nil || !regexp.MustCompile(`dest\.test\s+no-policy-found\s+1\s+0`).MatchString(out) {
		t.Fatalf("tlsrpt show: %v\n%s", err, out)
	}
	if out, err := d.run("", "audit", "--since", "1h"); err != nil || !strings.Contains(out, "1 records: 0 delivered verified, 1 delivered unverified") {
		t.Fatalf("audit table: %v\n%s", err, out)
	}
	reply, err := submit(d.starttls, "app", "s3cret", "app@example.org", "rcpt@stuck.test", []byte("Subject: e2e\r\n\r\nhello\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	id := queueID(reply)
	if id == "" {
		t.Fatalf("reply %q has no queue ID", reply)
	}
	// While the daemon runs, the CLI goes through the admin socket.
	out, err := d.run("", "queue", "list", "--json")
	var msgs []messageView
	if err != nil || json.Unmarshal([]byte(out), &msgs) != nil || len(msgs) != 1 || msgs[0].ID != id {
		t.Fatalf("queue list: %v %s", err, out)
	}
	if out, err := d.run("", "queue", "show", id); err != nil || !strings.Contains(out, "rcpt@stuck.test") {
		t.Fatalf("queue show: %v %s", err, out)
	}
	if _, err := d.run("", "queue", "show", "nonexistent"); err == nil {
		t.Fatal("queue show of a missing ID succeeded")
	} else if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Fatalf("queue show of a missing ID: %v", err)
	}
	if out, err := d.run("pw2\n", "user", "add", "second", "--password-stdin"); err != nil {
		t.Fatalf("user add through the socket: %v %s", err, out)
	}
	if out, err := d.run("", "user", "require-tls", "second", "on"); err != nil {
		t.Fatalf("user require-tls through the socket: %v %s", err, out)
	}
	if out, err := d.run("", "user", "header-from", "second", "any"); err != nil {
		t.Fatalf("user header-from through the socket: %v %s", err, out)
	}
	if _, err := d.run("", "user", "header-from", "second", "maybe"); err == nil {
		t.Fatal("user header-from took neither check nor any")
	}
	if out, _ := d.run("", "user", "list"); !regexp.MustCompile(`second\s+\(any\)\s+any\s+yes`).MatchString(out) ||
		!regexp.MustCompile(`app\s+\*@example.org\s+checked\s+no`).MatchString(out) {
		t.Fatalf("user list does not show require-tls and header-from:\n%s", out)
	}
	c, err := smtp.DialTLS(d.implicit, e2eTLS)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := submitOn(c, "second", "pw2", "x@anywhere.test", "rcpt@stuck.test", []byte("Subject: 2\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("new user submits at once: %v", err)
	}
	c.Close()
	if out, err := d.run("", "queue", "hold", id); err != nil || !strings.Contains(out, "hold done") {
		t.Fatalf("hold: %v %s", err, out)
	}
	if err := d.signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM exit: %v", err)
	}
	// Without the daemon the CLI opens the database itself.
	out, err = d.run("", "queue", "list", "--state", "held", "--json")
	msgs = nil
	if err != nil || json.Unmarshal([]byte(out), &msgs) != nil || len(msgs) != 1 || msgs[0].State != "held" {
		t.Fatalf("offline queue list: %v %s", err, out)
	}
}

func TestBadConfigNamesKey(t *testing.T) {
	d := newDaemon(t, nil)
	os.WriteFile(d.cfg, []byte("submission:\n  max_recipients: 0\n  tls:\n    min_version: \"1.0\"\nbogus_key: 1\n"), 0o600)
	out, err := d.run("", "config", "check")
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{d.cfg, "bogus_key"} {
		if !strings.Contains(out, want) {
			t.Errorf("error %q does not name %q", out, want)
		}
	}
	os.WriteFile(d.cfg, []byte("submission:\n  max_recipients: 0\n  tls:\n    min_version: \"1.0\"\n"), 0o600)
	out, _ = d.run("", "config", "check")
	for _, want := range []string{"submission.max_recipients", "submission.tls.min_version"} {
		if !strings.Contains(out, want) {
			t.Errorf("error %q does not name %q", out, want)
		}
	}
}

// TestCrashLosesNoAcknowledgedMessage is the chaos test: eight clients
// submit to the built binary while it is killed with SIGKILL at random
// moments (at least five times) and restarted; at the end every message
// answered 250 must have reached the MX, whole, at least once (counted by
// Message-ID). POSTERN_CHAOS_MESSAGES sets how many acknowledgements the
// run needs (default 2,000).
func TestCrashLosesNoAcknowledgedMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	minAcked := 2000
	if n, err := strconv.Atoi(os.Getenv("POSTERN_CHAOS_MESSAGES")); err == nil && n > 0 {
		minAcked = n
	}
	const clients, minKills, maxRounds = 8, 5, 60
	d := newDaemon(t, nil)
	if out, err := d.run("pw\n", "user", "add", "load", "--password-stdin"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	var mu sync.Mutex
	acked := map[string][32]byte{} // Message-ID -> sha256 of the submitted content
	kills := 0
	for ; kills < maxRounds && (len(acked) < minAcked || kills < minKills); kills++ {
		d.start()
		stop := make(chan struct{})
		// The kill point follows progress, not the clock, so the test means
		// the same on a slow machine or under -race: after a random number
		// of acknowledgements around the share of this round, plus a random
		// few milliseconds to land inside transactions.
		share := minAcked / minKills
		target := share/2 + rand.IntN(share)
		progress := make(chan struct{}, 1<<12)
		round := kills
		wg := d.load(clients, stop, func(w, i int) (string, []byte) {
			msgID := fmt.Sprintf("<%d.%d.%d@load>", round, w, i)
			return msgID, []byte(fmt.Sprintf("Subject: crash %d/%d/%d\r\nMessage-ID: %s\r\n\r\n%s\r\n",
				round, w, i, msgID, strings.Repeat(strings.Repeat("0123456789", 10)+"\r\n", 20)))
		}, func(msgID string, content []byte) {
			mu.Lock()
			acked[msgID] = sha256.Sum256(content)
			mu.Unlock()
			select {
			case progress <- struct{}{}:
			default:
			}
		})
		deadline := time.After(30 * time.Second)
	wait:
		for n := 0; n < target; n++ {
			select {
			case <-progress:
			case <-deadline:
				break wait
			}
		}
		time.Sleep(time.Duration(rand.IntN(5000)) * time.Microsecond)
		d.signal(syscall.SIGKILL)
		close(stop)
		wg.Wait()
	}
	// One more start runs recovery, as an operator's restart would, and
	// delivers what is left.
	d.start()
	delivered := map[string]int{}
	damaged := 0
	count := func() {
		clear(delivered)
		damaged = 0
		for _, m := range d.sink.Received() {
			i := bytes.Index(m.Data, []byte("Subject: crash "))
			id := messageID(m.Data)
			if i < 0 || id == "" {
				continue
			}
			delivered[id]++
			if sum, ok := acked[id]; ok && sha256.Sum256(m.Data[i:]) != sum {
				damaged++
			}
		}
	}
	eventually(t, 2*time.Minute, func() bool { count(); return allIn(acked, delivered) })
	d.signal(syscall.SIGTERM)
	count()
	lost, duplicates := 0, 0
	for id := range acked {
		switch n := delivered[id]; {
		case n == 0:
			lost++
		case n > 1:
			duplicates += n - 1
		}
	}
	t.Logf("chaos: %d SIGKILLs, %d acknowledged, %d delivered (%d duplicate deliveries), %d lost, %d damaged",
		kills, len(acked), len(delivered), duplicates, lost, damaged)
	if len(acked) < minAcked {
		t.Fatalf("only %d messages acknowledged; the test needs %d to mean something", len(acked), minAcked)
	}
	if lost != 0 || damaged != 0 {
		t.Fatalf("%d acknowledged messages lost, %d damaged", lost, damaged)
	}
}

// TestSIGTERMDrainsWithoutRedelivery stops the daemon with SIGTERM while
// submissions and deliveries are in flight (the MX takes its time): every
// acknowledged message arrives exactly once across the stop and restart.
func TestSIGTERMDrainsWithoutRedelivery(t *testing.T) {
	d := newDaemon(t, func(mx *smtptest.MX) {
		mx.RcptReply = func(string) error { time.Sleep(300 * time.Millisecond); return nil }
	})
	if out, err := d.run("pw\n", "user", "add", "load", "--password-stdin"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d.start()
	var mu sync.Mutex
	acked := map[string]bool{}
	wg := d.load(4, nil, func(w, i int) (string, []byte) {
		msgID := fmt.Sprintf("<%d.%d@drain>", w, i)
		return msgID, []byte("Subject: drain\r\nMessage-ID: " + msgID + "\r\n\r\nx\r\n")
	}, func(msgID string, _ []byte) {
		mu.Lock()
		acked[msgID] = true
		mu.Unlock()
	})
	// Stop once deliveries are under way, so some are in flight.
	select {
	case <-d.sink.Arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("nothing delivered")
	}
	if err := d.signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM exit: %v", err)
	}
	wg.Wait()
	d.start()
	delivered := map[string]int{}
	eventually(t, time.Minute, func() bool {
		clear(delivered)
		for _, m := range d.sink.Received() {
			delivered[messageID(m.Data)]++
		}
		return allIn(acked, delivered)
	})
	d.signal(syscall.SIGTERM)
	for id := range acked {
		if delivered[id] != 1 {
			t.Errorf("%s delivered %d times", id, delivered[id])
		}
	}
	t.Logf("drain: %d acknowledged, each delivered once", len(acked))
}

// load runs clients that each submit, as user load, the messages next
// makes until stop closes or the daemon stops answering, and tells acked of
// each one answered 250. Wait on the result for them to finish.
func (d *daemon) load(clients int, stop <-chan struct{}, next func(client, i int) (msgID string, content []byte),
	acked func(msgID string, content []byte)) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.DialStartTLS(d.starttls, e2eTLS)
			if err != nil {
				return
			}
			defer c.Close()
			if err := c.Auth(sasl.NewPlainClient("", "load", "pw")); err != nil {
				return
			}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				msgID, content := next(w, i)
				if _, err := submitOn(c, "", "", "load@example.org", "rcpt@dest.test", content); err != nil {
					return // the daemon died or closed mid-transaction: not acknowledged
				}
				acked(msgID, content)
			}
		}()
	}
	return &wg
}

func messageID(data []byte) string {
	m := regexp.MustCompile(`(?m)^Message-ID: (<[^>]*>)\r$`).FindSubmatch(data)
	if m == nil {
		return ""
	}
	return string(m[1])
}

func allIn[V any](want map[string]V, have map[string]int) bool {
	for id := range want {
		if have[id] == 0 {
			return false
		}
	}
	return true
}

func TestDNSLookupShowsTheChain(t *testing.T) {
	d := newDaemon(t, nil)
	out, err := d.run("", "dns", "lookup", "dest.test", "MX")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"dest.test. MX: secure", "MX\t10 mx.dest.test.", "chain of trust", ". DNSKEY set signed by key", "dest.test. MX signed by ."} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	out, err = d.run("", "dns", "lookup", "absent.test", "--json")
	if err != nil || !strings.Contains(out, `"nxdomain": true`) || !strings.Contains(out, `"security": "secure"`) {
		t.Fatalf("NXDOMAIN as JSON: %v\n%s", err, out)
	}
	if out, err := d.run("", "dns", "probe"); err != nil || !strings.Contains(out, "passes DNSSEC") {
		t.Fatalf("probe: %v\n%s", err, out)
	}
	// Without the test's anchor, the built-in IANA root cannot validate
	// the test's root: bogus, exit status 4.
	cmd := exec.Command(d.bin, "dns", "lookup", "dest.test", "MX", "-c", d.cfg)
	cmd.Env = append(os.Environ(), "POSTERN_DNS_TRUST_ANCHOR_FILE=")
	out2, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 4 || !strings.Contains(string(out2), "bogus") {
		t.Fatalf("foreign root: %v\n%s", err, out2)
	}
}

func TestPolicyCheck(t *testing.T) {
	d := newDaemon(t, nil)
	out, err := d.run("", "policy", "check", "dest.test")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"MX (secure): 10 mx.dest.test", "MTA-STS record: none", "local policy: none", "decision: default may",
		"downgrade memory (warn): nothing remembered"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	out, err = d.run("", "policy", "check", "dest.test", "--connect")
	if err != nil || !strings.Contains(out, "127.0.0.1:") || !strings.Contains(out, "STARTTLS, TLS 1.3") || !strings.Contains(out, `certificate "mx.test"`) {
		t.Fatalf("--connect: %v\n%s", err, out)
	}
	if out, err := d.run("", "tlsrpt", "send", "--day", "2026-01-01"); err != nil || !strings.Contains(out, "nothing to send for 2026-01-01") {
		t.Fatalf("tlsrpt send without a daemon: %v\n%s", err, out)
	}
	if out, err := d.run("", "policy", "forget", "dest.test"); err == nil || !strings.Contains(out, "nothing is remembered") {
		t.Fatalf("forget without memory: %v\n%s", err, out)
	}
	// dane-only where no TLSA is published: undeliverable, exit status 4.
	cmd := exec.Command(d.bin, "policy", "check", "dest.test", "-c", d.cfg)
	cmd.Env = append(os.Environ(), "POSTERN_TLS_DEFAULT=dane-only")
	out2, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 4 || !strings.Contains(string(out2), "do not use") || !strings.Contains(string(out2), "dane-only") {
		t.Fatalf("dane-only: %v\n%s", err, out2)
	}
	// While the daemon runs (and holds state.db), the daemon answers, with
	// its MTA-STS cache and downgrade memory.
	d.start()
	out, err = d.run("", "policy", "check", "dest.test")
	if err != nil || strings.Contains(out, "not readable") || !strings.Contains(out, "MX (secure): 10 mx.dest.test") ||
		!strings.Contains(out, "downgrade memory (warn): nothing remembered") {
		t.Fatalf("policy check through the daemon: %v\n%s", err, out)
	}
	if out, err := d.run("", "policy", "check", "dest.test", "--connect"); err != nil || strings.Count(out, "domain dest.test") != 1 ||
		!strings.Contains(out, "STARTTLS, TLS 1.3") {
		t.Fatalf("--connect through the daemon: %v\n%s", err, out)
	}
	d.signal(syscall.SIGTERM)
}

func TestDKIMKeygenAndSigning(t *testing.T) {
	d := newDaemon(t, nil)
	keyFile := filepath.Join(t.TempDir(), "ed.pem")
	out, err := d.run("", "dkim", "keygen", "example.org", "ed2026", "--algorithm", "ed25519", "--out", keyFile)
	if err != nil || !strings.Contains(out, `ed2026._domainkey.example.org. IN TXT ( "v=DKIM1; k=ed25519; p=`) {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	if out, err := d.run("", "dkim", "keygen", "example.org", "ed2026", "--algorithm", "ed25519", "--out", keyFile); err == nil {
		t.Fatalf("keygen overwrote a key:\n%s", out)
	}
	record := out[strings.Index(out, "v=DKIM1"):strings.LastIndex(out, `"`)]
	f, _ := os.OpenFile(d.cfg, os.O_APPEND|os.O_WRONLY, 0)
	fmt.Fprintf(f, "dkim:\n  keys:\n    - {domain: example.org, selector: ed2026, key_file: %s}\n", keyFile)
	f.Close()
	if out, err := d.run("s3cret\n", "user", "add", "app", "--password-stdin"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d.start()
	if _, err := submit(d.starttls, "app", "s3cret", "app@example.org", "rcpt@dest.test",
		[]byte("From: App <app@example.org>\r\nSubject: signed\r\n\r\nhello\r\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.sink.Arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("message never reached the MX")
	}
	arrived := d.sink.Received()[0].Data
	verifications, err := msgauth.VerifyWithOptions(bytes.NewReader(arrived), &msgauth.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			if name != "ed2026._domainkey.example.org" {
				return nil, fmt.Errorf("asked for %s", name)
			}
			return []string{record}, nil
		},
	})
	if err != nil || len(verifications) != 1 || verifications[0].Err != nil {
		t.Fatalf("verification at the MX: %v %+v\n%s", err, verifications, arrived)
	}
}

// TestDiskFull puts data_dir on a small tmpfs and fills it: submissions get
// 452 4.3.1, the daemon keeps running, what was queued stays whole, and
// submissions are accepted again once space returns. It needs root (for
// the mount) and is skipped without it.
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	d := newDaemon(t, nil)
	os.MkdirAll(d.dataDir, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", d.dataDir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", d.dataDir).Run() })
	if out, err := d.run("pw\n", "user", "add", "app", "--password-stdin"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d.start()
	acked := map[string][32]byte{} // queue ID -> sha256 of the content
	n := 0
	send := func(size int) (string, error) {
		n++
		content := []byte(fmt.Sprintf("Subject: full %d\r\nMessage-ID: <%d@full>\r\n\r\n%s\r\n", n, n,
			strings.Repeat(strings.Repeat("x", 98)+"\r\n", size/100)))
		reply, err := submit(d.starttls, "app", "pw", "app@example.org", "rcpt@stuck.test", content)
		if err == nil {
			acked[queueID(reply)] = sha256.Sum256(content)
		}
		return reply, err
	}
	for _, size := range []int{100, 300 << 10, 100, 300 << 10} {
		if _, err := send(size); err != nil {
			t.Fatalf("before the disk filled: %v", err)
		}
	}
	// Fill the file system.
	filler, err := os.Create(filepath.Join(d.dataDir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 256<<10)
	for {
		if _, err := filler.Write(chunk); err != nil {
			break
		}
	}
	filler.Close()
	// Large messages need spool space; small ones fit in pages the queue
	// already has until they too run out.
	for _, size := range []int{300 << 10, 100} {
		var err error
		for i := 0; i < 2000 && err == nil; i++ {
			_, err = send(size)
		}
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 452 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 1}) {
			t.Fatalf("size %d on a full disk: %v, want 452 4.3.1", size, err)
		}
	}
	out, err := d.run("", "queue", "list", "--json")
	var msgs []messageView
	if err != nil || json.Unmarshal([]byte(out), &msgs) != nil || len(msgs) != len(acked) {
		t.Fatalf("queue list on a full disk: %v, %d listed, %d acknowledged\n%s", err, len(msgs), len(acked), out)
	}
	os.Remove(filepath.Join(d.dataDir, "filler"))
	for _, size := range []int{100, 300 << 10} {
		if _, err := send(size); err != nil {
			t.Fatalf("after space returned: %v", err)
		}
	}
	if err := d.signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM exit: %v", err)
	}
	q, err := queue.Open(filepath.Join(d.dataDir, "queue.db"), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for id, sum := range acked {
		rc, err := q.Body(id)
		if err != nil {
			t.Fatalf("acknowledged %s: %v", id, err)
		}
		body, _ := io.ReadAll(rc)
		rc.Close()
		if i := bytes.Index(body, []byte("Subject: full ")); i < 0 || sha256.Sum256(body[i:]) != sum {
			t.Fatalf("acknowledged %s damaged", id)
		}
	}
	t.Logf("disk full: %d messages acknowledged and intact; 452 4.3.1 while full; accepted again after", len(acked))
}

// editConfig changes the daemon's configuration before it starts.
func (d *daemon) editConfig(old, new string) {
	d.t.Helper()
	b, _ := os.ReadFile(d.cfg)
	if !strings.Contains(string(b), old) {
		d.t.Fatalf("config has no %q", old)
	}
	os.WriteFile(d.cfg, []byte(strings.Replace(string(b), old, new, 1)), 0o600)
}
