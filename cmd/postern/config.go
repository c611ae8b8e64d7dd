package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/delivery"
	"github.com/postern/postern/relay/dkim"
	"github.com/postern/postern/relay/submission"
	"github.com/postern/postern/relay/tlsrpt"
	"github.com/postern/postern/resolver"
	"github.com/postern/postern/tlspolicy"
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
}

type LogConfig struct {
	Level  string `mapstructure:"level"`
	Format string `mapstructure:"format"`
}

type SubmissionConfig struct {
	Listen              []string      `mapstructure:"listen"`
	TLSListen           []string      `mapstructure:"tls_listen"`
	TLS                 TLSConfig     `mapstructure:"tls"`
	MaxMessageBytes     int64         `mapstructure:"max_message_bytes"`
	MaxRecipients       int           `mapstructure:"max_recipients"`
	MaxLineLength       int           `mapstructure:"max_line_length"`
	CommandTimeout      time.Duration `mapstructure:"command_timeout"`
	DataTimeout         time.Duration `mapstructure:"data_timeout"`
	MaxConnections      int           `mapstructure:"max_connections"`
	MaxConnectionsPerIP int           `mapstructure:"max_connections_per_ip"`
	CheckHeaderFrom     bool          `mapstructure:"check_header_from"`
	Auth                AuthConfig    `mapstructure:"auth"`
	Limits              SendingLimits `mapstructure:"limits"`
	// ProxyProtocol lists the load balancers' networks (CIDR) whose
	// connections open with a PROXY protocol header; empty is off.
	ProxyProtocol []string `mapstructure:"proxy_protocol"`
}

// SendingLimits are the default hourly limits of every credential; 0 is
// unlimited. Users may carry their own.
type SendingLimits struct {
	MessagesPerHour   int `mapstructure:"messages_per_hour"`
	RecipientsPerHour int `mapstructure:"recipients_per_hour"`
}

type TLSConfig struct {
	CertFile       string        `mapstructure:"cert_file"`
	KeyFile        string        `mapstructure:"key_file"`
	MinVersion     string        `mapstructure:"min_version"`
	ReloadInterval time.Duration `mapstructure:"reload_interval"`
}

type AuthConfig struct {
	FreeFailures    int           `mapstructure:"free_failures"`
	FailureDelay    time.Duration `mapstructure:"failure_delay"`
	MaxFailureDelay time.Duration `mapstructure:"max_failure_delay"`
	MaxFailures     int           `mapstructure:"max_failures"`
	FailureWindow   time.Duration `mapstructure:"failure_window"`
	Lockout         time.Duration `mapstructure:"lockout"`
	// MaxConcurrentHashes bounds the password hashes in flight; 0 is
	// GOMAXPROCS, at most 4.
	MaxConcurrentHashes int `mapstructure:"max_concurrent_hashes"`
	// UsersFile is a users file (auth.FileUsers), consulted before the
	// built-in store; "" for none.
	UsersFile string     `mapstructure:"users_file"`
	LDAP      LDAPConfig `mapstructure:"ldap"`
}

// LDAPConfig is the directory consulted after the users file and the
// built-in store; an empty url turns it off.
type LDAPConfig struct {
	URL             string        `mapstructure:"url"`
	StartTLS        bool          `mapstructure:"starttls"`
	CAFile          string        `mapstructure:"ca_file"`
	BindDN          string        `mapstructure:"bind_dn"`
	BindPassword    string        `mapstructure:"bind_password"`
	Base            string        `mapstructure:"base"`
	Filter          string        `mapstructure:"filter"`
	SenderAttribute string        `mapstructure:"sender_attribute"`
	SenderTemplate  string        `mapstructure:"sender_template"`
	Timeout         time.Duration `mapstructure:"timeout"`
}

type QueueConfig struct {
	InlineLimit  int64         `mapstructure:"inline_limit"`
	CheckTimeout time.Duration `mapstructure:"check_timeout"`
}

// minRetention is the least audit.retention: the journal it prunes also
// holds what the TLS reporter aggregates, a whole UTC day at a time, after
// the day ends (RFC 8460 4.1) and possibly hours later (tlsrpt.send_hour).
const minRetention = 48 * time.Hour

// queueOptions are the queue's options from the configuration.
func (c *Config) queueOptions() queue.Options {
	check := c.Queue.CheckTimeout
	if check == 0 {
		check = -1 // the key's 0 means no check; the queue's, its default
	}
	return queue.Options{InlineLimit: c.Queue.InlineLimit, CheckTimeout: check}
}

