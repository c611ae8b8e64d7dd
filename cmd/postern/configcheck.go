package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/delivery"
	"github.com/postern/postern/relay/dkim"
	"github.com/postern/postern/resolver"
	"github.com/postern/postern/tlspolicy"
)

// settings are the values parse reads out of the configuration's keys,
// once, at load (and at each reload): the builders (deliveryConfig,
// resolver, tlsPolicy, reporter, submissionConfig, ...) take these, so none
// of them can fail on parsing or read a key's text again.
type settings struct {
	minTLSVersion uint16               // submission.tls.min_version
	proxyFrom     []netip.Prefix       // submission.proxy_protocol
	directory     *auth.LDAP           // submission.auth.ldap; nil when off
	routes        []delivery.Route     // delivery.routes, with levels, pins and sources
	sources       []delivery.Source    // delivery.source_addresses
	dnssec        resolver.Mode        // dns.dnssec
	anchors       []dns.RR             // dns.trust_anchor_file; nil: the built-in root
	roots         *x509.CertPool       // the system roots plus tls.ca_file
	clientCert    *tls.Certificate     // tls.client_cert_file; nil when none
	tlsDefault    tlspolicy.Mode       // tls.default
	tlsPolicies   []tlspolicy.Local    // tls.policies
	memory        tlspolicy.MemoryMode // tls.downgrade_memory
	dkimKeys      []dkim.Key           // dkim.keys
	allowNetworks []netip.Prefix       // tlsrpt.allow_networks
}

// badKey records what is wrong with one key.
type badKey func(key, format string, args ...any)

// parse checks every key and reads the typed settings out of them. It
// reports every bad key, each naming it, always in the same order (the
// order of the sections below, and of the keys within each): no map is
// walked. It also fills in hostname (the system's) and makes data_dir
// absolute.
func (c *Config) parse() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	c.set = settings{}
	c.parseGeneral(bad)
	c.parseSubmission(bad)
	c.checkCounts(bad)
	c.parseDelivery(bad)
	c.parseDNS(bad)
	c.parseTLS(bad)
	c.parseReports(bad)
	c.checkAdmin(bad)
	return errors.Join(errs...)
}

// parseGeneral checks hostname, data_dir and log.
func (c *Config) parseGeneral(bad badKey) {
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
		if err := c.Log.level.UnmarshalText([]byte(c.Log.Level)); err != nil {
			bad("log.level", "%v", err) // each name above is one slog reads
		}
	default:
		bad("log.level", "%q: use debug, info, warn or error", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		bad("log.format", "%q: use text or json", c.Log.Format)
	}
}

// checkCounts checks the counts and durations that must be positive, in
// the order listed, and the few that may be zero.
func (c *Config) checkCounts(bad badKey) {
	s := &c.Submission
	positive := []struct {
		key string
		n   int64
	}{
		{"submission.max_message_bytes", s.MaxMessageBytes},
		{"submission.max_recipients", int64(s.MaxRecipients)},
		{"submission.max_line_length", int64(s.MaxLineLength)},
		{"submission.command_timeout", int64(s.CommandTimeout)},
		{"submission.data_timeout", int64(s.DataTimeout)},
		{"submission.max_connections", int64(s.MaxConnections)},
		{"submission.max_connections_per_ip", int64(s.MaxConnectionsPerIP)},
		{"submission.auth.max_failures", int64(s.Auth.MaxFailures)},
		{"submission.auth.failure_window", int64(s.Auth.FailureWindow)},
		{"submission.auth.lockout", int64(s.Auth.Lockout)},
		{"queue.inline_limit", c.Queue.InlineLimit},
		{"shutdown.timeout", int64(c.Shutdown.Timeout)},
		{"telemetry.otlp_interval", int64(c.Telemetry.OTLPInterval)},
		{"dns.timeout", int64(c.DNS.Timeout)},
		{"dns.cache_size", int64(c.DNS.CacheSize)},
		{"dns.cache_max_ttl", int64(c.DNS.CacheMaxTTL)},
		{"tls.mta_sts_timeout", int64(c.TLS.MTASTSTimeout)},
		{"tls.downgrade_memory_max_age", int64(c.TLS.MemoryMaxAge)},
		{"audit.retention", int64(c.Audit.Retention)},
		{"delivery.workers", int64(c.Delivery.Workers)},
		{"delivery.max_queue_lifetime", int64(c.Delivery.MaxQueueLifetime)},
		{"delivery.max_addr_attempts", int64(c.Delivery.MaxAddrAttempts)},
		{"delivery.lease_time", int64(c.Delivery.LeaseTime)},
		{"delivery.poll_interval", int64(c.Delivery.PollInterval)},
		{"delivery.reuse_count", int64(c.Delivery.ReuseCount)},
		{"delivery.max_connections_per_domain", int64(c.Delivery.MaxConnsPerDom)},
		{"delivery.initial_connections_per_domain", int64(c.Delivery.InitialConnsPerDom)},
		{"delivery.dead_destination_failures", int64(c.Delivery.DeadFailures)},
		{"delivery.dead_destination_cooldown", int64(c.Delivery.DeadCooldown)},
	}
	for _, p := range positive {
		if p.n <= 0 {
			bad(p.key, "must be greater than zero")
		}
	}
	if c.Queue.CheckTimeout < 0 {
		bad("queue.check_timeout", "must not be negative (0 turns the check off)")
	}
	if r := c.Audit.Retention; r > 0 && r < minRetention {
		bad("audit.retention", "%s is shorter than the %s the TLS reporter needs: it reports each UTC day once the day is over, from the delivery journal this key prunes", r, minRetention)
	}
}

// minRetention is the least audit.retention: the journal it prunes also
// holds what the TLS reporter aggregates, a whole UTC day at a time, after
// the day ends (RFC 8460 4.1) and possibly hours later (tlsrpt.send_hour).
const minRetention = 48 * time.Hour
