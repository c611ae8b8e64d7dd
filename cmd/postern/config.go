package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"

	"github.com/postern/postern/internal/admin"
	"github.com/postern/postern/relay/auth"
)

// Config is the whole configuration, parsed once at start. Nothing below
// cmd/postern reads viper: packages get the typed pieces they need.
type Config struct {
	Hostname   string            `mapstructure:"hostname"`
	DataDir    string            `mapstructure:"data_dir"`
	Log        LogConfig         `mapstructure:"log"`
	Submission SubmissionConfig  `mapstructure:"submission"`
	Queue      QueueConfig       `mapstructure:"queue"`
	DNS        DNSConfig         `mapstructure:"dns"`
	Delivery   DeliveryConfig    `mapstructure:"delivery"`
	TLS        OutboundTLSConfig `mapstructure:"tls"`
	Audit      AuditConfig       `mapstructure:"audit"`
	DKIM       DKIMConfig        `mapstructure:"dkim"`
	TLSRPT     TLSRPTConfig      `mapstructure:"tlsrpt"`
	Shutdown   ShutdownConfig    `mapstructure:"shutdown"`
	Admin      AdminConfig       `mapstructure:"admin"`
	Telemetry  TelemetryConfig   `mapstructure:"telemetry"`

	file string // where it came from, for messages
	path string // the file read, if any, to read again on reload
	// stsPort is where MTA-STS policies are fetched instead of 443: only
	// postern demo sets it, for its private internet on loopback.
	stsPort int
	// set holds the values parse read out of the keys above.
	set settings
}

type LogConfig struct {
	Level  string     `mapstructure:"level"`
	Format string     `mapstructure:"format"`
	level  slog.Level // Level, parsed; the zero value is info
}

// defaults are the production values; configs/postern.yaml documents each.
var defaults = map[string]any{
	"hostname":                            "",
	"data_dir":                            "/var/lib/postern",
	"log.level":                           "info",
	"log.format":                          "text",
	"submission.listen":                   []string{":587"},
	"submission.tls_listen":               []string{":465"},
	"submission.tls.cert_file":            "",
	"submission.tls.key_file":             "",
	"submission.tls.min_version":          "1.2",
	"submission.tls.reload_interval":      "30s",
	"submission.max_message_bytes":        int64(35 << 20),
	"submission.max_recipients":           1000,
	"submission.max_line_length":          2000,
	"submission.command_timeout":          "5m",
	"submission.data_timeout":             "3m",
	"submission.max_connections":          1000,
	"submission.max_connections_per_ip":   50,
	"submission.check_header_from":        true,
	"submission.proxy_protocol":           []string{},
	"submission.auth.free_failures":       auth.DefaultLimits.FreeFailures,
	"submission.auth.failure_delay":       auth.DefaultLimits.Delay.String(),
	"submission.auth.max_failure_delay":   auth.DefaultLimits.MaxDelay.String(),
	"submission.auth.max_failures":        auth.DefaultLimits.MaxFailures,
	"submission.auth.failure_window":      auth.DefaultLimits.Window.String(),
	"submission.auth.lockout":             auth.DefaultLimits.Lockout.String(),
	"queue.inline_limit":                  int64(128 << 10),
	"queue.check_timeout":                 "1m",
	"dns.servers":                         []string{},
	"dns.timeout":                         "2s",
	"dns.dnssec":                          "validate",
	"dns.trust_anchor_file":               "",
	"dns.trust_ad_remote":                 false,
	"dns.on_broken_upstream":              "defer",
	"dns.cache_size":                      10000,
	"dns.cache_max_ttl":                   "1h",
	"dns.probe_interval":                  "1h",
	"tls.default":                         "may",
	"tls.ca_file":                         "",
	"tls.client_cert_file":                "",
	"tls.client_key_file":                 "",
	"tls.honor_tls_required_no":           true,
	"tls.mta_sts_timeout":                 "30s",
	"tls.downgrade_memory":                "warn",
	"audit.retention":                     "2160h",
	"dkim.headers":                        []string{},
	"tlsrpt.enabled":                      false,
	"tlsrpt.organization_name":            "",
	"tlsrpt.contact_info":                 "",
	"tlsrpt.submitter":                    "",
	"tlsrpt.from":                         "",
	"tlsrpt.send_hour":                    1,
	"tlsrpt.allow_networks":               []string{},
	"tls.downgrade_memory_max_age":        "720h",
	"delivery.port":                       25,
	"delivery.workers":                    32,
	"delivery.retry":                      []string{"1m", "5m", "15m", "30m", "1h", "2h"},
	"delivery.max_queue_lifetime":         "120h",
	"delivery.delay_warning":              "4h",
	"delivery.max_addr_attempts":          5,
	"delivery.prefer_ipv6":                false,
	"delivery.lease_time":                 "30m",
	"delivery.poll_interval":              "5s",
	"delivery.reuse_count":                100,
	"delivery.reuse_idle":                 "10s",
	"delivery.max_connections_per_domain": 20,
	"shutdown.timeout":                    "30s",
	"admin.metrics_listen":                "127.0.0.1:9587",
	"admin.password":                      "",
	"telemetry.otlp_endpoint":             "",
	"telemetry.otlp_interval":             "60s",
	"telemetry.trace_sample_ratio":        1.0,

	// 0: GOMAXPROCS, at most 4 (auth.DefaultConcurrentHashes).
	"submission.auth.max_concurrent_hashes": 0,
	"submission.auth.users_file":            "",
	"submission.auth.ldap.url":              "",
	"submission.auth.ldap.starttls":         false,
	"submission.auth.ldap.ca_file":          "",
	"submission.auth.ldap.bind_dn":          "",
	"submission.auth.ldap.bind_password":    "",
	"submission.auth.ldap.base":             "",
	"submission.auth.ldap.filter":           "(uid={user})",
	"submission.auth.ldap.sender_attribute": "",
	"submission.auth.ldap.sender_template":  "",
	"submission.auth.ldap.timeout":          "10s",
	"submission.limits.messages_per_hour":   0,
	"submission.limits.recipients_per_hour": 0,

	// Per-destination concurrency and dead destinations (relay/delivery's destinations).
	"delivery.initial_connections_per_domain": 5,
	"delivery.dead_destination_failures":      5,
	"delivery.dead_destination_cooldown":      "5m",
}

