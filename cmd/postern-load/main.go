// Command postern-load measures SMTP relays, as Postfix's smtp-source and
// smtp-sink do: "source" submits messages over many connections and
// reports throughput and latency percentiles; "sink" accepts and discards
// mail and reports when the Nth message arrived, so that end-to-end relay
// throughput can be measured (source → relay → sink).
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/postern/postern/relay/submission"
)

func main() {
	root := &cobra.Command{Use: "postern-load", Short: "Load generator and sink for measuring SMTP relays",
		SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(sourceCommand(), sinkCommand())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "postern-load:", err)
		os.Exit(1)
	}
}

type sourceOptions struct {
	server      string
	mode        string // starttls, tls, plain
	user, pass  string
	from, to    string
	count       int
	size        int
	connections int
	perConn     int
	rate        float64
	json        bool
}

func sourceCommand() *cobra.Command {
	var o sourceOptions
	cmd := &cobra.Command{
		Use:   "source",
		Short: "Submit N messages of S bytes over C connections and report messages/s and latencies",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := runSource(o, progressWriter(cmd.ErrOrStderr()))
			if err != nil {
				return err
			}
			if o.json {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(res)
			}
			res.print(cmd.OutOrStdout())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.server, "server", "127.0.0.1:587", "host:port to submit to")
	f.StringVar(&o.mode, "tls", "starttls", "starttls, tls (implicit) or plain")
	f.StringVar(&o.user, "user", "", "AUTH PLAIN user (none: no AUTH)")
	f.StringVar(&o.pass, "password", "", "AUTH PLAIN password")
	f.StringVar(&o.from, "from", "load@example.org", "envelope sender")
	f.StringVar(&o.to, "to", "sink@example.net", "recipient")
	f.IntVar(&o.count, "count", 10000, "messages to send")
	f.IntVar(&o.size, "size", 2048, "message size in bytes")
	f.IntVar(&o.connections, "connections", 16, "concurrent connections")
	f.IntVar(&o.perConn, "per-connection", 0, "messages per connection before reconnecting (0: no limit)")
	f.Float64Var(&o.rate, "rate", 0, "messages per second in total, to measure latency below saturation (0: as fast as possible)")
	f.BoolVar(&o.json, "json", false, "print the result as JSON")
	return cmd
}

// sourceResult is what a source run measured.
type sourceResult struct {
	Accepted    int64   `json:"accepted"`
	Errors      int64   `json:"errors"`
	FirstError  string  `json:"first_error,omitempty"`
	Seconds     float64 `json:"seconds"`
	PerSecond   float64 `json:"messages_per_second"`
	DotP50Ms    float64 `json:"final_dot_p50_ms"`
	DotP90Ms    float64 `json:"final_dot_p90_ms"`
	DotP99Ms    float64 `json:"final_dot_p99_ms"`
	TxP50Ms     float64 `json:"transaction_p50_ms"`
	TxP90Ms     float64 `json:"transaction_p90_ms"`
	TxP99Ms     float64 `json:"transaction_p99_ms"`
	Connections int     `json:"connections"`
	Size        int     `json:"size"`
}

func (r sourceResult) print(w io.Writer) {
	fmt.Fprintf(w, "accepted %d messages of %d bytes over %d connections in %.2f s: %.0f messages/s, %d errors\n",
		r.Accepted, r.Size, r.Connections, r.Seconds, r.PerSecond, r.Errors)
	fmt.Fprintf(w, "final dot to 250: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms\n", r.DotP50Ms, r.DotP90Ms, r.DotP99Ms)
	fmt.Fprintf(w, "whole transaction: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms\n", r.TxP50Ms, r.TxP90Ms, r.TxP99Ms)
	if r.FirstError != "" {
		fmt.Fprintf(w, "first error: %s\n", r.FirstError)
	}
}

// message builds a message of about size bytes, with lines of 78 octets.
func message(size int, n int64) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: load@example.org\r\nTo: sink@example.net\r\nSubject: load %d\r\nMessage-ID: <load-%d-%d@postern-load>\r\n\r\n", n, time.Now().UnixNano(), n)
	line := strings.Repeat("x", 76) + "\r\n"
	for b.Len()+len(line) <= size {
		b.WriteString(line)
	}
	return b.Bytes()
}