type DNSConfig struct {
	Servers          []string      `mapstructure:"servers"`
	Timeout          time.Duration `mapstructure:"timeout"`
	DNSSEC           string        `mapstructure:"dnssec"`
	TrustAnchorFile  string        `mapstructure:"trust_anchor_file"`
	TrustADRemote    bool          `mapstructure:"trust_ad_remote"`
	OnBrokenUpstream string        `mapstructure:"on_broken_upstream"`
	CacheSize        int           `mapstructure:"cache_size"`
	CacheMaxTTL      time.Duration `mapstructure:"cache_max_ttl"`
	ProbeInterval    time.Duration `mapstructure:"probe_interval"`
}

type DeliveryConfig struct {
	Port             int             `mapstructure:"port"`
	Workers          int             `mapstructure:"workers"`
	Retry            []time.Duration `mapstructure:"retry"`
	MaxQueueLifetime time.Duration   `mapstructure:"max_queue_lifetime"`
	DelayWarning     time.Duration   `mapstructure:"delay_warning"`
	MaxAddrAttempts  int             `mapstructure:"max_addr_attempts"`
	PreferIPv6       bool            `mapstructure:"prefer_ipv6"`
	LeaseTime        time.Duration   `mapstructure:"lease_time"`
	PollInterval     time.Duration   `mapstructure:"poll_interval"`
	Routes           []RouteConfig   `mapstructure:"routes"`
	ReuseCount       int             `mapstructure:"reuse_count"`
	ReuseIdle        time.Duration   `mapstructure:"reuse_idle"`
	MaxConnsPerDom   int             `mapstructure:"max_connections_per_domain"`
	// SourceAddresses are the local addresses deliveries leave from,
	// each with its EHLO name; empty lets the kernel choose.
	SourceAddresses []SourceAddressConfig `mapstructure:"source_addresses"`
}

// SourceAddressConfig is one entry of delivery.source_addresses.
type SourceAddressConfig struct {
	Address string `mapstructure:"address"`
	HELO    string `mapstructure:"helo"`
}

type RouteConfig struct {
	Domain   string `mapstructure:"domain"`
	NextHop  string `mapstructure:"next_hop"`
	Username string `mapstructure:"username"`
	Password string `mapstructure:"password"`
	TLS      string `mapstructure:"tls"`
	// AuthOverUnverifiedTLS lets credentials go over tls: encrypt.
	AuthOverUnverifiedTLS bool     `mapstructure:"auth_over_unverified_tls"`
	TLSPins               []string `mapstructure:"tls_pins"`
	// SourceAddress pins the local address this route's connections
	// leave from.
	SourceAddress string `mapstructure:"source_address"`
}

// OutboundTLSConfig is the outbound TLS policy (the tls section).
type OutboundTLSConfig struct {
	Default            string            `mapstructure:"default"`
	CAFile             string            `mapstructure:"ca_file"`
	ClientCertFile     string            `mapstructure:"client_cert_file"`
	ClientKeyFile      string            `mapstructure:"client_key_file"`
	HonorTLSRequiredNo bool              `mapstructure:"honor_tls_required_no"`
	MTASTSTimeout      time.Duration     `mapstructure:"mta_sts_timeout"`
	DowngradeMemory    string            `mapstructure:"downgrade_memory"`
	MemoryMaxAge       time.Duration     `mapstructure:"downgrade_memory_max_age"`
	Policies           []TLSPolicyConfig `mapstructure:"policies"`
}

// TLSPolicyConfig is one entry of tls.policies.
type TLSPolicyConfig struct {
	Domain        string   `mapstructure:"domain"`
	Mode          string   `mapstructure:"mode"`
	MinTLSVersion string   `mapstructure:"min_tls_version"`
	Names         []string `mapstructure:"names"`
	Until         string   `mapstructure:"until"`
	Override      bool     `mapstructure:"override"`
}

// DKIMConfig lists the signing keys.
type DKIMConfig struct {
	Headers []string        `mapstructure:"headers"`
	Keys    []DKIMKeyConfig `mapstructure:"keys"`
}

// DKIMKeyConfig is one key of dkim.keys.
type DKIMKeyConfig struct {
	Domain   string `mapstructure:"domain"`
	Selector string `mapstructure:"selector"`
	KeyFile  string `mapstructure:"key_file"`
}

// TLSRPTConfig sends TLS reports (RFC 8460).
type TLSRPTConfig struct {
	Enabled          bool   `mapstructure:"enabled"`
	OrganizationName string `mapstructure:"organization_name"`
	ContactInfo      string `mapstructure:"contact_info"`
	Submitter        string `mapstructure:"submitter"`
	From             string `mapstructure:"from"`
	SendHour         int    `mapstructure:"send_hour"`
	// AllowNetworks are internal ranges an https: rua may reach (a lab).
	AllowNetworks []string `mapstructure:"allow_networks"`
}

