package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// FuzzConfig: any YAML either loads into a configuration that passes its
// own validation, or fails with an error that says which file; it never
// panics. Inputs naming device or kernel files are skipped: validation
// reads the files a configuration names. Inputs grown from the full
// reference configuration are large: run with -fuzzminimizetime of a few
// seconds, or the fuzzer spends a minute minimizing each new one.
func FuzzConfig(f *testing.F) {
	for _, name := range []string{"../../configs/postern.yaml", "../../configs/example.yaml"} {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b)
		}
	}
	for _, s := range []string{
		"submission:\n  max_recipients: 0\n",
		"tls:\n  policies:\n    - {domain: .example.com, mode: dane-only, until: 2026-12-04}\n",
		"delivery:\n  routes:\n    - {domain: '*', next_hop: 'smarthost:587', tls: verify}\n",
		"dns: {servers: ['127.0.0.1:53'], dnssec: trust-ad, timeout: 1s}\n",
		"delivery: {retry: [1m, 5m], workers: 3}\nlog: {level: debug}\n",
		"bogus: 1\n", "hostname: [a, b]\n", "a: &x [*x]\n", "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, dev := range []string{"/dev", "/proc", "/sys"} {
			if bytes.Contains(in, []byte(dev)) {
				return
			}
		}
		cfg, err := parseConfig("fuzz.yaml", bytes.NewReader(in))
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if err := cfg.parse(); err != nil {
			t.Fatalf("loaded, then invalid: %v", err)
		}
	})
}
