package main

import (
	"strings"
	"testing"
)

// TestRoutePinsWithAWeakerTLSAreRefused: tls_pins say which key the next
// hop must hold; with tls none, may or encrypt the route never checks them,
// so such a configuration is a contradiction that must be refused, naming
// the key, instead of silently sending mail (and credentials) to any key.
func TestRoutePinsWithAWeakerTLSAreRefused(t *testing.T) {
	pin := strings.Repeat("ab", 32)
	for _, tls := range []string{"none", "may", "encrypt"} {
		text := "delivery:\n  routes:\n    - domain: \"*\"\n      next_hop: smarthost.example:587\n      tls: " + tls +
			"\n      tls_pins: [\"" + pin + "\"]\n"
		path := writeConfig(t, text)
		_, err := loadConfig(path)
		if err == nil || !strings.Contains(err.Error(), "delivery.routes[0].tls_pins") {
			t.Errorf("tls: %s with tls_pins: error %v, want one naming delivery.routes[0].tls_pins", tls, err)
		}
	}
	// With verify, or no tls at all, the pins are the check.
	for _, tls := range []string{"", "      tls: verify\n"} {
		path := writeConfig(t, "delivery:\n  routes:\n    - domain: \"*\"\n      next_hop: smarthost.example:587\n"+tls+
			"      tls_pins: [\""+pin+"\"]\n")
		if _, err := loadConfig(path); err != nil {
			t.Errorf("pins with %q refused: %v", tls, err)
		}
	}
}

// TestPolicyCheckShowsTheRoute: postern policy check says what delivery
// will do. For a domain that delivery.routes sends to a smarthost,
// delivery never looks at the MX set: it goes to the route's next hop under
// the route's level (verify, for a route with credentials). Today the
// check prints the MX decisions ("default may" for mx.dest.test) as if the
// route did not exist.
func TestPolicyCheckShowsTheRoute(t *testing.T) {
	d := newDaemon(t, nil)
	d.editConfig("  poll_interval: 100ms\n", "  poll_interval: 100ms\n  routes:\n    - domain: dest.test\n"+
		"      next_hop: smarthost.example:587\n      username: relay\n      password: secret\n")
	out, err := d.run("", "policy", "check", "dest.test")
	if !strings.Contains(out, "smarthost.example") || !strings.Contains(out, "decision: route verify") {
		t.Fatalf("policy check for a routed domain does not show its route and the route's decision (err %v):\n%s", err, out)
	}
}