// AuditConfig keeps the delivery evidence.
type AuditConfig struct {
	Retention time.Duration `mapstructure:"retention"`
}

type ShutdownConfig struct {
	Timeout time.Duration `mapstructure:"timeout"`
}

// AdminConfig is the HTTP listener for metrics, health checks and the
// status page (the admin socket needs no settings).
type AdminConfig struct {
	MetricsListen string `mapstructure:"metrics_listen"`
	Password      string `mapstructure:"password"`
}

// TelemetryConfig sends metrics and traces over OTLP/HTTP.
type TelemetryConfig struct {
	OTLPEndpoint     string        `mapstructure:"otlp_endpoint"`
	OTLPInterval     time.Duration `mapstructure:"otlp_interval"`
	TraceSampleRatio float64       `mapstructure:"trace_sample_ratio"`
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
var errConfig = errors.New("bad configuration")

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
	if err := cfg.validate(); err != nil {
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

func (c *Config) validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			bad("hostname", "not set and the system hostname is unknown")
		}
		c.Hostname = h
	}
	if strings.ContainsAny(c.Hostname, " \t\r\n()<>;") {
		bad("hostname", "%q is not a host name", c.Hostname)
	}
	if c.DataDir == "" {
		bad("data_dir", "must be set")
	} else if abs, err := filepath.Abs(c.DataDir); err == nil {
		c.DataDir = abs
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q: use debug, info, warn or error", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		bad("log.format", "%q: use text or json", c.Log.Format)
	}
	s := &c.Submission
	if len(s.Listen)+len(s.TLSListen) == 0 {
		bad("submission.listen", "no listener: set submission.listen or submission.tls_listen")
	}
	for key, addrs := range map[string][]string{"submission.listen": s.Listen, "submission.tls_listen": s.TLSListen} {
		for _, a := range addrs {
			if _, _, err := net.SplitHostPort(a); err != nil {
				bad(key, "%q is not host:port", a)
			}
		}
	}
	if _, err := parseNetworks(s.ProxyProtocol); err != nil {
		bad("submission.proxy_protocol", "%v", err)
	}
	if (s.TLS.CertFile == "") != (s.TLS.KeyFile == "") {
		bad("submission.tls.cert_file", "cert_file and key_file go together")
	}
	for key, f := range map[string]string{"submission.tls.cert_file": s.TLS.CertFile, "submission.tls.key_file": s.TLS.KeyFile} {
		if f != "" {
			if _, err := os.Stat(f); err != nil {
				bad(key, "%v", err)
			}
		}
	}
	if _, err := tlsVersion(s.TLS.MinVersion); err != nil {
		bad("submission.tls.min_version", "%v", err)
	}
	positive := map[string]int64{
		"submission.max_message_bytes":        s.MaxMessageBytes,
		"submission.max_recipients":           int64(s.MaxRecipients),
		"submission.max_line_length":          int64(s.MaxLineLength),
		"submission.command_timeout":          int64(s.CommandTimeout),
		"submission.data_timeout":             int64(s.DataTimeout),
		"submission.max_connections":          int64(s.MaxConnections),
		"submission.max_connections_per_ip":   int64(s.MaxConnectionsPerIP),
		"submission.auth.max_failures":        int64(s.Auth.MaxFailures),
		"submission.auth.failure_window":      int64(s.Auth.FailureWindow),
		"submission.auth.lockout":             int64(s.Auth.Lockout),
		"queue.inline_limit":                  c.Queue.InlineLimit,
		"shutdown.timeout":                    int64(c.Shutdown.Timeout),
		"telemetry.otlp_interval":             int64(c.Telemetry.OTLPInterval),
		"dns.timeout":                         int64(c.DNS.Timeout),
		"dns.cache_size":                      int64(c.DNS.CacheSize),
		"dns.cache_max_ttl":                   int64(c.DNS.CacheMaxTTL),
		"tls.mta_sts_timeout":                 int64(c.TLS.MTASTSTimeout),
		"tls.downgrade_memory_max_age":        int64(c.TLS.MemoryMaxAge),
		"audit.retention":                     int64(c.Audit.Retention),
		"delivery.workers":                    int64(c.Delivery.Workers),
		"delivery.max_queue_lifetime":         int64(c.Delivery.MaxQueueLifetime),
		"delivery.max_addr_attempts":          int64(c.Delivery.MaxAddrAttempts),
		"delivery.lease_time":                 int64(c.Delivery.LeaseTime),
		"delivery.poll_interval":              int64(c.Delivery.PollInterval),
		"delivery.reuse_count":                int64(c.Delivery.ReuseCount),
		"delivery.max_connections_per_domain": int64(c.Delivery.MaxConnsPerDom),
	}
	for key, n := range positive {
		if n <= 0 {
			bad(key, "must be greater than zero")
		}
	}
	if c.Queue.CheckTimeout < 0 {
		bad("queue.check_timeout", "must not be negative (0 turns the check off)")
	}
	if r := c.Audit.Retention; r > 0 && r < minRetention {
		bad("audit.retention", "%s is shorter than the %s the TLS reporter needs: it reports each UTC day once the day is over, from the delivery journal this key prunes", r, minRetention)
	}
	if s.MaxLineLength > 0 && s.MaxLineLength < 1000 {
		bad("submission.max_line_length", "%d is below the 1000 octets RFC 5321 4.5.3.1.6 requires", s.MaxLineLength)
	}
	dl := &c.Delivery
	if dl.Port < 1 || dl.Port > 65535 {
		bad("delivery.port", "%d is not a TCP port", dl.Port)
	}
	if len(dl.Retry) == 0 {
		bad("delivery.retry", "needs at least one interval")
	}
	for _, r := range dl.Retry {
		if r <= 0 {
			bad("delivery.retry", "intervals must be greater than zero")
		}
	}
	for i, r := range dl.Routes {
		key := fmt.Sprintf("delivery.routes[%d]", i)
		if r.Domain == "" || strings.ContainsAny(r.Domain, " @") {
			bad(key+".domain", "%q: use a domain, .suffix or *", r.Domain)
		}
		if _, port, err := net.SplitHostPort(r.NextHop); err != nil || port == "" {
			bad(key+".next_hop", "%q is not host:port", r.NextHop)
		}
		if (r.Username == "") != (r.Password == "") {
			bad(key+".username", "username and password go together")
		}
		level := tlspolicy.Verify // what a route with credentials gets by default
		if r.TLS != "" {
			var err error
			if level, err = tlspolicy.ParseLevel(r.TLS); err != nil {
				bad(key+".tls", "%v", err)
			}
		}
		if r.Username != "" {
			// Credentials go only over verified TLS (PKIX, or a pinned key).
			switch {
			case level <= tlspolicy.May:
				bad(key+".tls", "%q with username: credentials would be sent where TLS is optional; use verify", r.TLS)
			case level == tlspolicy.Encrypt && !r.AuthOverUnverifiedTLS:
				bad(key+".tls", "encrypt with username sends credentials to any certificate; use verify (with tls.ca_file or tls_pins), or set %s.auth_over_unverified_tls: true knowingly", key)
			}
		}
		if r.AuthOverUnverifiedTLS && (r.Username == "" || level != tlspolicy.Encrypt) {
			bad(key+".auth_over_unverified_tls", "only means something with username and tls: encrypt")
		}
		for _, pin := range r.TLSPins {
			if _, err := parsePin(pin); err != nil {
				bad(key+".tls_pins", "%v", err)
			}
		}
		if len(r.TLSPins) > 0 && r.TLS != "" && level != tlspolicy.Verify {
			// A pin is a check of the next hop's key, which only verify makes.
			bad(key+".tls_pins", "pins are checked only with tls: verify (or no tls), not %q", r.TLS)
		}
	}
	errs = append(errs, c.checkSourceAddresses()...)
	for _, s := range c.DNS.Servers {
		if net.ParseIP(strings.Trim(s, "[]")) == nil {
			if _, _, err := net.SplitHostPort(s); err != nil {
				bad("dns.servers", "%q is neither an address nor address:port", s)
			}
		}
	}
	if _, err := resolver.ParseMode(c.DNS.DNSSEC); err != nil {
		bad("dns.dnssec", "%v", err)
	}
	if c.DNS.OnBrokenUpstream != "defer" && c.DNS.OnBrokenUpstream != "insecure" {
		bad("dns.on_broken_upstream", "%q is not one of defer, insecure", c.DNS.OnBrokenUpstream)
	}
	if c.DNS.TrustAnchorFile != "" {
		if _, err := resolver.LoadAnchors(c.DNS.TrustAnchorFile); err != nil {
			bad("dns.trust_anchor_file", "%v", err)
		}
	}
	if _, err := tlspolicy.ParseMode(c.TLS.Default); err != nil {
		bad("tls.default", "%v", err)
	}
	if _, err := tlspolicy.ParseMemoryMode(c.TLS.DowngradeMemory); err != nil {
		bad("tls.downgrade_memory", "%v", err)
	}
	if c.TLS.CAFile != "" {
		if _, err := c.roots(); err != nil {
			bad("tls.ca_file", "%v", err)
		}
	}
	if (c.TLS.ClientCertFile == "") != (c.TLS.ClientKeyFile == "") {
		bad("tls.client_cert_file", "client_cert_file and client_key_file go together")
	} else if c.TLS.ClientCertFile != "" {
		if _, err := tls.LoadX509KeyPair(c.TLS.ClientCertFile, c.TLS.ClientKeyFile); err != nil {
			bad("tls.client_cert_file", "%v", err)
		}
	}
	for i, p := range c.TLS.Policies {
		if _, err := c.localPolicy(p); err != nil {
			bad(fmt.Sprintf("tls.policies[%d]", i), "%v", err)
		}
	}
	if r := c.TLSRPT; r.Enabled {
		if r.OrganizationName == "" {
			bad("tlsrpt.organization_name", "is needed when tlsrpt.enabled is true")
		}
		if r.ContactInfo == "" {
			bad("tlsrpt.contact_info", "is needed when tlsrpt.enabled is true")
		}
	}
	if c.TLSRPT.From != "" && !strings.Contains(c.TLSRPT.From, "@") {
		bad("tlsrpt.from", "%q is not a mail address", c.TLSRPT.From)
	}
	for _, n := range c.TLSRPT.AllowNetworks {
		if _, err := netip.ParsePrefix(n); err != nil {
			bad("tlsrpt.allow_networks", "%q is not a network in CIDR notation (127.0.0.0/8, fd00::/8)", n)
		}
	}
	if c.TLSRPT.SendHour < 0 || c.TLSRPT.SendHour > 23 {
		bad("tlsrpt.send_hour", "%d is not an hour of the day (0-23, UTC)", c.TLSRPT.SendHour)
	}
	for i, k := range c.DKIM.Keys {
		key := fmt.Sprintf("dkim.keys[%d]", i)
		if k.Domain == "" || k.Selector == "" || strings.ContainsAny(k.Domain+k.Selector, " @*") {
			bad(key, "needs a domain and a selector")
		} else if _, err := dkim.LoadKey(k.Domain, k.Selector, k.KeyFile); err != nil {
			bad(key+".key_file", "%v", err)
		}
	}
	if c.DNS.ProbeInterval < 0 {
		bad("dns.probe_interval", "must not be negative (0 probes only at start)")
	}
	if s.Auth.FreeFailures < 0 || s.Auth.FailureDelay < 0 || s.Auth.MaxFailureDelay < 0 {
		bad("submission.auth", "values must not be negative")
	}
	if n := s.Auth.MaxConcurrentHashes; n < 0 || n > 1024 {
		bad("submission.auth.max_concurrent_hashes", "%d: want 0 (GOMAXPROCS, at most 4) or a count up to 1024; each hash in flight holds 19 MiB", n)
	}
	c.validateUsers(bad)
	if a := c.Admin.MetricsListen; a != "" {
		host, _, err := net.SplitHostPort(a)
		switch {
		case err != nil:
			bad("admin.metrics_listen", "%q is not host:port", a)
		case !isLoopback(host) && c.Admin.Password == "":
			bad("admin.password", "must be set when admin.metrics_listen (%s) is not a loopback address: the status page shows who sends mail where", a)
		}
	}
	if e := c.Telemetry.OTLPEndpoint; e != "" {
		if u, err := url.Parse(e); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("telemetry.otlp_endpoint", "%q: want an http:// or https:// URL such as http://collector:4318", e)
		}
	}
	if r := c.Telemetry.TraceSampleRatio; r < 0 || r > 1 {
		bad("telemetry.trace_sample_ratio", "%v: want a fraction from 0 to 1", r)
	}
	return errors.Join(errs...)
}

