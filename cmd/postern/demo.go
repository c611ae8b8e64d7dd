package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/spf13/cobra"

	"github.com/postern/postern/internal/lab"
)

// embedding is a caller that runs the daemon inside its own process
// (postern demo): it learns where the listeners are, and may stop the
// daemon as SIGTERM does. A nil *embedding does nothing.
type embedding struct {
	opened chan listener // each listener as it opens
	stop   chan struct{} // closed: drain and stop
}

type listener struct{ kind, addr string } // kind: starttls, implicit-tls, admin

func newEmbedding() *embedding {
	return &embedding{opened: make(chan listener, 16), stop: make(chan struct{})}
}

func (e *embedding) listening(kind, addr string) {
	if e == nil {
		return
	}
	select {
	case e.opened <- listener{kind, addr}:
	default:
	}
}

// stopWith turns a close of e.stop into a SIGTERM on signals, for as long
// as ctx (the daemon's) lasts.
func (e *embedding) stopWith(ctx context.Context, signals chan<- os.Signal) {
	if e == nil {
		return
	}
	go func() {
		select {
		case <-e.stop:
			signals <- syscall.SIGTERM
		case <-ctx.Done():
		}
	}()
}

type demoOptions struct {
	keep, keepRunning bool
	timeout           time.Duration
}

