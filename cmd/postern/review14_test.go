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
