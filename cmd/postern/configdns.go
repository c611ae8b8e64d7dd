package main

import (
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/postern/postern/resolver"
)

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

// parseDNS checks the dns section and reads its DNSSEC mode and trust
// anchors.
func (c *Config) parseDNS(bad badKey) {
	for _, s := range c.DNS.Servers {
		if net.ParseIP(strings.Trim(s, "[]")) == nil {
			if _, _, err := net.SplitHostPort(s); err != nil {
				bad("dns.servers", "%q is neither an address nor address:port", s)
			}
		}
	}
	var err error
	if c.set.dnssec, err = resolver.ParseMode(c.DNS.DNSSEC); err != nil {
		bad("dns.dnssec", "%v", err)
	}
	if c.DNS.OnBrokenUpstream != "defer" && c.DNS.OnBrokenUpstream != "insecure" {
		bad("dns.on_broken_upstream", "%q is not one of defer, insecure", c.DNS.OnBrokenUpstream)
	}
	if c.DNS.TrustAnchorFile != "" {
		if c.set.anchors, err = resolver.LoadAnchors(c.DNS.TrustAnchorFile); err != nil {
			bad("dns.trust_anchor_file", "%v", err)
		}
	}
	if c.DNS.ProbeInterval < 0 {
		bad("dns.probe_interval", "must not be negative (0 probes only at start)")
	}
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
	opts := resolver.Options{
		Timeout: c.DNS.Timeout, Mode: c.set.dnssec, TrustADRemote: c.DNS.TrustADRemote,
		InsecureOnBrokenUpstream: c.DNS.OnBrokenUpstream == "insecure",
		CacheSize:                c.DNS.CacheSize, CacheMaxTTL: c.DNS.CacheMaxTTL, Log: log,
		Anchors: c.set.anchors,
	}
	res, err := resolver.New(servers, opts)
	if err != nil {
		key := "dns.servers"
		if c.set.dnssec == resolver.TrustAD {
			key = "dns.dnssec"
		}
		return nil, nil, fmt.Errorf("%s: %w", key, err)
	}
	return res, servers, nil
}
