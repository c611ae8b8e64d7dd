package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/delivery"
	"github.com/postern/postern/relay/submission"
	"github.com/postern/postern/resolver"
)

// logLevel is the daemon's log level, which a reload may change.
var logLevel = new(slog.LevelVar)

func newLogger(cfg LogConfig, w io.Writer) *slog.Logger {
	logLevel.UnmarshalText([]byte(cfg.Level))
	opts := &slog.HandlerOptions{Level: logLevel}
	if cfg.Format == "json" {
		opts.ReplaceAttr = durationText
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// durationText writes a duration as Go writes it ("1.5s", "250ms"), as the
// text format does, instead of the JSON handler's bare nanoseconds, which a
// reader of the log cannot tell from a count.
func durationText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}

func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// serve runs the daemon until SIGTERM or SIGINT.
func serve(cfg *Config, log *slog.Logger) error {
	if err := checkDataDirOwner(cfg.DataDir); err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data_dir %s: %w", cfg.DataDir, err)
	}
	q, err := queue.Open(cfg.queuePath(), queue.Options{InlineLimit: cfg.Queue.InlineLimit})
	if errors.Is(err, queue.ErrLocked) {
		return fmt.Errorf("another postern is already running on data_dir %s: %w", cfg.DataDir, err)
	}
	if err != nil {
		return err
	}
	defer q.Close()
	rep, err := q.Recover()
	if err != nil {
		return err
	}
	log.Info("queue recovered", "messages", rep.Messages, "recipients_pending", rep.Recipients, "held", rep.Held,
		"leases_returned", rep.LeasesReturned, "orphan_spool_files_removed", rep.OrphansRemoved)
	if len(rep.MissingBodies) > 0 {
		log.Error("queued messages whose spool file is missing; storage was damaged", "queue_ids", rep.MissingBodies)
	}

	tel, err := startTelemetry(cfg.Telemetry, log)
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tel.Close(ctx); err != nil {
			log.Warn("telemetry not flushed", "err", err)
		}
	}()
	stats := &statsCache{q: q, maxAge: time.Second}
	if err := queueGauges(stats); err != nil {
		return err
	}

	stateDB, users, err := openState(cfg)
	if err != nil {
		return err
	}
	defer stateDB.Close()

	certs, err := submission.NewCertificates(cfg.Submission.TLS.CertFile, cfg.Submission.TLS.KeyFile, cfg.Hostname, log)
	if err != nil {
		return err
	}
	res, servers, err := cfg.resolver(log)
	if err != nil {
		return err
	}
	if res.Mode() == resolver.Off {
		log.Warn("DNSSEC validation is off (dns.dnssec: off): DANE is disabled and every DNS answer counts as insecure")
	}
	policy, roots, err := cfg.tlsPolicy(res, stateDB, log)
	if err != nil {
		return err
	}
	engine := delivery.New(cfg.deliveryConfig(), delivery.Deps{Queue: q, Resolver: res, Log: log, Policy: policy, Roots: roots})
	signer, err := cfg.dkimSigner()
	if err != nil {
		return err
	}
	verifier := auth.NewVerifier(users, cfg.authLimits(), nil)
	srv := submission.New(cfg.submissionConfig(), submission.Deps{
		DKIM:  signer,
		Queue: q, Auth: verifier,
		GetCertificate: certs.GetCertificate, Log: log, Queued: engine.Kick,
	})
	reporter, err := cfg.reporter(q, res, signer, stateDB, engine.Kick, log)
	if err != nil {
		return err
	}

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go certs.Watch(ctx, cfg.Submission.TLS.ReloadInterval)
	go res.RunProbes(ctx, cfg.DNS.ProbeInterval)
	go pruneEvidence(ctx, q, cfg.Audit.Retention, log)
	if cfg.TLSRPT.Enabled {
		go reporter.Run(ctx)
	}
	deliveryDone := make(chan struct{})
	go func() { engine.Run(ctx); close(deliveryDone) }()
	defer func() { stop(); <-deliveryDone }()
	log.Info("delivery started", "workers", cfg.Delivery.Workers, "dns_servers", servers, "dnssec", res.Mode().String(), "tls_default", cfg.TLS.Default, "tls_policies", len(cfg.TLS.Policies), "port", cfg.Delivery.Port,
		"routes", len(cfg.Delivery.Routes))

	serveErr := make(chan error, 4)
	listen := func(addrs []string, mode string, serveOn func(net.Listener) error) error {
		for _, a := range addrs {
			l, err := net.Listen("tcp", a)
			if err != nil {
				return fmt.Errorf("submission listener %s: %w", a, err)
			}
			log.Info("submission listening", "addr", l.Addr().String(), "mode", mode)
			go func() { serveErr <- serveOn(l) }()
		}
		return nil
	}
	if err := listen(cfg.Submission.Listen, "starttls", srv.ServeSTARTTLS); err != nil {
		return err
	}
	if err := listen(cfg.Submission.TLSListen, "implicit-tls", srv.ServeTLS); err != nil {
		return err
	}
	reload := newReloader(cfg, certs, srv, verifier, policy, engine, log)
	admin, err := serveAdmin(cfg.socketPath(), &local{q: q, users: users, state: stateDB, forget: policy.Forget, report: reporter.Send,
		reload: reload.reload, kick: engine.Kick, bounced: engine.CountOperatorBounce,
		policyCheck: func(ctx context.Context, domain string, port int) policyReport {
			return checkPolicy(ctx, policy, domain, port, cfg.TLS.DowngradeMemory)
		}}, log)
	if err != nil {
		return err
	}
	defer admin.Close()
	var accepting atomic.Bool
	accepting.Store(true)
	web := &adminHTTP{hostname: cfg.Hostname, password: cfg.Admin.Password, metrics: tel.metrics, q: q, stats: stats, log: log,
		dns: res.Health, onBroken: cfg.DNS.OnBrokenUpstream,
		ready: []readiness{
			{"queue", func(context.Context) error { _, err := q.Count(); return err }},
			{"listeners", func(context.Context) error {
				if !accepting.Load() {
					return errors.New("shutting down")
				}
				return nil
			}},
			{"dns", res.Ping},
		}}
	stopWeb, err := serveWeb(cfg.Admin.MetricsListen, web, log)
	if err != nil {
		return err
	}
	defer stopWeb()
	log.Info("postern started", "hostname", cfg.Hostname, "data_dir", cfg.DataDir, "config", cfg.file, "version", version())
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("could not tell systemd the service is ready", "err", err)
	}

	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	for {
		select {
		case sig := <-signals:
			if sig == syscall.SIGHUP {
				reload.reload() // it logs what it did
				continue
			}
			// Drain: no new sessions or leases; transactions in flight on
			// both sides get until the deadline; then what is left of
			// delivery goes back to the queue untried.
			log.Info("shutting down", "signal", sig.String(), "deadline", cfg.Shutdown.Timeout)
			sdNotify("STOPPING=1")
			accepting.Store(false)
			stop()
			sctx, cancel := context.WithTimeout(context.Background(), cfg.Shutdown.Timeout)
			err := srv.Shutdown(sctx)
			cancel()
			if err != nil {
				log.Warn("submission sessions cut at the shutdown deadline", "err", err)
			}
			<-deliveryDone
			log.Info("stopped")
			return nil
		case err := <-serveErr:
			if err != nil {
				return fmt.Errorf("submission server: %w", err)
			}
		}
	}
}

