package main

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/relay/delivery"
	"github.com/postern/postern/tlspolicy"
)

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
	// InitialConnsPerDom is where each destination's concurrency window
	// starts; DeadFailures and DeadCooldown mark a destination dead.
	InitialConnsPerDom int           `mapstructure:"initial_connections_per_domain"`
	DeadFailures       int           `mapstructure:"dead_destination_failures"`
	DeadCooldown       time.Duration `mapstructure:"dead_destination_cooldown"`
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

// parseDelivery checks the delivery section and reads its routes and
// source addresses.
func (c *Config) parseDelivery(bad badKey) {
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
	if dl.InitialConnsPerDom > dl.MaxConnsPerDom && dl.MaxConnsPerDom > 0 {
		bad("delivery.initial_connections_per_domain", "%d is more than delivery.max_connections_per_domain (%d)", dl.InitialConnsPerDom, dl.MaxConnsPerDom)
	}
	c.set.routes = nil
	for i, r := range dl.Routes {
		c.set.routes = append(c.set.routes, parseRoute(bad, fmt.Sprintf("delivery.routes[%d]", i), r))
	}
	c.set.sources = c.parseSources(bad)
	for i, r := range dl.Routes {
		if r.SourceAddress == "" {
			continue
		}
		if a, ok := sourceAddr(bad, fmt.Sprintf("delivery.routes[%d].source_address", i), r.SourceAddress); ok {
			c.set.routes[i].Source = c.routeSource(a)
		}
	}
}

// parseRoute reads one delivery.routes entry (key names it), all but its
// source address.
func parseRoute(bad badKey, key string, r RouteConfig) delivery.Route {
	route := delivery.Route{Match: strings.ToLower(r.Domain), Username: r.Username, Password: r.Password,
		AuthOverUnverifiedTLS: r.AuthOverUnverifiedTLS}
	if r.Domain == "" || strings.ContainsAny(r.Domain, " @") {
		bad(key+".domain", "%q: use a domain, .suffix or *", r.Domain)
	}
	host, port, err := net.SplitHostPort(r.NextHop)
	p, perr := strconv.Atoi(port)
	if err != nil || port == "" || perr != nil || p < 1 || p > 65535 {
		bad(key+".next_hop", "%q is not host:port", r.NextHop)
	}
	route.Host, route.Port = host, p
	if (r.Username == "") != (r.Password == "") {
		bad(key+".username", "username and password go together")
	}
	level := tlspolicy.Verify // what a route with credentials gets by default
	if r.TLS != "" {
		var err error
		if level, err = tlspolicy.ParseLevel(r.TLS); err != nil {
			bad(key+".tls", "%v", err)
		}
		route.TLS = &level
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
		sum, err := parsePin(pin)
		if err != nil {
			bad(key+".tls_pins", "%v", err)
			continue
		}
		route.Pins = append(route.Pins, sum)
	}
	if len(r.TLSPins) > 0 && r.TLS != "" && level != tlspolicy.Verify {
		// A pin is a check of the next hop's key, which only verify makes.
		bad(key+".tls_pins", "pins are checked only with tls: verify (or no tls), not %q", r.TLS)
	}
	return route
}

func (c *Config) deliveryConfig() delivery.Config {
	d := c.Delivery
	return delivery.Config{Hostname: c.Hostname, Port: d.Port, Workers: d.Workers, LeaseTime: d.LeaseTime,
		Retry: d.Retry, MaxQueueLifetime: d.MaxQueueLifetime, DelayWarning: d.DelayWarning,
		MaxAddrAttempts: d.MaxAddrAttempts, PreferIPv6: d.PreferIPv6, PollInterval: d.PollInterval,
		ReuseCount: d.ReuseCount, ReuseIdle: d.ReuseIdle, MaxConnectionsPerDomain: d.MaxConnsPerDom,
		InitialConnectionsPerDomain: d.InitialConnsPerDom, DeadDestinationFailures: d.DeadFailures,
		DeadDestinationCooldown: d.DeadCooldown,
		DrainTimeout:            c.Shutdown.Timeout, Routes: c.set.routes, Sources: c.set.sources}
}

// parseSources reads delivery.source_addresses: addresses of this machine
// (one that cannot be bound would fail every delivery), each listed once,
// with a host name to say (the hostname when none is given).
func (c *Config) parseSources(bad badKey) []delivery.Source {
	var out []delivery.Source
	seen := map[netip.Addr]bool{}
	for i, s := range c.Delivery.SourceAddresses {
		key := fmt.Sprintf("delivery.source_addresses[%d]", i)
		a, ok := sourceAddr(bad, key+".address", s.Address)
		if a.IsValid() {
			if seen[a] {
				bad(key+".address", "%s is listed twice", s.Address)
			}
			seen[a] = true
		}
		if s.HELO != "" && !isHostName(s.HELO) {
			bad(key+".helo", "%q is not a host name (the name the address's PTR record gives)", s.HELO)
		}
		helo := s.HELO
		if helo == "" {
			helo = c.Hostname
		}
		if ok {
			out = append(out, delivery.Source{Addr: a, HELO: helo})
		}
	}
	return out
}

// sourceAddr reads a source address (unmapped; invalid when it does not
// parse) and reports whether it is one this machine can bind.
func sourceAddr(bad badKey, key, addr string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		bad(key, "%q is not an IPv4 or IPv6 address", addr)
		return netip.Addr{}, false
	}
	a = a.Unmap()
	switch {
	case a.Zone() != "":
		bad(key, "%q is not an IPv4 or IPv6 address", addr)
		return a, false
	case a.IsUnspecified() || a.IsMulticast():
		bad(key, "%s cannot be a source address", addr)
		return a, false
	}
	l, err := net.Listen("tcp", net.JoinHostPort(a.String(), "0"))
	if err != nil {
		bad(key, "%s is not an address of this machine: %v", addr, err)
		return a, false
	}
	l.Close()
	return a, true
}

// routeSource is a route's source address, with the EHLO name its
// delivery.source_addresses entry gives, or the hostname.
func (c *Config) routeSource(a netip.Addr) delivery.Source {
	for _, s := range c.set.sources {
		if s.Addr == a {
			return s
		}
	}
	return delivery.Source{Addr: a, HELO: c.Hostname}
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
