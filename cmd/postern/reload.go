package main

import (
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/delivery"
	"github.com/postern/postern/relay/submission"
	"github.com/postern/postern/tlspolicy"
)

// liveKeys are the settings a reload applies to the running daemon. The
// others (listeners, data_dir, DNS, workers, timeouts, message size…) are
// read once at start; a reload that changes them says a restart is needed.
var liveKeys = []string{
	"log.level",
	"submission.max_recipients", "submission.max_connections", "submission.max_connections_per_ip",
	"submission.proxy_protocol",
	"submission.auth.", "submission.limits.",
	"tls.default", "tls.policies", "tls.honor_tls_required_no",
	"delivery.routes",
}

func isLive(key string) bool {
	return slices.ContainsFunc(liveKeys, func(k string) bool {
		return key == k || strings.HasSuffix(k, ".") && strings.HasPrefix(key, k)
	})
}

// reloader re-reads the configuration on SIGHUP or "postern reload".
type reloader struct {
	mu      sync.Mutex        // SIGHUP and the admin socket may ask at once
	path    string            // the file the daemon started with ("" for none)
	running map[string]string // every key as the daemon runs it
	certs   *submission.Certificates
	srv     *submission.Server
	auth    *auth.Verifier
	policy  *tlspolicy.Engine
	engine  *delivery.Engine
	log     *slog.Logger
	level   *slog.LevelVar // the daemon's log level, set from log.level
}

func newReloader(cfg *Config, certs *submission.Certificates, srv *submission.Server, verifier *auth.Verifier,
	policy *tlspolicy.Engine, engine *delivery.Engine, log *slog.Logger, level *slog.LevelVar) *reloader {
	return &reloader{path: cfg.path, running: flatten(cfg), certs: certs, srv: srv, auth: verifier, policy: policy, engine: engine,
		log: log, level: level}
}

// reload applies what it can and reports what changed. A configuration
// that does not validate changes nothing.
func (r *reloader) reload() (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	next, err := loadConfig(r.path)
	if err != nil {
		r.log.Error("reload: configuration refused; nothing changed", "err", err)
		return "", err
	}
	def, policies := next.tlsRules()
	// The users file is read again on every reload, changed or not: that
	// is how configuration management hands over new users. One that does
	// not parse refuses the reload, and the users in force stay.
	users, err := r.applyUsers(next)
	if err != nil {
		r.log.Error("reload: configuration refused; nothing changed", "err", err)
		return "", err
	}
	certChanged, certErr := r.certs.Reload()
	if certErr != nil {
		r.log.Error("reload: certificate not replaced", "err", certErr)
	}
	var applied, restart []string
	for key, value := range flatten(next) {
		if r.running[key] == value {
			continue
		}
		if isLive(key) {
			applied = append(applied, key)
			r.running[key] = value
		} else {
			restart = append(restart, key)
		}
	}
	slices.Sort(applied)
	slices.Sort(restart)
	r.level.Set(next.Log.level)
	r.srv.SetLimits(next.Submission.MaxRecipients, next.Submission.MaxConnections, next.Submission.MaxConnectionsPerIP)
	r.srv.SetProxyNetworks(next.proxyNetworks())
	r.auth.SetLimits(next.authLimits())
	r.srv.SetSendingLimits(next.sendingLimits())
	r.applyDirectory(next, applied)
	r.policy.SetRules(def, policies, next.TLS.HonorTLSRequiredNo)
	r.engine.SetRoutes(next.deliveryConfig().Routes)

	// Key names only: values may be secrets (route passwords, admin.password).
	r.log.Info("reload: configuration applied", "file", next.file, "changed", applied, "certificate_changed", certChanged)
	if len(restart) > 0 {
		r.log.Warn("reload: these settings cannot change while running; restart postern to apply them", "keys", restart)
	}
	summary := fmt.Sprintf("applied: %s\ncertificate: %s", orNone(applied), map[bool]string{true: "replaced", false: "unchanged"}[certChanged])
	if users != "" {
		summary += "\n" + users
	}
	if certErr != nil {
		summary += " (" + certErr.Error() + ")"
	}
	if len(restart) > 0 {
		summary += "\nneed a restart: " + strings.Join(restart, ", ")
	}
	return summary, nil
}

func orNone(keys []string) string {
	if len(keys) == 0 {
		return "nothing changed"
	}
	return strings.Join(keys, ", ")
}

// flatten lists every setting by its key, as the configuration file names it.
func flatten(cfg *Config) map[string]string {
	out := map[string]string{}
	var walk func(prefix string, v reflect.Value)
	walk = func(prefix string, v reflect.Value) {
		t := v.Type()
		for i := range t.NumField() {
			tag := t.Field(i).Tag.Get("mapstructure")
			if tag == "" {
				continue
			}
			key := prefix + tag
			f := v.Field(i)
			if f.Kind() == reflect.Struct && f.Type() != reflect.TypeFor[time.Time]() {
				walk(key+".", f)
				continue
			}
			out[key] = fmt.Sprintf("%+v", f.Interface())
		}
	}
	walk("", reflect.ValueOf(cfg).Elem())
	return out
}