func demoCommand() *cobra.Command {
	var o demoOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Watch Postern deliver to DANE, MTA-STS and broken destinations in a private signed internet on 127.0.0.1",
		Long: `Starts, in this process, a private internet on 127.0.0.1 (a DNS root signed under
its own trust anchor, domains with DANE-EE, DANE-TA, MTA-STS, no policy, a TLSA record
that does not match the certificate, a TLSA answer stripped of its signature, and a
null MX, with their MX hosts and an HTTPS policy server) and Postern configured to use
it. It submits one message to each domain over the submission port with AUTH, lets
delivery run, and prints per domain what policy check decides and why, what happened
to the message, and the audit table. No configuration, no network, no root.

It removes everything it made when it ends, unless --keep. With --keep-running Postern
keeps running after the report, so that queue, audit and the status page can be
explored; Ctrl-C stops it. POSTERN_* environment variables are ignored. The exit
status is 1 when a destination's outcome is not what its policy demands.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx, cancel := signal.NotifyContext(c.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer cancel()
			return runDemo(ctx, c.OutOrStdout(), o)
		},
	}
	cmd.Flags().BoolVar(&o.keep, "keep", false, "keep the data directory (queue, audit trail, configuration, log) when the demo ends")
	cmd.Flags().BoolVar(&o.keepRunning, "keep-running", false, "keep Postern and its private internet running after the report, until Ctrl-C")
	cmd.Flags().DurationVar(&o.timeout, "timeout", time.Minute, "how long to wait for delivery to settle")
	return cmd
}

// demo is one run of postern demo.
type demo struct {
	out      io.Writer
	dir      string
	cfgFile  string
	cfg      *Config
	world    *lab.World
	password string
	emb      *embedding
	addrs    map[string]string
	served   chan error
	start    time.Time
	keep     bool
}

func runDemo(ctx context.Context, out io.Writer, o demoOptions) (err error) {
	d := &demo{out: out, start: time.Now(), addrs: map[string]string{}, keep: o.keep}
	if d.dir, err = os.MkdirTemp("", "postern-demo-"); err != nil {
		return err
	}
	defer func() {
		if o.keep {
			fmt.Fprintf(out, "\nThe data directory is kept: %s (queue, audit trail, configuration, postern.log).\n", d.dir)
			fmt.Fprintf(out, "Without the daemon, the commands open it directly, for instance:\n  %s audit -c %s\n", self(), d.cfgFile)
			return
		}
		if rmErr := os.RemoveAll(d.dir); rmErr != nil && err == nil {
			err = fmt.Errorf("remove %s: %w", d.dir, rmErr)
		}
	}()
	if d.world, err = lab.StartWorld(); err != nil {
		return err
	}
	defer d.world.Close()
	if err := d.configure(); err != nil {
		return err
	}
	logFile, err := os.Create(filepath.Join(d.dir, "postern.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	if err := d.run(ctx, logFile); err != nil {
		return err
	}
	defer d.stop()
	ids, err := d.submit()
	if err != nil {
		return err
	}
	settled, err := d.settle(ctx, o.timeout)
	if err != nil {
		return err
	}
	good, err := d.report(ids, settled)
	if err != nil {
		return err
	}
	if o.keepRunning {
		d.explore()
		select {
		case <-ctx.Done():
			fmt.Fprintln(out, "\nstopping")
		case err := <-d.served:
			fmt.Fprintf(out, "\npostern stopped: %v\n", err)
			d.served <- err // for stop
		}
	}
	if !good {
		return errors.New("some destination's outcome is not what its policy demands (see above)")
	}
	return nil
}

// self is how the user ran this program, for the commands it suggests.
func self() string {
	exe, _ := os.Executable()
	if strings.Contains(exe, "go-build") || strings.Contains(os.Args[0], "go-build") {
		return "go run ./cmd/postern"
	}
	return os.Args[0]
}

// configure writes the world's trust anchor, the demo CA, a submission
// certificate and a configuration that uses them, and adds the user.
func (d *demo) configure() error {
	anchor := filepath.Join(d.dir, "root.anchor")
	caFile := filepath.Join(d.dir, "demo-ca.pem")
	certFile := filepath.Join(d.dir, "submission.pem")
	keyFile := filepath.Join(d.dir, "submission.key")
	cert, err := d.world.CA.Leaf(false, "postern.example")
	if err != nil {
		return err
	}
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return err
	}
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	for name, data := range map[string][]byte{
		anchor: []byte(d.world.Anchor), caFile: d.world.CAPEM, certFile: chain,
		keyFile: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}),
	} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			return err
		}
	}
	// The demo's configuration is its own: a POSTERN_* variable meant for
	// a real installation must not point it elsewhere.
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "POSTERN_") {
			os.Unsetenv(name)
		}
	}
	d.cfgFile = filepath.Join(d.dir, "postern.yaml")
	text := fmt.Sprintf(`# Written by postern demo: Postern in a private internet on 127.0.0.1.
hostname: postern.example
data_dir: %s
log: {level: info, format: text}
submission:
  listen: ["127.0.0.1:0"]
  tls_listen: []
  tls: {cert_file: %s, key_file: %s}
dns:
  servers: [%q]                 # the private internet's resolver
  trust_anchor_file: %s         # its root's key, not the IANA root's
tls:
  ca_file: %s                   # the private internet's "public" CA
delivery:
  port: %d                      # every MX host of the private internet listens here
  poll_interval: 100ms
shutdown: {timeout: 5s}
admin: {metrics_listen: "127.0.0.1:0"}
`, filepath.Join(d.dir, "data"), certFile, keyFile, d.world.DNS.Addr, anchor, caFile, d.world.MXPort())
	if err := os.WriteFile(d.cfgFile, []byte(text), 0o600); err != nil {
		return err
	}
	if d.cfg, err = loadConfig(d.cfgFile); err != nil {
		return err
	}
	// MTA-STS policies are fetched from port 443, which is root's: the
	// private internet serves them elsewhere.
	d.cfg.stsPort = d.world.STSPort
	secret := make([]byte, 12)
	rand.Read(secret)
	d.password = hex.EncodeToString(secret)
	ops, err := openOperations(d.cfg)
	if err != nil {
		return err
	}
	defer ops.Close()
	return ops.UserAdd("demo", d.password, []string{"*@" + lab.SenderDomain})
}

// run starts the daemon in this process and waits until it listens.
func (d *demo) run(ctx context.Context, logTo io.Writer) error {
	d.emb = newEmbedding()
	d.served = make(chan error, 1)
	log, level := newLogger(d.cfg.Log, logTo)
	go func() { d.served <- serveEmbedded(d.cfg, log, level, d.emb) }()
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for d.addrs["admin"] == "" {
		select {
		case l := <-d.emb.opened:
			d.addrs[l.kind] = l.addr
		case err := <-d.served:
			return fmt.Errorf("postern did not start (see %s): %w", filepath.Join(d.dir, "postern.log"), err)
		case <-ctx.Done():
			d.stop()
			return ctx.Err()
		case <-timeout.C:
			d.stop()
			return errors.New("postern did not start within 30s")
		}
	}
	w := d.world
	fmt.Fprintf(d.out, "Postern demo: a private internet on 127.0.0.1, signed under its own root key\n")
	fmt.Fprintf(d.out, "  DNS %s · MX hosts 127.0.0.1:%d (one server, a certificate per MX name) · MTA-STS policy host 127.0.0.1:%d\n",
		w.DNS.Addr, w.MXPort(), w.STSPort)
	fmt.Fprintf(d.out, "  Postern: submission %s (STARTTLS, AUTH) · status page http://%s/ · data in %s\n\n",
		d.addrs["starttls"], d.addrs["admin"], d.dir)
	return nil
}

// stop drains the daemon and waits for it; once only.
func (d *demo) stop() {
	select {
	case <-d.emb.stop:
		return
	default:
	}
	close(d.emb.stop)
	<-d.served
}

// submit sends one message to each destination as a client would: STARTTLS
// (verifying Postern's certificate), AUTH PLAIN, one recipient.
func (d *demo) submit() (map[string]string, error) {
	fmt.Fprintf(d.out, "Submitting one message to each destination as user demo (STARTTLS, AUTH PLAIN):\n")
	c, err := smtp.DialStartTLS(d.addrs["starttls"], &tls.Config{ServerName: "postern.example", RootCAs: d.world.CA.Pool()})
	if err != nil {
		return nil, fmt.Errorf("submission: %w", err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "demo", d.password)); err != nil {
		return nil, fmt.Errorf("submission AUTH: %w", err)
	}
	ids := map[string]string{}
	from := "demo@" + lab.SenderDomain
	for i, dest := range lab.Destinations() {
		to := "someone@" + dest.Domain
		body := fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: Postern demo: %s\r\nDate: %s\r\nMessage-ID: <demo-%d.%d@%s>\r\n\r\n%s\r\n",
			from, to, dest.Domain, time.Now().Format(time.RFC1123Z), i+1, d.start.UnixNano(), lab.SenderDomain, dest.Publishes)
		reply, err := sendOne(c, from, to, body)
		if err != nil {
			return nil, fmt.Errorf("submit to %s: %w", to, err)
		}
		_, ids[dest.Domain], _ = strings.Cut(reply, "queued as ")
		fmt.Fprintf(d.out, "  %-28s 250 %s\n", to, reply)
	}
	c.Quit()
	return ids, nil
}

func sendOne(c *smtp.Client, from, to, body string) (string, error) {
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
	if _, err := io.WriteString(w, body); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

// explore prints how to look at the running daemon.
func (d *demo) explore() {
	bin := self()
	fmt.Fprintf(d.out, `
Postern keeps running with its private internet (Ctrl-C stops both%[1]s).
In another terminal:
  %[2]s queue list -c %[3]s
  %[2]s queue show ID -c %[3]s
  %[2]s audit -c %[3]s
  %[2]s user list -c %[3]s
  status page: http://%[4]s/   metrics: http://%[4]s/metrics
  log: %[5]s
Submit more: swaks --server %[6]s --tls --auth PLAIN --auth-user demo --auth-password %[7]s \
    --from demo@%[8]s --to someone@dane-ee.example   (Postern's certificate is from %[9]s)
`, map[bool]string{true: "", false: " and removes the data directory"}[d.keep], bin, d.cfgFile, d.addrs["admin"],
		filepath.Join(d.dir, "postern.log"), d.addrs["starttls"], d.password, lab.SenderDomain, filepath.Join(d.dir, "demo-ca.pem"))
}
