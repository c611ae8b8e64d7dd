package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/tlspolicy"
)

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

// parseTLS checks the tls section and reads its default mode, policies,
// downgrade memory, roots and client certificate.
func (c *Config) parseTLS(bad badKey) {
	var err error
	if c.set.tlsDefault, err = tlspolicy.ParseMode(c.TLS.Default); err != nil {
		bad("tls.default", "%v", err)
	}
	if c.set.memory, err = tlspolicy.ParseMemoryMode(c.TLS.DowngradeMemory); err != nil {
		bad("tls.downgrade_memory", "%v", err)
	}
	if c.set.roots, err = loadRoots(c.TLS.CAFile); err != nil {
		bad("tls.ca_file", "%v", err)
	}
	if (c.TLS.ClientCertFile == "") != (c.TLS.ClientKeyFile == "") {
		bad("tls.client_cert_file", "client_cert_file and client_key_file go together")
	} else if c.TLS.ClientCertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.TLS.ClientCertFile, c.TLS.ClientKeyFile)
		if err != nil {
			bad("tls.client_cert_file", "%v", err)
		} else {
			c.set.clientCert = &cert
		}
	}
	c.set.tlsPolicies = nil
	for i, p := range c.TLS.Policies {
		l, err := c.localPolicy(p)
		if err != nil {
			bad(fmt.Sprintf("tls.policies[%d]", i), "%v", err)
			continue
		}
		c.set.tlsPolicies = append(c.set.tlsPolicies, l)
	}
}

// loadRoots is the PKIX pool for MX certificates, MTA-STS and TLS report
// uploads: the system roots plus caFile.
func loadRoots(caFile string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if caFile == "" {
		return pool, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	return pool, nil
}

// roots is the pool parse loaded; a Config that was never parsed (built
// in a test) gets the system roots, as an unset tls.ca_file does.
func (c *Config) roots() *x509.CertPool {
	if c.set.roots == nil {
		pool, _ := loadRoots("") // without a file, loadRoots cannot fail
		return pool
	}
	return c.set.roots
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
	roots := c.roots()
	def, policies := c.tlsRules()
	cfg := tlspolicy.Config{Default: def, Policies: policies, Roots: roots, HonorTLSRequiredNo: c.TLS.HonorTLSRequiredNo,
		STSTimeout: c.TLS.MTASTSTimeout, DowngradeMemory: c.set.memory, MemoryMaxAge: c.TLS.MemoryMaxAge, STSPort: c.stsPort,
		ClientCertificate: c.set.clientCert}
	e, err := tlspolicy.NewEngine(cfg, tlspolicy.Deps{Resolver: res, DB: db, Log: log})
	return e, roots, err
}

// tlsRules is the default mode and the per-domain policies.
func (c *Config) tlsRules() (tlspolicy.Mode, []tlspolicy.Local) {
	return c.set.tlsDefault, c.set.tlsPolicies
}