func runSource(o sourceOptions, progress func(done, total int64, elapsed time.Duration)) (sourceResult, error) {
	if o.connections < 1 || o.count < 1 {
		return sourceResult{}, errors.New("--connections and --count must be at least 1")
	}
	tlsConfig := &tls.Config{InsecureSkipVerify: true} // a load test measures speed, not identity
	dial := func() (*smtp.Client, error) {
		switch o.mode {
		case "tls":
			return smtp.DialTLS(o.server, tlsConfig)
		case "plain":
			return smtp.Dial(o.server)
		case "starttls":
			return smtp.DialStartTLS(o.server, tlsConfig)
		}
		return nil, fmt.Errorf("--tls %q: use starttls, tls or plain", o.mode)
	}
	var next, accepted, failures atomic.Int64
	var firstErr atomic.Value
	var mu sync.Mutex
	var dots, txs []time.Duration
	fail := func(err error) {
		failures.Add(1)
		firstErr.CompareAndSwap(nil, err.Error())
	}
	start := time.Now()
	// With --rate, each message waits for its slot on a schedule that
	// started with the run, so that a slow moment is caught up on.
	var slot atomic.Int64
	pace := func() {
		if o.rate <= 0 {
			return
		}
		at := start.Add(time.Duration(float64(slot.Add(1)-1) / o.rate * float64(time.Second)))
		time.Sleep(time.Until(at))
	}
	stopProgress := make(chan struct{})
	go func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-t.C:
				progress(accepted.Load(), int64(o.count), time.Since(start))
			}
		}
	}()
	var wg sync.WaitGroup
	for c := 0; c < o.connections; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var myDots, myTxs []time.Duration
			defer func() {
				mu.Lock()
				dots, txs = append(dots, myDots...), append(txs, myTxs...)
				mu.Unlock()
			}()
			for next.Load() < int64(o.count) {
				cl, err := dial()
				if err != nil {
					fail(err)
					time.Sleep(100 * time.Millisecond)
					continue
				}
				if o.user != "" {
					if err := cl.Auth(sasl.NewPlainClient("", o.user, o.pass)); err != nil {
						fail(err)
						cl.Close()
						return
					}
				}
				sent := 0
				for o.perConn == 0 || sent < o.perConn {
					n := next.Add(1)
					if n > int64(o.count) {
						break
					}
					sent++
					body := message(o.size, n)
					pace()
					t0 := time.Now()
					err := cl.Mail(o.from, nil)
					if err == nil {
						err = cl.Rcpt(o.to, nil)
					}
					var w io.WriteCloser
					if err == nil {
						w, err = cl.Data()
					}
					if err == nil {
						_, err = w.Write(body)
					}
					var dot time.Time
					if err == nil {
						dot = time.Now()
						err = w.Close()
					}
					if err != nil {
						fail(err)
						cl.Reset()
						continue
					}
					done := time.Now()
					myDots, myTxs = append(myDots, done.Sub(dot)), append(myTxs, done.Sub(t0))
					accepted.Add(1)
				}
				cl.Quit()
				cl.Close()
			}
		}()
	}
	wg.Wait()
	close(stopProgress)
	elapsed := time.Since(start)
	progress(accepted.Load(), int64(o.count), elapsed)
	res := sourceResult{Accepted: accepted.Load(), Errors: failures.Load(), Seconds: elapsed.Seconds(),
		Connections: o.connections, Size: o.size}
	if v := firstErr.Load(); v != nil {
		res.FirstError = v.(string)
	}
	res.PerSecond = float64(res.Accepted) / elapsed.Seconds()
	res.DotP50Ms, res.DotP90Ms, res.DotP99Ms = percentiles(dots)
	res.TxP50Ms, res.TxP90Ms, res.TxP99Ms = percentiles(txs)
	return res, nil
}

func percentiles(d []time.Duration) (p50, p90, p99 float64) {
	if len(d) == 0 {
		return 0, 0, 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	at := func(p float64) float64 {
		i := int(p * float64(len(d)-1))
		return float64(d[i]) / float64(time.Millisecond)
	}
	return at(0.50), at(0.90), at(0.99)
}

// progressWriter draws a progress line on a terminal, and nothing when the
// output is piped (the final report says it all).
func progressWriter(w io.Writer) func(done, total int64, elapsed time.Duration) {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return func(int64, int64, time.Duration) {}
	}
	return func(done, total int64, elapsed time.Duration) {
		rate := float64(done) / max(elapsed.Seconds(), 0.001)
		fmt.Fprintf(f, "\r%d/%d messages, %.0f/s, %s   ", done, total, rate, elapsed.Round(time.Second))
		if done >= total {
			fmt.Fprintln(f)
		}
	}
}

type sinkOptions struct {
	listen string
	expect int64
	json   bool
}

