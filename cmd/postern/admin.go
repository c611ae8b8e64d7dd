package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/quota"
	"github.com/postern/postern/relay/tlsrpt"
	"github.com/postern/postern/tlspolicy"
)

// operations is what the queue and user commands do. It is served over the
// admin socket by a running daemon (bbolt admits one process), and done
// directly on the databases when no daemon runs.
type operations interface {
	QueueList(f queue.Filter) ([]queue.Message, error)
	QueueShow(id string) (queue.Message, error)
	QueueAction(action, id string) error
	QueueFlush() (int, error)
	Backup(t backupTarget) (backupReport, error)
	Reload() (string, error)
	UserAdd(name, password string, allowFrom []string) error
	UserList() ([]auth.User, error)
	UserDelete(name string) error
	UserPasswd(name, password string) error
	UserRequireTLS(name string, on bool) error
	UserAnyHeaderFrom(name string, on bool) error
	UserSuspend(name string, on bool) error
	UserShow(name string) (userReport, error)
	UserLimit(name, which string, n *int) error
	PolicyForget(domain string) error
	PolicyCheck(domain string, port int) (policyReport, error)
	Audit(f audit.Filter) ([]audit.Record, error)
	TLSReports(day time.Time) (map[string][]tlsrpt.PolicyResult, error)
	TLSReportSend(day time.Time) ([]reportOutcome, error)
	Close() error
}

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
	policyCheck func(ctx context.Context, domain string, port int) policyReport
}

func (l *local) wake() {
	if l.kick != nil {
		l.kick()
	}
}