func tlsVersion(s string) (uint16, error) {
	switch s {
	case "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("%q: use 1.2 or 1.3 (older versions are not offered)", s)
}

func (c *Config) submissionConfig() submission.Config {
	v, _ := tlsVersion(c.Submission.TLS.MinVersion)
	s := c.Submission
	return submission.Config{
		Hostname: c.Hostname, MaxMessageBytes: s.MaxMessageBytes, MaxRecipients: s.MaxRecipients,
		MaxLineLength: s.MaxLineLength, CommandTimeout: s.CommandTimeout, DataTimeout: s.DataTimeout,
		MaxConnections: s.MaxConnections, MaxConnectionsPerIP: s.MaxConnectionsPerIP, MinTLSVersion: v,
		AnyHeaderFrom: !s.CheckHeaderFrom, ProxyFrom: c.proxyNetworks(),
		SendingLimits: c.sendingLimits(),
	}
}

// proxyNetworks are the networks trusted to send a PROXY protocol header.
func (c *Config) proxyNetworks() []netip.Prefix {
	nets, _ := parseNetworks(c.Submission.ProxyProtocol)
	return nets
}

// parseNetworks reads networks in CIDR notation; a bare address is a
// network of one.
func parseNetworks(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, n := range list {
		if a, err := netip.ParseAddr(n); err == nil {
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(n)
		if err != nil {
			return nil, fmt.Errorf("%q is not a network in CIDR notation (10.0.0.0/24, 2001:db8::/64) or an address", n)
		}
		if p.Addr().Is4In6() {
			return nil, fmt.Errorf("%q: write IPv4 networks as IPv4 (10.0.0.0/24)", n)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func (c *Config) authLimits() auth.Limits {
	a := c.Submission.Auth
	return auth.Limits{FreeFailures: a.FreeFailures, Delay: a.FailureDelay, MaxDelay: a.MaxFailureDelay,
		MaxFailures: a.MaxFailures, Window: a.FailureWindow, Lockout: a.Lockout, MaxConcurrentHashes: a.MaxConcurrentHashes}
}

func (c *Config) queuePath() string { return filepath.Join(c.DataDir, "queue.db") }
func (c *Config) statePath() string { return filepath.Join(c.DataDir, "state.db") }

// socketPath is the admin socket, in a directory of its own (mode 0700):
// see serveAdmin.
func (c *Config) socketPath() string { return filepath.Join(c.DataDir, "admin", "admin.sock") }

func (c *Config) deliveryConfig() delivery.Config {
	d := c.Delivery
	out := delivery.Config{Hostname: c.Hostname, Port: d.Port, Workers: d.Workers, LeaseTime: d.LeaseTime,
		Retry: d.Retry, MaxQueueLifetime: d.MaxQueueLifetime, DelayWarning: d.DelayWarning,
		MaxAddrAttempts: d.MaxAddrAttempts, PreferIPv6: d.PreferIPv6, PollInterval: d.PollInterval,
		ReuseCount: d.ReuseCount, ReuseIdle: d.ReuseIdle, MaxConnectionsPerDomain: d.MaxConnsPerDom,
		DrainTimeout: c.Shutdown.Timeout}
	for _, r := range d.Routes {
		host, port, _ := net.SplitHostPort(r.NextHop)
		p, _ := strconv.Atoi(port)
		route := delivery.Route{Match: strings.ToLower(r.Domain), Host: host, Port: p,
			Username: r.Username, Password: r.Password, AuthOverUnverifiedTLS: r.AuthOverUnverifiedTLS}
		for _, pin := range r.TLSPins {
			sum, _ := parsePin(pin)
			route.Pins = append(route.Pins, sum)
		}
		if r.TLS != "" {
			level, _ := tlspolicy.ParseLevel(r.TLS)
			route.TLS = &level
		}
		if r.SourceAddress != "" {
			route.Source = c.routeSource(r.SourceAddress)
		}
		out.Routes = append(out.Routes, route)
	}
	for _, s := range d.SourceAddresses {
		out.Sources = append(out.Sources, c.source(s))
	}
	return out
}

// source is one delivery.source_addresses entry as delivery uses it.
func (c *Config) source(s SourceAddressConfig) delivery.Source {
	a, _ := netip.ParseAddr(s.Address)
	helo := s.HELO
	if helo == "" {
		helo = c.Hostname
	}
	return delivery.Source{Addr: a.Unmap(), HELO: helo}
}

// routeSource is a route's source_address, with the EHLO name its
// delivery.source_addresses entry gives, or the hostname.
func (c *Config) routeSource(addr string) delivery.Source {
	a, _ := netip.ParseAddr(addr)
	for _, s := range c.Delivery.SourceAddresses {
		if src := c.source(s); src.Addr == a.Unmap() {
			return src
		}
	}
	return delivery.Source{Addr: a.Unmap(), HELO: c.Hostname}
}

// checkSourceAddresses checks delivery.source_addresses and the routes'
// source_address: addresses of this machine (one that cannot be bound
// would fail every delivery), each listed once, with a host name to say.
func (c *Config) checkSourceAddresses() []error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	seen := map[netip.Addr]bool{}
	check := func(key, addr string) {
		a, err := netip.ParseAddr(addr)
		switch {
		case err != nil || a.Zone() != "":
			bad(key, "%q is not an IPv4 or IPv6 address", addr)
		case a.IsUnspecified() || a.IsMulticast():
			bad(key, "%s cannot be a source address", addr)
		default:
			l, err := net.Listen("tcp", net.JoinHostPort(a.Unmap().String(), "0"))
			if err != nil {
				bad(key, "%s is not an address of this machine: %v", addr, err)
				return
			}
			l.Close()
		}
	}
	for i, s := range c.Delivery.SourceAddresses {
		key := fmt.Sprintf("delivery.source_addresses[%d]", i)
		check(key+".address", s.Address)
		if a, err := netip.ParseAddr(s.Address); err == nil {
			if seen[a.Unmap()] {
				bad(key+".address", "%s is listed twice", s.Address)
			}
			seen[a.Unmap()] = true
		}
		if s.HELO != "" && !isHostName(s.HELO) {
			bad(key+".helo", "%q is not a host name (the name the address's PTR record gives)", s.HELO)
		}
	}
	for i, r := range c.Delivery.Routes {
		if r.SourceAddress != "" {
			check(fmt.Sprintf("delivery.routes[%d].source_address", i), r.SourceAddress)
		}
	}
	return errs
}

// isHostName reports whether s is a DNS host name fit for EHLO (RFC 5321
// 4.1.1.1: the client's fully-qualified domain name): letters, digits and
// hyphens in dot-separated labels.
func isHostName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// resolver builds the DNS client the configuration describes.
func (c *Config) resolver(log *slog.Logger) (*resolver.Client, []string, error) {
	servers := c.DNS.Servers
	if len(servers) == 0 {
		var err error
		if servers, err = resolver.SystemServers(); err != nil {
			return nil, nil, fmt.Errorf("dns.servers is empty and %w", err)
		}
	}
	mode, err := resolver.ParseMode(c.DNS.DNSSEC)
	if err != nil {
		return nil, nil, fmt.Errorf("dns.dnssec: %w", err)
	}
	opts := resolver.Options{
		Timeout: c.DNS.Timeout, Mode: mode, TrustADRemote: c.DNS.TrustADRemote,
		InsecureOnBrokenUpstream: c.DNS.OnBrokenUpstream == "insecure",
		CacheSize:                c.DNS.CacheSize, CacheMaxTTL: c.DNS.CacheMaxTTL, Log: log,
	}
	if c.DNS.TrustAnchorFile != "" {
		if opts.Anchors, err = resolver.LoadAnchors(c.DNS.TrustAnchorFile); err != nil {
			return nil, nil, fmt.Errorf("dns.trust_anchor_file: %w", err)
		}
	}
	res, err := resolver.New(servers, opts)
	if err != nil {
		key := "dns.servers"
		if mode == resolver.TrustAD {
			key = "dns.dnssec"
		}
		return nil, nil, fmt.Errorf("%s: %w", key, err)
	}
	return res, servers, nil
}

// roots is the PKIX pool for MX certificates and MTA-STS: the system
// roots plus tls.ca_file.
func (c *Config) roots() (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if c.TLS.CAFile == "" {
		return pool, nil
	}
	pem, err := os.ReadFile(c.TLS.CAFile)
	if err != nil {
		return nil, err
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", c.TLS.CAFile)
	}
	return pool, nil
}

// localPolicy reads one tls.policies entry; errors name the field.
func (c *Config) localPolicy(p TLSPolicyConfig) (tlspolicy.Local, error) {
	var out tlspolicy.Local
	d := strings.ToLower(strings.TrimSuffix(p.Domain, "."))
	if d == "" || d == "." || strings.ContainsAny(d, " @*") {
		return out, fmt.Errorf("domain %q: use a domain or .suffix", p.Domain)
	}
	mode, err := tlspolicy.ParseMode(p.Mode)
	if err != nil {
		return out, fmt.Errorf("mode: %w", err)
	}
	out = tlspolicy.Local{Domain: d, Mode: mode, Names: p.Names, Override: p.Override}
	if p.MinTLSVersion != "" {
		if out.MinVersion, err = tlspolicy.ParseTLSVersion(p.MinTLSVersion); err != nil {
			return out, fmt.Errorf("min_tls_version: %w", err)
		}
	}
	if p.Until != "" {
		if out.Until, err = parseUntil(p.Until); err != nil {
			return out, fmt.Errorf("until: %w", err)
		}
	}
	if p.Override && mode > tlspolicy.ModeMay {
		return out, fmt.Errorf("override: only none or may can weaken a published policy (mode is %s)", mode)
	}
	return out, nil
}

// parseUntil reads an RFC 3339 time or a date (which means its end, UTC).
func parseUntil(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	t, err := time.Parse("2006-01-02", s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither 2006-01-02 nor 2006-01-02T15:04:05Z07:00", s)
	}
	return t.Add(24*time.Hour - time.Second), nil
}

// tlsPolicy builds the outbound TLS policy engine.
func (c *Config) tlsPolicy(res tlspolicy.Resolver, db *bolt.DB, log *slog.Logger) (*tlspolicy.Engine, *x509.CertPool, error) {
	roots, err := c.roots()
	if err != nil {
		return nil, nil, fmt.Errorf("tls.ca_file: %w", err)
	}
	def, policies, err := c.tlsRules()
	if err != nil {
		return nil, nil, err
	}
	memory, _ := tlspolicy.ParseMemoryMode(c.TLS.DowngradeMemory)
	cfg := tlspolicy.Config{Default: def, Policies: policies, Roots: roots, HonorTLSRequiredNo: c.TLS.HonorTLSRequiredNo,
		STSTimeout: c.TLS.MTASTSTimeout, DowngradeMemory: memory, MemoryMaxAge: c.TLS.MemoryMaxAge, STSPort: c.stsPort}
	if c.TLS.ClientCertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.TLS.ClientCertFile, c.TLS.ClientKeyFile)
		if err != nil {
			return nil, nil, fmt.Errorf("tls.client_cert_file: %w", err)
		}
		cfg.ClientCertificate = &cert
	}
	e, err := tlspolicy.NewEngine(cfg, tlspolicy.Deps{Resolver: res, DB: db, Log: log})
	return e, roots, err
}

// tlsRules is the default mode and the per-domain policies.
func (c *Config) tlsRules() (tlspolicy.Mode, []tlspolicy.Local, error) {
	def, _ := tlspolicy.ParseMode(c.TLS.Default)
	var policies []tlspolicy.Local
	for _, p := range c.TLS.Policies {
		l, err := c.localPolicy(p)
		if err != nil {
			return 0, nil, err
		}
		policies = append(policies, l)
	}
	return def, policies, nil
}

// dkimSigner loads the configured keys; nil when there are none.
func (c *Config) dkimSigner() (*dkim.Signer, error) {
	if len(c.DKIM.Keys) == 0 {
		return nil, nil
	}
	var keys []dkim.Key
	for i, k := range c.DKIM.Keys {
		key, err := dkim.LoadKey(strings.ToLower(k.Domain), k.Selector, k.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("dkim.keys[%d].key_file: %w", i, err)
		}
		keys = append(keys, key)
	}
	headers := c.DKIM.Headers
	if len(headers) == 0 {
		headers = nil
	}
	return dkim.New(keys, headers), nil
}

// reporter builds the TLS report sender (also for "tlsrpt send" without a daemon).
func (c *Config) reporter(q *queue.Queue, res *resolver.Client, signer *dkim.Signer, state *bolt.DB, kick func(), log *slog.Logger) (*tlsrpt.Reporter, error) {
	roots, err := c.roots()
	if err != nil {
		return nil, fmt.Errorf("tls.ca_file: %w", err)
	}
	r := c.TLSRPT
	if r.Submitter == "" {
		r.Submitter = c.Hostname
	}
	if r.From == "" {
		r.From = "tls-reports@" + c.Hostname
	}
	var allow []netip.Prefix
	for _, n := range r.AllowNetworks {
		p, _ := netip.ParsePrefix(n)
		allow = append(allow, p)
	}
	return tlsrpt.NewReporter(tlsrpt.Config{OrganizationName: r.OrganizationName, ContactInfo: r.ContactInfo,
		Submitter: r.Submitter, From: r.From, SendHour: r.SendHour, Roots: roots, AllowNetworks: allow},
		tlsrpt.Deps{Queue: q, DKIM: signer, DB: state, Log: log, Kick: kick,
			LookupAddrs: func(ctx context.Context, host string) ([]netip.Addr, error) {
				a, err := res.LookupAddrs(ctx, host)
				if err == nil && a.Security == resolver.Bogus {
					err = fmt.Errorf("addresses of %s fail DNSSEC validation: %s", host, a.Reason)
				}
				return a.Addrs, err
			},
			LookupTXT: func(ctx context.Context, name string) ([]string, error) {
				txts, _, err := res.LookupTXT(ctx, name)
				return txts, err
			}})
}

// isLoopback reports whether a listen host binds only the loopback
// interface ("localhost", 127.0.0.0/8, ::1).
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// parsePin reads a public-key pin: the SHA-256 of a certificate's
// SubjectPublicKeyInfo in hex (openssl x509 -pubkey -noout | openssl pkey
// -pubin -outform DER | sha256sum), optionally prefixed "sha256:".
func parsePin(s string) ([]byte, error) {
	sum, err := hex.DecodeString(strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "sha256:"))
	if err != nil || len(sum) != 32 {
		return nil, fmt.Errorf("%q is not a SHA-256 digest in hex (64 hex digits)", s)
	}
	return sum, nil
}
