package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/relay/delivery"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "postern.yaml")
	os.WriteFile(p, []byte(text), 0o600)
	return p
}

func TestReferenceConfigsAreValidAndMatchDefaults(t *testing.T) {
	for _, f := range []string{"../../configs/postern.yaml", "../../configs/quickstart.yaml"} {
		if _, err := loadConfig(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	ref, _ := loadConfig("../../configs/postern.yaml")
	def, _ := loadConfig("")
	ref.file, def.file = "", ""
	ref.path, def.path = "", ""
	ref.Hostname, def.Hostname = "", ""
	ref.set, def.set = settings{}, settings{} // parsed values: pointers to pools and keys
	if !sameConfig(ref, def) {
		t.Errorf("configs/postern.yaml does not show the built-in defaults:\n%+v\n%+v", ref, def)
	}
}

func TestEnvironmentOverridesEveryKey(t *testing.T) {
	// Every documented key must be settable from the environment (viper
	// ignores environment variables for keys it was not told about).
	for key := range defaults {
		env := "POSTERN_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
		if !bound(t, key, env) {
			t.Errorf("%s does not set %s", env, key)
		}
	}
}

// bound reports whether setting env changes the loaded value of key.
func bound(t *testing.T, key, env string) bool {
	t.Helper()
	before, err := loadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	value := map[string]string{
		"hostname": "env.test", "data_dir": "/tmp/env-data", "log.level": "debug", "log.format": "json",
		"submission.listen": "127.0.0.1:1,127.0.0.1:2", "submission.tls_listen": "",
		"submission.tls.cert_file": "", "submission.tls.key_file": "", "submission.tls.min_version": "1.3",
		"dns.servers": "127.0.0.1:5353", "delivery.retry": "1m,2m", "delivery.prefer_ipv6": "true",
		"dns.dnssec": "off", "dns.on_broken_upstream": "insecure", "dns.trust_ad_remote": "true",
		"tls.default": "verify", "tls.honor_tls_required_no": "false", "tls.downgrade_memory": "defer",
		"tlsrpt.from": "reports@env.test", "tlsrpt.send_hour": "7", "tlsrpt.allow_networks": "127.0.0.0/8,fd00::/8",
		"admin.metrics_listen": "127.0.0.1:9999", "telemetry.otlp_endpoint": "http://collector.test:4318",
		"telemetry.trace_sample_ratio": "0.25", "submission.check_header_from": "false",
		"submission.auth.max_concurrent_hashes":   "3",
		"submission.auth.ldap.starttls":           "true",
		"submission.proxy_protocol":               "10.0.8.0/24,2001:db8:8::/64",
		"audit.retention":                         "720h", // at least the two days the TLS reporter needs
		"delivery.initial_connections_per_domain": "3",    // at most max_connections_per_domain
	}[key]
	if value == "" && key != "submission.tls_listen" {
		if strings.HasSuffix(key, "_file") {
			return true // needs an existing file; covered by TestEnvironmentListsAndFiles
		}
		switch defaults[key].(type) {
		case string:
			value = "7s"
		case int:
			value = "7000"
		default:
			value = "7000"
		}
	}
	if key == "tlsrpt.enabled" { // enabling needs two more settings
		value = "true"
		t.Setenv("POSTERN_TLSRPT_ORGANIZATION_NAME", "Env")
		t.Setenv("POSTERN_TLSRPT_CONTACT_INFO", "env@env.test")
		before.TLSRPT.OrganizationName, before.TLSRPT.ContactInfo = "Env", "env@env.test"
	}
	if key == "submission.auth.ldap.url" { // a directory needs a base and senders
		value = "ldaps://ldap.env.test"
		t.Setenv("POSTERN_SUBMISSION_AUTH_LDAP_BASE", "dc=env,dc=test")
		t.Setenv("POSTERN_SUBMISSION_AUTH_LDAP_SENDER_ATTRIBUTE", "mail")
		before.Submission.Auth.LDAP.Base, before.Submission.Auth.LDAP.SenderAttribute = "dc=env,dc=test", "mail"
	}
	t.Setenv(env, value)
	after, err := loadConfig("")
	os.Unsetenv(env)
	if err != nil {
		t.Fatalf("%s=%q: %v", env, value, err)
	}
	return !sameConfig(before, after)
}

func TestEnvironmentListsAndFiles(t *testing.T) {
	t.Setenv("POSTERN_SUBMISSION_LISTEN", "127.0.0.1:1587, [::1]:1587")
	t.Setenv("POSTERN_SUBMISSION_TLS_LISTEN", "")
	t.Setenv("POSTERN_SUBMISSION_COMMAND_TIMEOUT", "90s")
	cfg, err := loadConfig(writeConfig(t, "submission:\n  command_timeout: 10s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Submission.Listen, "|") != "127.0.0.1:1587|[::1]:1587" || len(cfg.Submission.TLSListen) != 0 {
		t.Errorf("lists from environment: %q %q", cfg.Submission.Listen, cfg.Submission.TLSListen)
	}
	if cfg.Submission.CommandTimeout != 90*time.Second {
		t.Errorf("environment must win over the file: %v", cfg.Submission.CommandTimeout)
	}
	t.Setenv("POSTERN_SUBMISSION_TLS_CERT_FILE", "/nonexistent/cert.pem")
	if _, err := loadConfig(""); err == nil || !strings.Contains(err.Error(), "submission.tls.cert_file") {
		t.Errorf("missing cert file: %v", err)
	}
}

func TestBadConfigErrorsNameKeyAndFile(t *testing.T) {
	for text, want := range map[string]string{
		"submission:\n  lisen: [\":587\"]\n":                                      "lisen",
		"submission:\n  listen: [\"nope\"]\n":                                     "submission.listen",
		"submission:\n  max_message_bytes: 0\n":                                   "submission.max_message_bytes",
		"submission:\n  command_timeout: soon\n":                                  "submission.command_timeout",
		"log:\n  format: xml\n":                                                   "log.format",
		"submission:\n  max_line_length: 200\n":                                   "submission.max_line_length",
		"submission:\n  tls:\n    min_version: \"1.1\"\n":                         "submission.tls.min_version",
		"submission: [1, 2]\n":                                                    "submission",
		"dns:\n  dnssec: maybe\n":                                                 "dns.dnssec",
		"admin:\n  metrics_listen: \"0.0.0.0:9587\"\n":                            "admin.password",
		"admin:\n  metrics_listen: \"9587\"\n":                                    "admin.metrics_listen",
		"telemetry:\n  otlp_endpoint: collector:4318\n":                           "telemetry.otlp_endpoint",
		"telemetry:\n  trace_sample_ratio: 2\n":                                   "telemetry.trace_sample_ratio",
		"dns:\n  on_broken_upstream: ignore\n":                                    "dns.on_broken_upstream",
		"dns:\n  trust_anchor_file: /nonexistent\n":                               "dns.trust_anchor_file",
		"dns:\n  cache_size: 0\n":                                                 "dns.cache_size",
		"tls:\n  default: strict\n":                                               "tls.default",
		"tls:\n  ca_file: /nonexistent\n":                                         "tls.ca_file",
		"tls:\n  policies: [{domain: a.example, mode: sometimes}]\n":              "tls.policies[0]",
		"tls:\n  policies: [{domain: a.example, mode: verify, override: true}]\n": "tls.policies[0]",
		"tls:\n  policies: [{domain: a.example, mode: may, until: friday}]\n":     "tls.policies[0]",
		"tls:\n  policies: [{domain: a.example, mode: may, colour: red}]\n":       "colour",
		"delivery:\n  routes: [{domain: \"*\", next_hop: \"h.example:587\", username: u, password: p, tls: may}]\n":           "delivery.routes[0].tls",
		"delivery:\n  routes: [{domain: \"*\", next_hop: \"h.example:587\", username: u, password: p, tls: none}]\n":          "delivery.routes[0].tls",
		"delivery:\n  routes: [{domain: \"*\", next_hop: \"h.example:587\", username: u, password: p, tls: encrypt}]\n":       "delivery.routes[0].tls",
		"delivery:\n  routes: [{domain: \"*\", next_hop: \"h.example:587\", tls: encrypt, auth_over_unverified_tls: true}]\n": "delivery.routes[0].auth_over_unverified_tls",
		"delivery:\n  routes: [{domain: \"*\", next_hop: \"h.example:587\", tls_pins: [abcd]}]\n":                             "delivery.routes[0].tls_pins",
		"tlsrpt:\n  allow_networks: [\"10.0.0.0\"]\n":                                                                         "tlsrpt.allow_networks",
		"submission:\n  auth:\n    max_concurrent_hashes: -1\n":                                                               "submission.auth.max_concurrent_hashes",
		"submission:\n  check_header_from: sometimes\n":                                                                       "submission.check_header_from",
		"submission:\n  proxy_protocol: [\"10.0.0.0/33\"]\n":                                                                  "submission.proxy_protocol",
		"submission:\n  proxy_protocol: [lb.example.net]\n":                                                                   "submission.proxy_protocol",
	} {
		path := writeConfig(t, text)
		_, err := loadConfig(path)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
			t.Errorf("config %q: error %v should name %q and the file", text, err, want)
		}
	}
}

// TestRouteCredentialsNeedVerifiedTLS: the route settings that keep
// credentials behind verified TLS load as documented.
func TestRouteCredentialsNeedVerifiedTLS(t *testing.T) {
	for text, want := range map[string]string{
		// No tls: credentials mean verify.
		"delivery:\n  routes: [{domain: \"*\", next_hop: \"h.example:587\", username: u, password: p}]\n":                                                          "verify",
		"delivery:\n  routes: [{domain: \"*\", next_hop: \"h.example:587\", username: u, password: p, tls: encrypt, auth_over_unverified_tls: true}]\n":            "encrypt",
		"delivery:\n  routes: [{domain: \"*\", next_hop: \"h.example:587\", username: u, password: p, tls_pins: [\"sha256:" + strings.Repeat("ab", 32) + "\"]}]\n": "verify (pinned key)",
	} {
		cfg, err := loadConfig(writeConfig(t, text))
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		routes := cfg.deliveryConfig().Routes
		if len(routes) != 1 {
			t.Fatalf("%q: routes %+v", text, routes)
		}
		d := delivery.RouteDecision(routes[0], nil, false)
		if got := strings.TrimPrefix(d.Describe(), "route "); got != want {
			t.Errorf("%q: the route is held to %q, want %q", text, got, want)
		}
	}
}

// sameConfig compares configurations as printed (an absent list and an
// empty one mean the same).
func sameConfig(a, b any) bool {
	return fmt.Sprintf("%+v", a) == fmt.Sprintf("%+v", b)
}

func TestTLSPoliciesLoad(t *testing.T) {
	path := writeConfig(t, `tls:
  default: verify
  policies:
    - {domain: bank.example, mode: verify, min_tls_version: "1.3"}
    - {domain: partner.example, mode: may, override: true, until: 2026-12-04}
    - {domain: .gov.example, mode: dane-only, names: [mail.gov.example]}
`)
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range cfg.TLS.Policies {
		l, err := cfg.localPolicy(p)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %s %x %v %s %v", l.Domain, l.Mode, l.MinVersion, l.Override, l.Until.Format(time.RFC3339), l.Names))
	}
	want := []string{
		"bank.example verify 304 false 0001-01-01T00:00:00Z []",
		"partner.example may 0 true 2026-12-04T23:59:59Z []",
		".gov.example dane-only 0 false 0001-01-01T00:00:00Z [mail.gov.example]",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
}

// TestBadKeysInStableOrder: a configuration with several bad keys reports
// every one, naming it, in the same order on every load (the keys checked
// by walking a map came out in a different order from run to run).
func TestBadKeysInStableOrder(t *testing.T) {
	dir := t.TempDir()
	path := writeConfig(t, `submission:
  listen: [nohost]
  tls_listen: [alsonohost]
  max_recipients: 0
  max_connections: 0
  command_timeout: 0s
  tls: {cert_file: `+dir+`/missing.crt, key_file: `+dir+`/missing.key}
queue: {inline_limit: 0}
shutdown: {timeout: 0s}
dns: {timeout: 0s, cache_size: 0}
delivery: {workers: 0, lease_time: 0s, reuse_count: 0, initial_connections_per_domain: 0, dead_destination_failures: 0, dead_destination_cooldown: 0s}
audit: {retention: 0s}
`)
	_, first := loadConfig(path)
	if first == nil {
		t.Fatal("loaded a configuration with bad keys")
	}
	for _, key := range []string{"submission.listen", "submission.tls_listen", "submission.tls.cert_file",
		"submission.tls.key_file", "submission.max_recipients", "submission.max_connections",
		"submission.command_timeout", "queue.inline_limit", "shutdown.timeout", "dns.timeout", "dns.cache_size",
		"delivery.workers", "delivery.lease_time", "delivery.reuse_count", "delivery.initial_connections_per_domain",
		"delivery.dead_destination_failures", "delivery.dead_destination_cooldown", "audit.retention"} {
		if !strings.Contains(first.Error(), key+": ") {
			t.Errorf("%s is not named:\n%v", key, first)
		}
	}
	for range 20 {
		if _, err := loadConfig(path); err == nil || err.Error() != first.Error() {
			t.Fatalf("the errors came out in another order:\n%v\n---\n%v", first, err)
		}
	}
}

// TestRoutePortIsANumber: a next_hop whose port is not a number was
// accepted and then read, dropping the error, as port 0.
func TestRoutePortIsANumber(t *testing.T) {
	for _, hop := range []string{"relay.example:smtp", "relay.example:0", "relay.example:70000"} {
		path := writeConfig(t, "delivery:\n  routes:\n    - {domain: '*', next_hop: '"+hop+"'}\n")
		if _, err := loadConfig(path); err == nil || !strings.Contains(err.Error(), "delivery.routes[0].next_hop") {
			t.Errorf("%s: %v", hop, err)
		}
	}
}

// A destination's first window may not be wider than its largest: the
// error names the key.
func TestInitialConnectionsAtMostTheMaximum(t *testing.T) {
	_, err := loadConfig(writeConfig(t, "hostname: relay.test\ndelivery: {max_connections_per_domain: 4, initial_connections_per_domain: 5}\n"))
	if err == nil || !strings.Contains(err.Error(), "delivery.initial_connections_per_domain: 5 is more than delivery.max_connections_per_domain (4)") {
		t.Fatalf("error: %v", err)
	}
	cfg, err := loadConfig(writeConfig(t, "hostname: relay.test\ndelivery: {max_connections_per_domain: 4, initial_connections_per_domain: 2, dead_destination_failures: 3, dead_destination_cooldown: 90s}\n"))
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.deliveryConfig()
	if d.InitialConnectionsPerDomain != 2 || d.MaxConnectionsPerDomain != 4 || d.DeadDestinationFailures != 3 || d.DeadDestinationCooldown != 90*time.Second {
		t.Fatalf("delivery config: %+v", d)
	}
}