// backupReport is what "postern backup" made.
type backupReport struct {
	Dir string `json:"dir"`
	queue.BackupReport
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

func (l *local) TLSReportSend(day time.Time) ([]reportOutcome, error) {
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
	var out []reportOutcome
	for _, o := range outcomes {
		ro := reportOutcome{Domain: o.Domain, URI: o.URI}
		if o.Err != nil {
			ro.Error = o.Err.Error()
		}
		out = append(out, ro)
	}
	return out, err
}

// reportOutcome is a tlsrpt.Outcome that travels as JSON.
type reportOutcome struct {
	Domain string `json:"domain"`
	URI    string `json:"uri,omitempty"`
	Error  string `json:"error,omitempty"`
}

func (l *local) Audit(f audit.Filter) ([]audit.Record, error) { return audit.Query(l.q, f) }

func (l *local) PolicyCheck(domain string, port int) (policyReport, error) {
	if l.policyCheck == nil {
		return policyReport{}, errors.New("policy check through the admin socket: only the daemon has a policy engine")
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
func openOperations(cfg *Config) (operations, error) {
	if err := checkSocketDir(cfg.DataDir, filepath.Dir(cfg.socketPath())); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", cfg.socketPath(), time.Second); err == nil {
		c.Close()
		return newRemote(cfg.socketPath()), nil
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

// adminHandler serves operations as a small JSON API. serveAdmin bounds
// its request bodies (newLimitedServer).
func adminHandler(ops operations) http.Handler {
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, v any, err error) {
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			status := http.StatusBadRequest
			var tooBig *http.MaxBytesError
			switch {
			case errors.As(err, &tooBig):
				status = http.StatusRequestEntityTooLarge
			case errors.Is(err, queue.ErrNotFound), errors.Is(err, auth.ErrNoSuchUser):
				status = http.StatusNotFound
			case errors.Is(err, auth.ErrUserExists):
				status = http.StatusConflict
			case errors.Is(err, errConfig):
				status = http.StatusUnprocessableEntity
			}
			w.WriteHeader(status)
			json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /v1/queue", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f := queue.Filter{RcptDomain: q.Get("domain"), Sender: q.Get("sender"), State: q.Get("state")}
		var err error
		if v := q.Get("arrived_before"); v != "" {
			f.ArrivedBefore, err = time.Parse(time.RFC3339Nano, v)
		}
		if v := q.Get("arrived_after"); v != "" && err == nil {
			f.ArrivedAfter, err = time.Parse(time.RFC3339Nano, v)
		}
		if err != nil {
			reply(w, nil, fmt.Errorf("bad request: %w", err))
			return
		}
		msgs, err := ops.QueueList(f)
		reply(w, msgs, err)
	})
	mux.HandleFunc("POST /v1/backup", func(w http.ResponseWriter, r *http.Request) {
		var req backupTarget
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			reply(w, nil, fmt.Errorf("bad request: %w", err))
			return
		}
		if !filepath.IsAbs(req.Dir) || req.Parent == nil {
			reply(w, nil, errors.New("bad request: want an absolute directory and its parent's identity"))
			return
		}
		// A backup takes as long as the copy does.
		http.NewResponseController(w).SetWriteDeadline(time.Time{})
		rep, err := ops.Backup(req)
		reply(w, rep, err)
	})
	mux.HandleFunc("POST /v1/queue/flush", func(w http.ResponseWriter, r *http.Request) {
		n, err := ops.QueueFlush()
		reply(w, map[string]int{"messages": n}, err)
	})
	mux.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
		summary, err := ops.Reload()
		reply(w, map[string]string{"summary": summary}, err)
	})
	mux.HandleFunc("GET /v1/tlsrpt/{day}", func(w http.ResponseWriter, r *http.Request) {
		day, err := time.Parse("2006-01-02", r.PathValue("day"))
		if err != nil {
			reply(w, nil, fmt.Errorf("bad request: %w", err))
			return
		}
		agg, err := ops.TLSReports(day)
		reply(w, agg, err)
	})
	mux.HandleFunc("POST /v1/tlsrpt/{day}/send", func(w http.ResponseWriter, r *http.Request) {
		day, err := time.Parse("2006-01-02", r.PathValue("day"))
		if err != nil {
			reply(w, nil, fmt.Errorf("bad request: %w", err))
			return
		}
		// Sending takes up to five minutes (TLSReportSend's bound).
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(6 * time.Minute))
		out, err := ops.TLSReportSend(day)
		if err != nil {
			// Partial results matter: say what went out and what did not.
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadGateway)
			json.NewEncoder(w).Encode(map[string]any{"error": err.Error(), "outcomes": out})
			return
		}
		reply(w, out, nil)
	})
	mux.HandleFunc("GET /v1/audit", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f := audit.Filter{RcptDomain: q.Get("rcpt_domain"), MessageID: q.Get("message_id")}
		var err error
		if v := q.Get("since"); v != "" {
			f.Since, err = time.Parse(time.RFC3339Nano, v)
		}
		if v := q.Get("until"); v != "" && err == nil {
			f.Until, err = time.Parse(time.RFC3339Nano, v)
		}
		if err != nil {
			reply(w, nil, fmt.Errorf("bad request: %w", err))
			return
		}
		records, err := ops.Audit(f)
		reply(w, records, err)
	})
	mux.HandleFunc("GET /v1/queue/{id}", func(w http.ResponseWriter, r *http.Request) {
		m, err := ops.QueueShow(r.PathValue("id"))
		reply(w, m, err)
	})
	mux.HandleFunc("POST /v1/queue/{id}/{action}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]string{"ok": "true"}, ops.QueueAction(r.PathValue("action"), r.PathValue("id")))
	})
	mux.HandleFunc("GET /v1/users", func(w http.ResponseWriter, r *http.Request) {
		users, err := ops.UserList()
		reply(w, users, err)
	})
	mux.HandleFunc("POST /v1/users", func(w http.ResponseWriter, r *http.Request) {
		var req userRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			reply(w, nil, fmt.Errorf("bad request: %w", err))
			return
		}
		reply(w, map[string]string{"ok": "true"}, ops.UserAdd(req.Name, req.Password, req.AllowFrom))
	})
	mux.HandleFunc("DELETE /v1/users/{name}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]string{"ok": "true"}, ops.UserDelete(r.PathValue("name")))
	})
	mux.HandleFunc("GET /v1/policy/{domain}", func(w http.ResponseWriter, r *http.Request) {
		port, err := strconv.Atoi(r.URL.Query().Get("port"))
		if err != nil || port <= 0 || port > 65535 {
			reply(w, nil, fmt.Errorf("bad request: port %q", r.URL.Query().Get("port")))
			return
		}
		// A check takes as long as its lookups and fetch (bounded below).
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(2 * time.Minute))
		rep, err := ops.PolicyCheck(r.PathValue("domain"), port)
		reply(w, rep, err)
	})
	mux.HandleFunc("DELETE /v1/policy/memory/{domain}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]string{"ok": "true"}, ops.PolicyForget(r.PathValue("domain")))
	})
	mux.HandleFunc("POST /v1/users/{name}/require-tls", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			On bool `json:"on"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			reply(w, nil, fmt.Errorf("bad request: %w", err))
			return
		}
		reply(w, map[string]string{"ok": "true"}, ops.UserRequireTLS(r.PathValue("name"), req.On))
	})
	mux.HandleFunc("POST /v1/users/{name}/any-header-from", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			On bool `json:"on"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
			reply(w, nil, fmt.Errorf("bad request: %w", err))
			return
		}
		reply(w, map[string]string{"ok": "true"}, ops.UserAnyHeaderFrom(r.PathValue("name"), req.On))
	})
	mux.HandleFunc("POST /v1/users/{name}/password", func(w http.ResponseWriter, r *http.Request) {
		var req userRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			reply(w, nil, fmt.Errorf("bad request: %w", err))
			return
		}
		reply(w, map[string]string{"ok": "true"}, ops.UserPasswd(r.PathValue("name"), req.Password))
	})
	userVolumeRoutes(mux, ops, reply)
	handoverRoutes(mux, ops, reply)
	return mux
}

