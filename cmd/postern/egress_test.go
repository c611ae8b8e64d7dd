package main

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/postern/postern/relay/delivery"
)

// TestSourceAddressesLoad: delivery.source_addresses and a route's
// source_address become delivery's sources, each with its EHLO name (the
// hostname where none is given, or where a route's address is not listed).
func TestSourceAddressesLoad(t *testing.T) {
	cfg, err := loadConfig(writeConfig(t, `hostname: relay.example.org
delivery:
  source_addresses:
    - {address: 127.0.0.2, helo: out2.example.org}
    - {address: "::1"}
  routes:
    - {domain: partner.example, next_hop: "smarthost.example:25", source_address: 127.0.0.2}
    - {domain: other.example, next_hop: "smarthost.example:25", source_address: 127.0.0.3}
`))
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.deliveryConfig()
	want := []delivery.Source{{Addr: netip.MustParseAddr("127.0.0.2"), HELO: "out2.example.org"},
		{Addr: netip.MustParseAddr("::1"), HELO: "relay.example.org"}}
	if fmt.Sprint(d.Sources) != fmt.Sprint(want) {
		t.Errorf("sources %v, want %v", d.Sources, want)
	}
	if got := d.Routes[0].Source; got != want[0] {
		t.Errorf("route source %v, want %v", got, want[0])
	}
	if got := d.Routes[1].Source; got.Addr.String() != "127.0.0.3" || got.HELO != "relay.example.org" {
		t.Errorf("unlisted route source %v", got)
	}
}

func TestSourceAddressErrorsNameTheKey(t *testing.T) {
	for text, want := range map[string]string{
		"delivery:\n  source_addresses: [{address: nope}]\n":                                  "delivery.source_addresses[0].address",
		"delivery:\n  source_addresses: [{address: 192.0.2.1}]\n":                             "delivery.source_addresses[0].address: 192.0.2.1 is not an address of this machine",
		"delivery:\n  source_addresses: [{address: 0.0.0.0}]\n":                               "delivery.source_addresses[0].address",
		"delivery:\n  source_addresses: [{address: 127.0.0.2, helo: \"out 2\"}]\n":            "delivery.source_addresses[0].helo",
		"delivery:\n  source_addresses: [{address: 127.0.0.2}, {address: 127.0.0.2}]\n":       "delivery.source_addresses[1].address: 127.0.0.2 is listed twice",
		"delivery:\n  source_addresses: [{address: 127.0.0.2, hello: x}]\n":                   "hello",
		"delivery:\n  routes: [{domain: a.example, next_hop: \"h:25\", source_address: x}]\n": "delivery.routes[0].source_address",
	} {
		path := writeConfig(t, text)
		if _, err := loadConfig(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config %q: error %v should say %q", text, err, want)
		}
	}
}

func TestProxyProtocolNetworksLoad(t *testing.T) {
	cfg, err := loadConfig(writeConfig(t, "submission:\n  proxy_protocol: [10.0.8.7/24, 192.0.2.7, \"2001:db8:8::/64\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(cfg.submissionConfig().ProxyFrom)
	if got != "[10.0.8.0/24 192.0.2.7/32 2001:db8:8::/64]" {
		t.Errorf("trusted networks %s", got)
	}
}