// loadConfig reads file (may be empty: defaults and environment only). Every
// key can be set as POSTERN_<KEY> with dots as underscores, lists comma-separated.
func loadConfig(file string) (*Config, error) {
	if file == "" {
		cfg, err := parseConfig("", nil)
		return cfg, asConfigError(err)
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, &configError{fmt.Errorf("read config %s: %w", file, err)}
	}
	defer f.Close()
	cfg, err := parseConfig(file, f)
	return cfg, asConfigError(err)
}

// errConfig is what every configuration error is (errors.Is): the CLI
// exits 2 for it, and the admin socket tells it from other failures.
var errConfig = admin.ErrConfig

// configError marks an error as the configuration's, keeping its text.
type configError struct{ err error }

func (e *configError) Error() string        { return e.err.Error() }
func (e *configError) Unwrap() error        { return e.err }
func (e *configError) Is(target error) bool { return target == errConfig }

func asConfigError(err error) error {
	if err == nil {
		return nil
	}
	return &configError{err}
}

// parseConfig reads YAML from r (none when nil) over the defaults and the
// environment; file names it in errors.
func parseConfig(file string, r io.Reader) (*Config, error) {
	v := viper.New()
	for k, val := range defaults {
		v.SetDefault(k, val)
	}
	v.SetEnvPrefix("POSTERN")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	// Keys with defaults are bound by AutomaticEnv; binding each explicitly
	// keeps environment settings working even for keys without one.
	for k := range defaults {
		v.BindEnv(k)
	}
	v.AutomaticEnv()
	// An empty variable is a setting too: POSTERN_SUBMISSION_TLS_LISTEN=
	// turns the implicit-TLS listener off.
	v.AllowEmptyEnv(true)
	where := "defaults and environment"
	if r != nil {
		v.SetConfigType("yaml")
		if err := v.ReadConfig(r); err != nil {
			return nil, fmt.Errorf("read config %s: %w", file, err)
		}
		where = file
	}
	cfg := &Config{file: where, path: file}
	err := v.Unmarshal(cfg, func(dc *mapstructure.DecoderConfig) {
		dc.ErrorUnused = true
		dc.DecodeHook = mapstructure.ComposeDecodeHookFunc(
			mapstructure.StringToTimeDurationHookFunc(),
			commaListHook,
			yamlTimeHook,
		)
	})
	if err != nil {
		return nil, fmt.Errorf("config %s: %s", where, cleanDecodeError(err))
	}
	if err := cfg.parse(); err != nil {
		return nil, fmt.Errorf("config %s: %w", where, err)
	}
	return cfg, nil
}

// yamlTimeHook gives back as text the dates YAML turns into timestamps
// (until: 2026-12-04), for string fields that parse them themselves.
func yamlTimeHook(from, to reflect.Type, data any) (any, error) {
	t, ok := data.(time.Time)
	if !ok || to.Kind() != reflect.String {
		return data, nil
	}
	if t.Equal(t.Truncate(24*time.Hour)) && t.Location() == time.UTC {
		return t.Format("2006-01-02"), nil
	}
	return t.Format(time.RFC3339), nil
}

// commaListHook lets an environment variable give a list as "a,b".
func commaListHook(from, to reflect.Type, data any) (any, error) {
	if from.Kind() != reflect.String || to.Kind() != reflect.Slice {
		return data, nil
	}
	s := strings.TrimSpace(data.(string))
	if s == "" {
		return []string{}, nil
	}
	parts := strings.Split(s, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts, nil
}

func cleanDecodeError(err error) string {
	msg := err.Error()
	msg = strings.ReplaceAll(msg, "decoding failed due to the following error(s):\n\n", "")
	msg = strings.ReplaceAll(msg, "has invalid keys:", "has unknown keys:")
	return msg
}

func (c *Config) queuePath() string { return filepath.Join(c.DataDir, "queue.db") }
func (c *Config) statePath() string { return filepath.Join(c.DataDir, "state.db") }

// socketPath is the admin socket, in a directory of its own (mode 0700):
// see serveAdmin.
func (c *Config) socketPath() string { return filepath.Join(c.DataDir, "admin", "admin.sock") }