type userRequest struct {
	Name      string   `json:"name"`
	Password  string   `json:"password"`
	AllowFrom []string `json:"allow_from,omitempty"`
}

// serveAdmin listens on the admin socket. The socket is made inside a
// directory of its own, mode 0700, so that it is never reachable by
// anyone else, not even in the moment between its creation and a chmod
// (connecting needs search permission on every directory of the path).
func serveAdmin(path string, ops operations, log *slog.Logger) (*http.Server, error) {
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
	handler := adminHandler(ops)
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

// remote performs operations through a running daemon's admin socket.
type remote struct {
	client *http.Client
	// long has no overall timeout, for a backup: it takes as long as
	// the copy does.
	long *http.Client
}

func newRemote(path string) *remote {
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}
	return &remote{client: &http.Client{Timeout: time.Minute, Transport: transport}, long: &http.Client{Transport: transport}}
}

// remoteError carries the daemon's answer, keeping "not found" recognisable.
type remoteError struct {
	status int
	msg    string
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Is(target error) bool {
	switch e.status {
	case http.StatusNotFound:
		return target == queue.ErrNotFound || target == auth.ErrNoSuchUser
	case http.StatusConflict:
		return target == auth.ErrUserExists
	case http.StatusUnprocessableEntity:
		return target == errConfig
	}
	return false
}

func (r *remote) do(method, path string, body, out any) error {
	return r.doWith(r.client, method, path, body, out)
}

func (r *remote) doWith(client *http.Client, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://postern"+path, rd)
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e map[string]string
		json.NewDecoder(resp.Body).Decode(&e)
		return &remoteError{resp.StatusCode, e["error"]}
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (r *remote) QueueList(f queue.Filter) ([]queue.Message, error) {
	var out []queue.Message
	v := url.Values{"domain": {f.RcptDomain}, "sender": {f.Sender}, "state": {f.State}}
	if !f.ArrivedBefore.IsZero() {
		v.Set("arrived_before", f.ArrivedBefore.Format(time.RFC3339Nano))
	}
	if !f.ArrivedAfter.IsZero() {
		v.Set("arrived_after", f.ArrivedAfter.Format(time.RFC3339Nano))
	}
	return out, r.do("GET", "/v1/queue?"+v.Encode(), nil, &out)
}

// Backup asks the daemon for a backup, telling it which directory DIR's
// parent is here: the daemon may see another (a private /tmp).
func (r *remote) Backup(t backupTarget) (backupReport, error) {
	var out backupReport
	t, err := targetFor(t.Dir)
	if err != nil {
		return out, err
	}
	return out, r.doWith(r.long, "POST", "/v1/backup", t, &out)
}
func (r *remote) QueueFlush() (int, error) {
	var out map[string]int
	err := r.do("POST", "/v1/queue/flush", nil, &out)
	return out["messages"], err
}
func (r *remote) Reload() (string, error) {
	var out map[string]string
	err := r.do("POST", "/v1/reload", nil, &out)
	return out["summary"], err
}
func (r *remote) TLSReports(day time.Time) (map[string][]tlsrpt.PolicyResult, error) {
	var out map[string][]tlsrpt.PolicyResult
	return out, r.do("GET", "/v1/tlsrpt/"+day.Format("2006-01-02"), nil, &out)
}
func (r *remote) TLSReportSend(day time.Time) ([]reportOutcome, error) {
	var out []reportOutcome
	return out, r.doWith(r.long, "POST", "/v1/tlsrpt/"+day.Format("2006-01-02")+"/send", nil, &out)
}
func (r *remote) Audit(f audit.Filter) ([]audit.Record, error) {
	var out []audit.Record
	v := url.Values{"rcpt_domain": {f.RcptDomain}, "message_id": {f.MessageID}}
	if !f.Since.IsZero() {
		v.Set("since", f.Since.Format(time.RFC3339Nano))
	}
	if !f.Until.IsZero() {
		v.Set("until", f.Until.Format(time.RFC3339Nano))
	}
	return out, r.do("GET", "/v1/audit?"+v.Encode(), nil, &out)
}
func (r *remote) QueueShow(id string) (queue.Message, error) {
	var m queue.Message
	return m, r.do("GET", "/v1/queue/"+url.PathEscape(id), nil, &m)
}
func (r *remote) QueueAction(action, id string) error {
	return r.do("POST", "/v1/queue/"+url.PathEscape(id)+"/"+url.PathEscape(action), nil, nil)
}
func (r *remote) UserAdd(name, pw string, allow []string) error {
	return r.do("POST", "/v1/users", userRequest{Name: name, Password: pw, AllowFrom: allow}, nil)
}
func (r *remote) UserList() ([]auth.User, error) {
	var out []auth.User
	return out, r.do("GET", "/v1/users", nil, &out)
}
func (r *remote) UserDelete(name string) error {
	return r.do("DELETE", "/v1/users/"+url.PathEscape(name), nil, nil)
}
func (r *remote) PolicyCheck(domain string, port int) (policyReport, error) {
	var out policyReport
	return out, r.doWith(r.long, "GET", "/v1/policy/"+url.PathEscape(domain)+"?port="+strconv.Itoa(port), nil, &out)
}
func (r *remote) PolicyForget(domain string) error {
	return r.do("DELETE", "/v1/policy/memory/"+url.PathEscape(domain), nil, nil)
}
func (r *remote) UserRequireTLS(name string, on bool) error {
	return r.do("POST", "/v1/users/"+url.PathEscape(name)+"/require-tls", map[string]bool{"on": on}, nil)
}
func (r *remote) UserAnyHeaderFrom(name string, on bool) error {
	return r.do("POST", "/v1/users/"+url.PathEscape(name)+"/any-header-from", map[string]bool{"on": on}, nil)
}
func (r *remote) UserPasswd(name, pw string) error {
	return r.do("POST", "/v1/users/"+url.PathEscape(name)+"/password", userRequest{Password: pw}, nil)
}
func (r *remote) Close() error { return nil }