func sinkCommand() *cobra.Command {
	var o sinkOptions
	cmd := &cobra.Command{
		Use:   "sink",
		Short: "Accept and discard mail (STARTTLS with a self-signed certificate, any AUTH), and report messages/s",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			l, err := net.Listen("tcp", o.listen)
			if err != nil {
				return err
			}
			s, err := newSink(l, o.expect)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "sink listening on %s\n", l.Addr())
			res := s.wait(ctx, progressWriter(cmd.ErrOrStderr()))
			if o.json {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(res)
			}
			res.print(cmd.OutOrStdout())
			return nil
		},
	}
	cmd.Flags().StringVar(&o.listen, "listen", "127.0.0.1:2525", "address to listen on")
	cmd.Flags().Int64Var(&o.expect, "expect", 0, "stop after this many messages (0: until interrupted)")
	cmd.Flags().BoolVar(&o.json, "json", false, "print the result as JSON")
	return cmd
}

// sink is an SMTP server that counts and discards.
type sink struct {
	srv        *smtp.Server
	expect     int64
	received   atomic.Int64
	handshakes atomic.Int64
	sessions   atomic.Int64
	mu         sync.Mutex
	first, nth time.Time
	done       chan struct{}
	doneOnce   sync.Once
}

// sinkResult is what a sink saw.
type sinkResult struct {
	Received       int64   `json:"received"`
	Seconds        float64 `json:"seconds_first_to_last"`
	PerSecond      float64 `json:"messages_per_second"`
	NthAt          string  `json:"nth_arrived_at,omitempty"`
	Sessions       int64   `json:"sessions"`
	TLSHandshakes  int64   `json:"tls_handshakes"`
	HandshakesPerM float64 `json:"tls_handshakes_per_message"`
}

func (r sinkResult) print(w io.Writer) {
	fmt.Fprintf(w, "received %d messages in %.2f s (first to last): %.0f messages/s\n", r.Received, r.Seconds, r.PerSecond)
	if r.NthAt != "" {
		fmt.Fprintf(w, "the expected last message arrived at %s\n", r.NthAt)
	}
	fmt.Fprintf(w, "%d sessions, %d TLS handshakes: %.3f handshakes per message\n", r.Sessions, r.TLSHandshakes, r.HandshakesPerM)
}

func newSink(l net.Listener, expect int64) (*sink, error) {
	cert, err := submission.SelfSigned("sink.postern-load")
	if err != nil {
		return nil, err
	}
	s := &sink{expect: expect, done: make(chan struct{})}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		if _, isTLS := c.TLSConnectionState(); isTLS {
			s.handshakes.Add(1)
		} else {
			s.sessions.Add(1)
		}
		return &sinkSession{s: s}, nil
	}))
	s.srv.Domain = "sink.postern-load"
	s.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	s.srv.AllowInsecureAuth = true
	s.srv.MaxMessageBytes = 64 << 20
	s.srv.ReadTimeout, s.srv.WriteTimeout = 5*time.Minute, 5*time.Minute
	go s.srv.Serve(l)
	return s, nil
}

func (s *sink) arrived() {
	n := s.received.Add(1)
	now := time.Now()
	s.mu.Lock()
	if s.first.IsZero() {
		s.first = now
	}
	s.nth = now
	s.mu.Unlock()
	if s.expect > 0 && n >= s.expect {
		s.doneOnce.Do(func() { close(s.done) })
	}
}

func (s *sink) wait(ctx context.Context, progress func(done, total int64, elapsed time.Duration)) sinkResult {
	start := time.Now()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-s.done:
			break loop
		case <-t.C:
			progress(s.received.Load(), max(s.expect, s.received.Load()), time.Since(start))
		}
	}
	s.srv.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	r := sinkResult{Received: s.received.Load(), Sessions: s.sessions.Load(), TLSHandshakes: s.handshakes.Load()}
	if r.Received > 0 {
		r.Seconds = s.nth.Sub(s.first).Seconds()
		r.PerSecond = float64(r.Received) / max(r.Seconds, 0.001)
		r.HandshakesPerM = float64(r.TLSHandshakes) / float64(r.Received)
	}
	if s.expect > 0 && r.Received >= s.expect {
		r.NthAt = s.nth.UTC().Format(time.RFC3339Nano)
	}
	return r
}

type sinkSession struct{ s *sink }

func (ss *sinkSession) AuthMechanisms() []string { return []string{sasl.Plain} }
func (ss *sinkSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(string, string, string) error { return nil }), nil
}
func (ss *sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (ss *sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (ss *sinkSession) Data(r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	ss.s.arrived()
	return nil
}
func (ss *sinkSession) Reset()        {}
func (ss *sinkSession) Logout() error { return nil }
