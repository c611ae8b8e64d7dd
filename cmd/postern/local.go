package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/internal/admin"
	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/quota"
	"github.com/postern/postern/relay/tlsrpt"
	"github.com/postern/postern/tlspolicy"
)

// local performs operations on open databases.
type local struct {
	q     *queue.Queue
	users *auth.Store
	state *bolt.DB
	// forget clears a domain's downgrade memory; in the daemon it goes
	// through the policy engine, which keeps a copy in memory.
	forget func(domain string) error
	// report sends a day's TLS reports; outside the daemon it is built on
	// first use.
	report func(ctx context.Context, day time.Time) ([]tlsrpt.Outcome, error)
	cfg    *Config
	close  func() error
	// reload re-reads the configuration; only the daemon has one.
	reload func() (string, error)
	// kick wakes the daemon's delivery after a change that makes work due.
	kick func()
	// verifier is the daemon's: it knows the users file as it runs it.
	verifier *auth.Verifier
	// quota counts what each credential sends, and holds suspensions.
	quota *quota.Counter
	// limits are the daemon's default sending limits in force.
	limits func() quota.Limits
	// bounced counts recipients failed by "queue bounce" in the daemon's
	// delivery metrics.
	bounced func(n int, inQueue time.Duration)
	// policyCheck runs "policy check" on the daemon's policy engine.
	policyCheck func(ctx context.Context, domain string, port int) admin.PolicyReport
}

func (l *local) wake() {
	if l.kick != nil {
		l.kick()
	}
}

func (l *local) QueueFlush() (int, error) {
	n, err := l.q.RetryAllNow()
	l.wake()
	return n, err
}

func (l *local) Reload() (string, error) {
	if l.reload == nil {
		return "", fmt.Errorf("postern is not running (nothing answers on its admin socket %s): nothing to reload", l.cfg.socketPath())
	}
	return l.reload()
}

func (l *local) TLSReports(day time.Time) (map[string][]tlsrpt.PolicyResult, error) {
	return tlsrpt.Aggregate(l.q, day)
}

