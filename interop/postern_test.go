package interop

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/relay/audit"
)

// Postern's own address: submission on the standard ports 587 (STARTTLS)
// and 465 (implicit TLS).
const (
	posternIP   = "127.77.0.25"
	submitUser  = "interop"
	submitPass  = "interop-secret-1"
	senderAddr  = "alice@sender.test"
	posternHost = "postern.sender.test"
)

type postern struct {
	bin, cfg string
	proc     *proc
}

func (p *postern) starttlsAddr() string { return posternIP + ":587" }
func (p *postern) implicitAddr() string { return posternIP + ":465" }

// buildPostern compiles the binary under test, as cmd/postern's e2e tests do.
func buildPostern(dir string) (string, error) {
	_, self, _, _ := runtime.Caller(0)
	bin := filepath.Join(dir, "postern")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/postern")
	cmd.Dir = filepath.Dir(filepath.Dir(self))
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return bin, nil
}

type dkimKey struct {
	domain, selector, algorithm, file string
	record                            string // the TXT record "postern dkim keygen" printed
}

// makeDKIMKeys makes one RSA-2048 and one Ed25519 key for sender.test with
// Postern's own keygen; the TXT records it prints go into knot's zone as
// printed.
func makeDKIMKeys(bin, dir string) ([]dkimKey, error) {
	keys := []dkimKey{
		{domain: "sender.test", selector: "rsa2026", algorithm: "rsa"},
		{domain: "sender.test", selector: "ed2026", algorithm: "ed25519"},
	}
	for i := range keys {
		k := &keys[i]
		k.file = filepath.Join(dir, k.selector+".pem")
		out, err := run(nil, bin, "dkim", "keygen", k.domain, k.selector, "--algorithm", k.algorithm, "--out", k.file)
		if err != nil {
			return nil, err
		}
		var rec []string
		for _, line := range strings.Split(out, "\n") {
			if line != "" && !strings.HasPrefix(line, ";") {
				rec = append(rec, line)
			}
		}
		k.record = strings.Join(rec, "\n")
	}
	return keys, nil
}

func (w *world) dkimRecords() []string {
	var out []string
	for _, k := range w.dkim {
		out = append(out, k.record)
	}
	return out
}

func (w *world) posternConfig() string {
	var pol strings.Builder
	for _, r := range w.receivers {
		fmt.Fprintf(&pol, "    - {domain: %s, mode: verify}\n", r.domain("verify"))
		fmt.Fprintf(&pol, "    - {domain: %s, mode: verify}\n", r.domain("verify-wrong-name"))
		fmt.Fprintf(&pol, "    - {domain: %s, mode: encrypt}\n", r.domain("encrypt-no-tls"))
	}
	var keys strings.Builder
	for _, k := range w.dkim {
		fmt.Fprintf(&keys, "    - {domain: %s, selector: %s, key_file: %s}\n", k.domain, k.selector, k.file)
	}
	return fmt.Sprintf(`hostname: %[1]s
data_dir: %[2]s/postern-data
log: {format: json, level: debug}
submission:
  listen: ["%[3]s:587"]
  tls_listen: ["%[3]s:465"]
  max_message_bytes: 36700160
dns:
  servers: ["%[4]s:53"]
  trust_anchor_file: %[5]s
delivery:
  port: 25
  poll_interval: 200ms
  retry: [2s]
  reuse_idle: 5s
  routes:
%[9]stls:
  default: may
  ca_file: %[6]s
  policies:
%[7]sdkim:
  keys:
%[8]stlsrpt:
  enabled: true
  organization_name: Postern interop
  contact_info: mailto:ops@sender.test
shutdown: {timeout: 5s}
admin: {metrics_listen: ""}
`, posternHost, w.dir, posternIP, unboundAddr, w.dns.anchorFile, w.ca.file, pol.String(), keys.String(), w.routes())
}

func startPostern(w *world, bin string) (*postern, error) {
	p := &postern{bin: bin, cfg: filepath.Join(w.dir, "postern.yaml")}
	if err := writeFile(p.cfg, w.posternConfig(), 0o600); err != nil {
		return nil, err
	}
	if out, err := p.cli(submitPass+"\n", "user", "add", submitUser, "--password-stdin"); err != nil {
		return nil, fmt.Errorf("user add: %w\n%s", err, out)
	}
	var err error
	p.proc, err = w.spawn("postern", nil, bin, "serve", "-c", p.cfg)
	if err != nil {
		return nil, err
	}
	if err := p.proc.waitListening(p.starttlsAddr()); err != nil {
		return nil, err
	}
	return p, p.proc.waitListening(p.implicitAddr())
}

func (p *postern) stop() {
	if p.proc != nil {
		p.proc.stop()
	}
}