// serveWeb runs the admin HTTP listener at addr ("" turns it off).
func serveWeb(addr string, web *adminHTTP, log *slog.Logger) (stop func() error, err error) {
	if addr == "" {
		return func() error { return nil }, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin.metrics_listen %s: %w", addr, err)
	}
	srv := serveWebOn(l, web)
	log.Info("admin listening", "addr", l.Addr().String(), "paths", "/metrics /healthz /readyz /", "password", web.password != "")
	return srv.Close, nil
}

// serveWebOn serves the admin HTTP handler on l, with bounded connections:
// anyone who can reach the port shares the process's file descriptors with
// the SMTP listeners.
func serveWebOn(l net.Listener, web *adminHTTP) *http.Server {
	lim := web.limits
	if lim == (serverLimits{}) {
		lim = webLimits
	}
	srv := newLimitedServer(web.handler(), lim)
	go srv.Serve(newLimitListener(l, lim.MaxConns))
	return srv
}

// pruneEvidence deletes delivery evidence older than the retention, at
// start and then daily.
func pruneEvidence(ctx context.Context, q *queue.Queue, retention time.Duration, log *slog.Logger) {
	t := time.NewTicker(24 * time.Hour)
	defer t.Stop()
	for {
		if n, err := q.PruneJournal(time.Now().Add(-retention)); err != nil {
			log.Error("pruning delivery evidence failed", "err", err)
		} else if n > 0 {
			log.Info("delivery evidence pruned", "records", n, "retention", retention)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
