package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/dkim"
	"github.com/postern/postern/relay/tlsrpt"
	"github.com/postern/postern/resolver"
)

type QueueConfig struct {
	InlineLimit  int64         `mapstructure:"inline_limit"`
	CheckTimeout time.Duration `mapstructure:"check_timeout"`
}

// queueOptions are the queue's options from the configuration.
func (c *Config) queueOptions() queue.Options {
	check := c.Queue.CheckTimeout
	if check == 0 {
		check = -1 // the key's 0 means no check; the queue's, its default
	}
	return queue.Options{InlineLimit: c.Queue.InlineLimit, CheckTimeout: check}
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

// parseReports checks the tlsrpt and dkim sections and reads the networks
// a report may reach and the signing keys.
func (c *Config) parseReports(bad badKey) {
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
	c.set.allowNetworks = nil
	for _, n := range c.TLSRPT.AllowNetworks {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			bad("tlsrpt.allow_networks", "%q is not a network in CIDR notation (127.0.0.0/8, fd00::/8)", n)
			continue
		}
		c.set.allowNetworks = append(c.set.allowNetworks, p)
	}
	if c.TLSRPT.SendHour < 0 || c.TLSRPT.SendHour > 23 {
		bad("tlsrpt.send_hour", "%d is not an hour of the day (0-23, UTC)", c.TLSRPT.SendHour)
	}
	c.set.dkimKeys = nil
	for i, k := range c.DKIM.Keys {
		key := fmt.Sprintf("dkim.keys[%d]", i)
		if k.Domain == "" || k.Selector == "" || strings.ContainsAny(k.Domain+k.Selector, " @*") {
			bad(key, "needs a domain and a selector")
			continue
		}
		dk, err := dkim.LoadKey(strings.ToLower(k.Domain), k.Selector, k.KeyFile)
		if err != nil {
			bad(key+".key_file", "%v", err)
			continue
		}
		c.set.dkimKeys = append(c.set.dkimKeys, dk)
	}
}

// checkAdmin checks the admin and telemetry sections.
func (c *Config) checkAdmin(bad badKey) {
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
}

// dkimSigner signs with the configured keys; nil when there are none.
func (c *Config) dkimSigner() *dkim.Signer {
	if len(c.set.dkimKeys) == 0 {
		return nil
	}
	headers := c.DKIM.Headers
	if len(headers) == 0 {
		headers = nil
	}
	return dkim.New(c.set.dkimKeys, headers)
}

// reporter builds the TLS report sender (also for "tlsrpt send" without a daemon).
func (c *Config) reporter(q *queue.Queue, res *resolver.Client, signer *dkim.Signer, state *bolt.DB, kick func(), log *slog.Logger) (*tlsrpt.Reporter, error) {
	r := c.TLSRPT
	if r.Submitter == "" {
		r.Submitter = c.Hostname
	}
	if r.From == "" {
		r.From = "tls-reports@" + c.Hostname
	}
	return tlsrpt.NewReporter(tlsrpt.Config{OrganizationName: r.OrganizationName, ContactInfo: r.ContactInfo,
		Submitter: r.Submitter, From: r.From, SendHour: r.SendHour, Roots: c.roots(), AllowNetworks: c.set.allowNetworks},
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