// cli runs a postern subcommand (through the admin socket while serving).
func (p *postern) cli(stdin string, args ...string) (string, error) {
	cmd := exec.Command(p.bin, append(args, "-c", p.cfg)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

var insecureTLS = &tls.Config{InsecureSkipVerify: true}

// submit hands a message to Postern over 587 and returns the queue ID.
func (p *postern) submit(from string, to []string, content []byte) (string, error) {
	c, err := smtp.DialStartTLS(p.starttlsAddr(), insecureTLS)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", submitUser, submitPass)); err != nil {
		return "", err
	}
	// SMTPUTF8 for UTF-8 addresses or header fields (RFC 6531, 6532).
	var opts *smtp.MailOptions
	if hasNonASCII(from, to) || hasNonASCII(string(headerOf(content)), nil) {
		opts = &smtp.MailOptions{UTF8: true}
	}
	// BODY=8BITMIME for 8-bit content (RFC 6152).
	if hasNonASCII(string(content), nil) {
		if opts == nil {
			opts = &smtp.MailOptions{}
		}
		opts.Body = smtp.Body8BitMIME
	}
	if err := c.Mail(from, opts); err != nil {
		return "", err
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt, nil); err != nil {
			return "", err
		}
	}
	wc, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := wc.Write(content); err != nil {
		return "", err
	}
	resp, err := wc.CloseWithResponse()
	if err != nil {
		return "", err
	}
	_, id, _ := strings.Cut(resp.StatusText, "queued as ")
	return strings.TrimSpace(id), c.Quit()
}

func hasNonASCII(from string, to []string) bool {
	for _, s := range append([]string{from}, to...) {
		for i := 0; i < len(s); i++ {
			if s[i] >= 0x80 {
				return true
			}
		}
	}
	return false
}

// listedMessage is a message as `postern queue list --json` prints it (the
// CLI's documented output, not the queue's storage format).
type listedMessage struct {
	ID         string            `json:"id"`
	State      string            `json:"state"`
	Recipients []listedRecipient `json:"recipients"`
}

// listedRecipient is one recipient of a listedMessage.
type listedRecipient struct {
	Addr      string `json:"addr"`
	State     string `json:"state"`
	Attempts  int    `json:"attempts"`
	LastHost  string `json:"last_host"`
	LastReply string `json:"last_reply"`
}

// message returns the queued message id, or nil once it left the queue.
func (p *postern) message(id string) (*listedMessage, error) {
	out, err := p.cli("", "queue", "list", "--json")
	if err != nil {
		return nil, fmt.Errorf("queue list: %w\n%s", err, out)
	}
	var msgs []listedMessage
	if err := json.Unmarshal([]byte(out), &msgs); err != nil {
		return nil, fmt.Errorf("queue list: %w\n%s", err, out)
	}
	for i := range msgs {
		if msgs[i].ID == id {
			return &msgs[i], nil
		}
	}
	return nil, nil
}

// waitAttempted polls until recipient rcpt of message id has been tried
// at least once and is still waiting; it returns the recipient's state.
func (p *postern) waitAttempted(id, rcpt string, timeout time.Duration) (listedRecipient, error) {
	deadline := time.Now().Add(timeout)
	for {
		m, err := p.message(id)
		if err != nil {
			return listedRecipient{}, err
		}
		if m == nil {
			return listedRecipient{}, fmt.Errorf("message %s left the queue", id)
		}
		for _, r := range m.Recipients {
			if r.Addr == rcpt && r.Attempts > 0 {
				return r, nil
			}
		}
		if time.Now().After(deadline) {
			return listedRecipient{}, fmt.Errorf("%s to %s not tried within %s", id, rcpt, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// auditRecords returns the delivery evidence recorded for a recipient domain.
func (p *postern) auditRecords(domain string) ([]audit.Record, error) {
	out, err := p.cli("", "audit", "--rcpt-domain", domain, "--format", "json")
	if err != nil {
		return nil, fmt.Errorf("audit: %w\n%s", err, out)
	}
	var recs []audit.Record
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		var r audit.Record
		if err := dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("audit: %w\n%s", err, out)
		}
		recs = append(recs, r)
	}
	return recs, nil
}

// waitAudit polls until the evidence of rcpt's delivery is recorded.
func (p *postern) waitAudit(rcpt string, timeout time.Duration) (audit.Record, error) {
	_, domain, _ := strings.Cut(rcpt, "@")
	deadline := time.Now().Add(timeout)
	for {
		recs, err := p.auditRecords(domain)
		if err != nil {
			return audit.Record{}, err
		}
		for _, r := range recs {
			if r.Recipient == rcpt {
				return r, nil
			}
		}
		if time.Now().After(deadline) {
			return audit.Record{}, fmt.Errorf("no audit record for %s within %s", rcpt, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
