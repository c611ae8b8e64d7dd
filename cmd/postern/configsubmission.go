package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/submission"
)

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

// parseSubmission checks the submission section and reads its listen
// addresses, PROXY protocol networks and TLS version.
func (c *Config) parseSubmission(bad badKey) {
	s := &c.Submission
	if len(s.Listen)+len(s.TLSListen) == 0 {
		bad("submission.listen", "no listener: set submission.listen or submission.tls_listen")
	}
	for _, l := range []struct {
		key   string
		addrs []string
	}{{"submission.listen", s.Listen}, {"submission.tls_listen", s.TLSListen}} {
		for _, a := range l.addrs {
			if _, _, err := net.SplitHostPort(a); err != nil {
				bad(l.key, "%q is not host:port", a)
			}
		}
	}
	var err error
	if c.set.proxyFrom, err = parseNetworks(s.ProxyProtocol); err != nil {
		bad("submission.proxy_protocol", "%v", err)
	}
	if (s.TLS.CertFile == "") != (s.TLS.KeyFile == "") {
		bad("submission.tls.cert_file", "cert_file and key_file go together")
	}
	for _, f := range []struct{ key, file string }{{"submission.tls.cert_file", s.TLS.CertFile}, {"submission.tls.key_file", s.TLS.KeyFile}} {
		if f.file != "" {
			if _, err := os.Stat(f.file); err != nil {
				bad(f.key, "%v", err)
			}
		}
	}
	if c.set.minTLSVersion, err = tlsVersion(s.TLS.MinVersion); err != nil {
		bad("submission.tls.min_version", "%v", err)
	}
	if s.MaxLineLength > 0 && s.MaxLineLength < 1000 {
		bad("submission.max_line_length", "%d is below the 1000 octets RFC 5321 4.5.3.1.6 requires", s.MaxLineLength)
	}
	if s.Auth.FreeFailures < 0 || s.Auth.FailureDelay < 0 || s.Auth.MaxFailureDelay < 0 {
		bad("submission.auth", "values must not be negative")
	}
	if n := s.Auth.MaxConcurrentHashes; n < 0 || n > 1024 {
		bad("submission.auth.max_concurrent_hashes", "%d: want 0 (GOMAXPROCS, at most 4) or a count up to 1024; each hash in flight holds 19 MiB", n)
	}
	c.validateUsers(bad)
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
	s := c.Submission
	return submission.Config{
		Hostname: c.Hostname, MaxMessageBytes: s.MaxMessageBytes, MaxRecipients: s.MaxRecipients,
		MaxLineLength: s.MaxLineLength, CommandTimeout: s.CommandTimeout, DataTimeout: s.DataTimeout,
		MaxConnections: s.MaxConnections, MaxConnectionsPerIP: s.MaxConnectionsPerIP, MinTLSVersion: c.set.minTLSVersion,
		AnyHeaderFrom: !s.CheckHeaderFrom, ProxyFrom: c.proxyNetworks(),
		SendingLimits: c.sendingLimits(),
	}
}

// proxyNetworks are the networks trusted to send a PROXY protocol header.
func (c *Config) proxyNetworks() []netip.Prefix { return c.set.proxyFrom }

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