func (l *local) TLSReportSend(day time.Time) ([]admin.ReportOutcome, error) {
	if l.report == nil {
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		res, _, err := l.cfg.resolver(log)
		if err != nil {
			return nil, err
		}
		r, err := l.cfg.reporter(l.q, res, l.cfg.dkimSigner(), l.state, nil, log)
		if err != nil {
			return nil, err
		}
		l.report = r.Send
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	outcomes, err := l.report(ctx, day)
	var out []admin.ReportOutcome
	for _, o := range outcomes {
		ro := admin.ReportOutcome{Domain: o.Domain, URI: o.URI}
		if o.Err != nil {
			ro.Error = o.Err.Error()
		}
		out = append(out, ro)
	}
	return out, err
}

func (l *local) Audit(f audit.Filter) ([]audit.Record, error) { return audit.Query(l.q, f) }

func (l *local) PolicyCheck(domain string, port int) (admin.PolicyReport, error) {
	if l.policyCheck == nil {
		return admin.PolicyReport{}, errors.New("policy check through the admin socket: only the daemon has a policy engine")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return l.policyCheck(ctx, domain, port), nil
}

func (l *local) PolicyForget(domain string) error {
	if l.forget != nil {
		return l.forget(domain)
	}
	return tlspolicy.ForgetMemory(l.state, domain)
}

func (l *local) QueueList(f queue.Filter) ([]queue.Message, error) { return l.q.List(f) }
func (l *local) QueueShow(id string) (queue.Message, error)        { return l.q.Get(id) }
func (l *local) UserList() ([]auth.User, error)                    { return l.listUsers() }
func (l *local) UserDelete(name string) error                      { return l.users.Delete(name) }
func (l *local) UserPasswd(name, pw string) error                  { return l.users.SetPassword(name, pw) }
func (l *local) UserRequireTLS(name string, on bool) error         { return l.users.SetRequireTLS(name, on) }
func (l *local) UserAnyHeaderFrom(name string, on bool) error {
	return l.users.SetAnyHeaderFrom(name, on)
}
func (l *local) Close() error {
	if l.close != nil {
		return l.close()
	}
	return nil
}
func (l *local) UserAdd(name, pw string, allow []string) error { return l.users.Add(name, pw, allow) }

func (l *local) QueueAction(action, id string) error {
	defer l.wake()
	switch action {
	case "hold":
		return l.q.Hold(id)
	case "release":
		return l.q.Release(id)
	case "delete":
		return l.q.Delete(id)
	case "retry":
		return l.q.RetryNow(id)
	case "bounce":
		return l.bounce(id)
	}
	return fmt.Errorf("unknown queue action %q", action)
}

// bounce fails a message's pending recipients now. Each gets an audit
// record, journalled with the failure in one transaction (the README
// promises a record per recipient bounced), and in the daemon counts in
// postern_delivery_recipients_total{result="bounced"}. The failure notice
// follows when delivery retires the message, as for any bounce.
func (l *local) bounce(id string) error {
	var arrival time.Time
	n, err := l.q.FailNowRecorded(id, operatorBounce, func(m *queue.Message, i int, now time.Time) [][]byte {
		arrival = m.Arrival
		r := audit.Record{Time: now, QueueID: m.ID, MessageID: m.MessageID, Sender: m.From, Recipient: m.Recipients[i].Addr,
			Result: audit.Bounced, Reply: operatorBounce}
		return [][]byte{r.Encode()}
	})
	// ErrInFlight: the pending recipients were failed and committed; the
	// ones being delivered now were left to their attempt.
	if (err == nil || errors.Is(err, queue.ErrInFlight)) && n > 0 && l.bounced != nil {
		l.bounced(n, time.Since(arrival))
	}
	return err
}

// operatorBounce is the reply recorded, and quoted in the notice, for
// recipients bounced with "queue bounce".
const operatorBounce = "5.0.0 returned to the sender by the postmaster (postern queue bounce)"

// openOperations connects to the running daemon, or opens the databases
// itself when none runs.
func openOperations(cfg *Config) (admin.Operations, error) {
	if err := checkSocketDir(cfg.DataDir, filepath.Dir(cfg.socketPath())); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", cfg.socketPath(), time.Second); err == nil {
		c.Close()
		return admin.NewClient(cfg.socketPath()), nil
	}
	// Without a daemon the command works on the files itself: as their
	// owner only, or the service could not open what it makes.
	if err := checkDataDirOwner(cfg.DataDir); err != nil {
		return nil, err
	}
	q, err := queue.Open(cfg.queuePath(), cfg.queueOptions())
	if errors.Is(err, queue.ErrLocked) {
		return nil, fmt.Errorf("postern is running but its admin socket %s does not answer: %w", cfg.socketPath(), err)
	}
	if err != nil {
		return nil, err
	}
	db, users, err := openState(cfg)
	if err != nil {
		q.Close()
		return nil, err
	}
	counter, err := quota.Open(db, nil)
	if err != nil {
		db.Close()
		q.Close()
		return nil, err
	}
	return &local{q: q, users: users, state: db, cfg: cfg, quota: counter, close: func() error { db.Close(); return q.Close() }}, nil
}

func openState(cfg *Config) (*bolt.DB, *auth.Store, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("data_dir: %w", err)
	}
	db, err := bolt.Open(cfg.statePath(), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, nil, fmt.Errorf("open state %s: %w", cfg.statePath(), err)
	}
	users, err := auth.NewStore(db, nil)
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return db, users, nil
}

// serveAdmin listens on the admin socket. The socket is made inside a
// directory of its own, mode 0700, so that it is never reachable by
// anyone else, not even in the moment between its creation and a chmod
// (connecting needs search permission on every directory of the path).
func serveAdmin(path string, ops admin.Operations, log *slog.Logger) (*http.Server, error) {
	if err := privateDir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	os.Remove(path) // a socket left by a killed daemon; the DB lock proved none runs
	// Where the socket was before it had a directory of its own.
	os.Remove(filepath.Join(filepath.Dir(filepath.Dir(path)), "admin.sock"))
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	handler := admin.Handler(ops)
	logged := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Debug("admin socket request", "method", r.Method, "path", r.URL.Path)
		handler.ServeHTTP(w, r)
	})
	srv := newLimitedServer(logged, socketLimits)
	// One request per connection: a connection is never kept open, so
	// nothing outlives the permission check made when it was opened.
	srv.SetKeepAlivesEnabled(false)
	go srv.Serve(newLimitListener(l, socketLimits.MaxConns))
	return srv, nil
}

// privateDir makes dir, or checks that it is a directory (not a link) of
// this user, and sets its mode to 0700.
func privateDir(dir string) error {
	err := os.Mkdir(dir, 0o700)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if uid := fi.Sys().(*syscall.Stat_t).Uid; int(uid) != os.Geteuid() {
		return fmt.Errorf("%s belongs to %s, not to %s", dir, userName(uid), userName(uint32(os.Geteuid())))
	}
	if fi.Mode().Perm() != 0o700 {
		return os.Chmod(dir, 0o700)
	}
	return nil
}
