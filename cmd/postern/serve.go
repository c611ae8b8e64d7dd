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

	bolt "go.etcd.io/bbolt"
	"golang.org/x/term"

	"github.com/postern/postern/internal/admin"
	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/delivery"
	"github.com/postern/postern/relay/quota"
	"github.com/postern/postern/relay/submission"
	"github.com/postern/postern/relay/tlsrpt"
	"github.com/postern/postern/resolver"
	"github.com/postern/postern/tlspolicy"
)

// newLogger makes the daemon's logger, and the level it logs at, which a
// reload may change: the caller (main, or postern demo) owns both and
// hands them down; there is no package-level level.
func newLogger(cfg LogConfig, w io.Writer) (*slog.Logger, *slog.LevelVar) {
	level := new(slog.LevelVar)
	level.Set(cfg.level)
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		opts.ReplaceAttr = durationText
		return slog.New(slog.NewJSONHandler(w, opts)), level
	}
	return slog.New(slog.NewTextHandler(w, opts)), level
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
func serve(cfg *Config, log *slog.Logger, level *slog.LevelVar) error {
	return serveEmbedded(cfg, log, level, nil)
}

// serveEmbedded runs the daemon; emb, when not nil, is a caller in this
// process (postern demo) that learns the listeners' addresses and may stop
// it as SIGTERM does.
func serveEmbedded(cfg *Config, log *slog.Logger, level *slog.LevelVar, emb *embedding) error {
	if err := checkDataDirOwner(cfg.DataDir); err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data_dir %s: %w", cfg.DataDir, err)
	}
	q, err := queue.Open(cfg.queuePath(), cfg.queueOptions())
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
	signer := cfg.dkimSigner()
	logHeaderFromCheck(cfg, users, log)
	hashes := cfg.Submission.Auth.MaxConcurrentHashes
	if hashes == 0 {
		hashes = auth.DefaultConcurrentHashes()
	}
	log.Info("password hashes bounded", "max_concurrent_hashes", hashes, "hash_memory_mib", hashes*19)
	verifier := auth.NewVerifier(users, cfg.authLimits(), nil)
	usersFile, err := cfg.usersFile()
	if err != nil {
		return err
	}
	if usersFile != nil {
		verifier.SetFile(usersFile)
		log.Info("users file loaded", "file", usersFile.Path(), "users", len(usersFile.List()))
	}
	if dir := cfg.directory(); dir != nil {
		verifier.SetDirectory(dir)
		log.Info("user directory", "directory", dir.String(), "order", "users file, store, directory")
	}
	counter, err := quota.Open(stateDB, nil)
	if err != nil {
		return err
	}
	srv := submission.New(cfg.submissionConfig(), submission.Deps{
		DKIM: signer, Quota: counter,
		// Submission hands fresh mail to a free worker, or wakes the
		// scheduler (handoff.go): no Queued callback.
		Queue: handoffQueue{Queue: q, engine: engine, hold: cfg.Delivery.LeaseTime}, Auth: verifier,
		GetCertificate: certs.GetCertificate, Log: log,
	})
	reporter, err := cfg.reporter(q, res, signer, stateDB, engine.Kick, log)
	if err != nil {
		return err
	}

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go certs.Watch(ctx, cfg.Submission.TLS.ReloadInterval)
	go counter.Run(ctx, quota.FlushInterval, func(err error) { log.Error("sending volume not saved; retried next minute", "err", err) })
	go res.RunProbes(ctx, cfg.DNS.ProbeInterval)
	go housekeeping(ctx, q, reporter, stateDB, cfg.Audit.Retention, cfg.TLS.MemoryMaxAge, log)
	if cfg.TLSRPT.Enabled {
		go reporter.Run(ctx)
	}
	deliveryDone := make(chan struct{})
	go func() { engine.Run(ctx); close(deliveryDone) }()
	defer func() { stop(); <-deliveryDone }()
	log.Info("delivery started", "workers", cfg.Delivery.Workers, "dns_servers", servers, "dnssec", res.Mode().String(), "tls_default", cfg.TLS.Default, "tls_policies", len(cfg.TLS.Policies), "port", cfg.Delivery.Port,
		"routes", len(cfg.Delivery.Routes))

	// One slot per listener: each one's goroutine sends once, when its
	// server stops, and none may block after the loop below has returned.
	serveErr := make(chan error, len(cfg.Submission.Listen)+len(cfg.Submission.TLSListen))
	// Every listener is closed when the daemon returns, on any path: the
	// server's Shutdown closes only those its Serve has already taken,
	// which a stop right after the start can precede. (Closing one twice
	// only returns an error, which says nothing here.)
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	listen := func(addrs []string, mode string, serveOn func(net.Listener) error) error {
		for _, a := range addrs {
			l, err := net.Listen("tcp", a)
			if err != nil {
				return fmt.Errorf("submission listener %s: %w", a, err)
			}
			listeners = append(listeners, l)
			log.Info("submission listening", "addr", l.Addr().String(), "mode", mode)
			emb.listening(mode, l.Addr().String())
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
	reload := newReloader(cfg, certs, srv, verifier, policy, engine, log, level)
	adminSrv, err := serveAdmin(cfg.socketPath(), &local{q: q, users: users, state: stateDB, forget: policy.Forget, report: reporter.Send,
		reload: reload.reload, kick: engine.Kick, verifier: verifier, quota: counter, limits: srv.SendingLimits,
		bounced: engine.CountOperatorBounce,
		policyCheck: func(ctx context.Context, domain string, port int) admin.PolicyReport {
			return checkPolicy(ctx, policy, domain, port, cfg.TLS.DowngradeMemory)
		}}, log)
	if err != nil {
		return err
	}
	defer adminSrv.Close()
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
	stopWeb, err := serveWeb(cfg.Admin.MetricsListen, web, log, emb)
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
	defer signal.Stop(signals)
	emb.stopWith(ctx, signals)
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
			// The last minute's volume, so that a restart keeps the window.
			if err := counter.Flush(); err != nil {
				log.Error("sending volume not saved", "err", err)
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
func serveWeb(addr string, web *adminHTTP, log *slog.Logger, emb *embedding) (stop func() error, err error) {
	if addr == "" {
		return func() error { return nil }, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin.metrics_listen %s: %w", addr, err)
	}
	srv := serveWebOn(l, web)
	log.Info("admin listening", "addr", l.Addr().String(), "paths", "/metrics /healthz /readyz /", "password", web.password != "")
	emb.listening("admin", l.Addr().String())
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

// housekeeping deletes, at start and then daily, what is kept only for a
// while: delivery evidence and TLS report data older than the retention,
// the record of the reports sent for those days, and MTA-STS policies past
// their max_age, and downgrade memories older than theirs.
func housekeeping(ctx context.Context, q *queue.Queue, reporter *tlsrpt.Reporter, state *bolt.DB, retention, memoryMaxAge time.Duration, log *slog.Logger) {
	t := time.NewTicker(24 * time.Hour)
	defer t.Stop()
	for {
		now := time.Now()
		for _, p := range []struct {
			what  string
			prune func() (int, error)
		}{
			{"delivery evidence", func() (int, error) { return q.PruneJournal(now.Add(-retention)) }},
			{"record of TLS reports sent", func() (int, error) { return reporter.PruneSent(now.Add(-retention)) }},
			{"expired MTA-STS policies", func() (int, error) { return tlspolicy.PruneSTSCache(state, now) }},
			{"aged-out downgrade memory", func() (int, error) { return tlspolicy.PruneMemory(state, now.Add(-memoryMaxAge)) }},
		} {
			if n, err := p.prune(); err != nil {
				log.Error("housekeeping failed", "what", p.what, "err", err)
			} else if n > 0 {
				log.Info("housekeeping pruned", "what", p.what, "records", n, "retention", retention)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// logHeaderFromCheck says at start where the header From check is off: for
// everyone (submission.check_header_from: false) or for named users.
func logHeaderFromCheck(cfg *Config, users *auth.Store, log *slog.Logger) {
	if !cfg.Submission.CheckHeaderFrom {
		log.Warn("header From check is off (submission.check_header_from: false): users may write any From and Sender; DKIM still signs only for allowed addresses")
		return
	}
	list, err := users.List()
	if err != nil {
		log.Error("listing users", "err", err)
		return
	}
	for _, u := range list {
		if u.AnyHeaderFrom && len(u.AllowFrom) > 0 {
			log.Warn("header From check is off for a user (postern user header-from NAME any)", "user", u.Name)
		}
	}
}
