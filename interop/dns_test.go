package interop

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// zone is one zone knot serves. Knot signs it itself (dnssec-signing: on)
// with a key that keymgr made before knot started, so the parent's DS can
// be written into the parent's zone file from the start.
type zone struct {
	name    string   // with the trailing dot; "." is the root
	policy  string   // a knot policy below; "" leaves the zone unsigned
	records []string // zone-file lines, absolute names
	// bogus publishes a DS in the parent that matches no key of the zone:
	// every signature in it then fails validation.
	bogus bool
}

// knot policies: both algorithms the issue names, with NSEC and NSEC3.
var knotPolicies = map[string]string{
	"ec":  "ecdsap256sha256",
	"ec3": "ecdsap256sha256",
	"ed":  "ed25519",
	"ed3": "ed25519",
}

type dnsWorld struct {
	anchorFile string // the private root's DNSKEY, for Postern and unbound
	resolvConf string // "nameserver unbound", for tools that read resolv.conf
	hostsFile  string // the machine's name, qualified, for tools that insist
	zones      map[string]*zone
}

// parent is the zone a name is delegated from.
func parent(name string) string {
	if name == "." {
		return ""
	}
	_, rest, _ := strings.Cut(name, ".")
	if rest == "" {
		return "."
	}
	return rest
}

// zoneFileName names a zone's file ("root" for the root).
func zoneFileName(name string) string {
	if name == "." {
		return "root.zone"
	}
	return strings.TrimSuffix(name, ".") + ".zone"
}

func startDNS(w *world) (*dnsWorld, error) {
	dir := filepath.Join(w.dir, "dns")
	for _, d := range []string{"db", "keys", "zones"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	// knotd binds port 53 as root and then runs as the knot user (from the
	// knot package), and keymgr switches to that user too: it must own the
	// database, the keys and the run directory.
	if _, err := run(nil, "chown", "-R", "knot:knot", dir); err != nil {
		return nil, err
	}
	zones := w.zones()
	d := &dnsWorld{zones: map[string]*zone{}}
	for _, z := range zones {
		d.zones[z.name] = z
	}
	conf := filepath.Join(dir, "knot.conf")
	if err := writeFile(conf, knotConf(dir, zones), 0o644); err != nil {
		return nil, err
	}
	// Keys first, then every parent gets its children's NS and DS.
	for _, z := range zones {
		if z.policy == "" {
			continue
		}
		if _, err := run(nil, "keymgr", "-c", conf, z.name, "generate",
			"algorithm="+knotPolicies[z.policy], "ksk=yes", "zsk=yes"); err != nil {
			return nil, err
		}
	}
	for _, z := range zones {
		p := d.zones[parent(z.name)]
		if p == nil {
			continue
		}
		p.records = append(p.records, z.name+" 3600 IN NS ns.root.")
		if z.policy == "" {
			continue
		}
		out, err := run(nil, "keymgr", "-c", conf, z.name, "ds")
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) == 6 && f[1] == "DS" && f[4] == "2" { // SHA-256 digests
				if z.bogus {
					// The last digit changed: a DS for no key of the zone.
					last := f[5][len(f[5])-1]
					f[5] = f[5][:len(f[5])-1] + map[bool]string{true: "1", false: "0"}[last == '0']
				}
				p.records = append(p.records, fmt.Sprintf("%s 3600 IN DS %s %s %s %s", f[0], f[2], f[3], f[4], f[5]))
			}
		}
	}
	for _, z := range zones {
		soa := fmt.Sprintf("%s 3600 IN SOA ns.root. hostmaster.root. 1 3600 600 86400 60\n%s 3600 IN NS ns.root.\n", z.name, z.name)
		if err := writeFile(filepath.Join(dir, "zones", zoneFileName(z.name)), soa+strings.Join(z.records, "\n")+"\n", 0o644); err != nil {
			return nil, err
		}
	}
	knot, err := w.spawn("knotd", nil, "knotd", "-c", conf)
	if err != nil {
		return nil, err
	}
	if err := waitZones(knot, zones); err != nil {
		return nil, err
	}
	// The trust anchor is the root's key as knot publishes it.
	out, err := run(nil, "keymgr", "-c", conf, ".", "dnskey")
	if err != nil {
		return nil, err
	}
	rr, err := dns.NewRR(strings.TrimSpace(out))
	if err != nil {
		return nil, fmt.Errorf("root DNSKEY %q: %w", out, err)
	}
	d.anchorFile = filepath.Join(dir, "root.anchor")
	if err := writeFile(d.anchorFile, rr.String()+"\n", 0o644); err != nil {
		return nil, err
	}
	d.resolvConf = filepath.Join(dir, "resolv.conf")
	if err := writeFile(d.resolvConf, "nameserver "+unboundAddr+"\n", 0o644); err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	d.hostsFile = filepath.Join(dir, "hosts")
	hosts := fmt.Sprintf("127.0.0.1 localhost\n127.0.0.1 %[1]s.interop.test %[1]s\n::1 %[1]s.interop.test %[1]s\n", host)
	if err := writeFile(d.hostsFile, hosts, 0o644); err != nil {
		return nil, err
	}
	if err := writeFile(filepath.Join(dir, "root.hints"), ". 3600 IN NS ns.root.\nns.root. 3600 IN A "+knotAddr+"\n", 0o644); err != nil {
		return nil, err
	}
	ub := filepath.Join(dir, "unbound.conf")
	if err := writeFile(ub, unboundConf(dir, d.anchorFile), 0o644); err != nil {
		return nil, err
	}
	unbound, err := w.spawn("unbound", nil, "unbound", "-d", "-c", ub)
	if err != nil {
		return nil, err
	}
	return d, waitValidated(unbound)
}

func knotConf(dir string, zones []*zone) string {
	var b strings.Builder
	fmt.Fprintf(&b, `server:
    rundir: %[1]s
    listen: %[2]s@53
    user: knot:knot
database:
    storage: %[1]s/db
keystore:
  - id: default
    config: %[1]s/keys
log:
  - target: stderr
    any: notice
template:
  - id: default
    storage: %[1]s/zones
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
policy:
`, dir, knotAddr)
	for _, id := range []string{"ec", "ec3", "ed", "ed3"} {
		fmt.Fprintf(&b, "  - id: %s\n    algorithm: %s\n    manual: on\n    single-type-signing: on\n    nsec3: %v\n",
			id, knotPolicies[id], strings.HasSuffix(id, "3"))
	}
	b.WriteString("zone:\n")
	for _, z := range zones {
		fmt.Fprintf(&b, "  - domain: %q\n    file: %s\n", z.name, zoneFileName(z.name))
		if z.policy != "" {
			fmt.Fprintf(&b, "    dnssec-signing: on\n    dnssec-policy: %s\n", z.policy)
		}
	}
	return b.String()
}

func unboundConf(dir, anchor string) string {
	return fmt.Sprintf(`server:
  interface: %[3]s
  port: 53
  do-ip6: no
  do-not-query-localhost: no
  # unbound binds port 53 as root and then runs as the unbound user.
  username: "unbound"
  chroot: ""
  directory: %[1]q
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 1
  val-log-level: 2
  root-hints: %[1]s/root.hints
  trust-anchor-file: %[2]q
  access-control: 127.0.0.0/8 allow
  # RFC 6761 makes test. a local zone by default; here it is delegated.
  local-zone: "test." nodefault
  qname-minimisation: no
remote-control:
  control-enable: no
`, dir, anchor, unboundAddr)
}

// waitZones polls knot until every zone answers its SOA, signed where it
// should be (knot signs a zone before serving it).
func waitZones(knot *proc, zones []*zone) error {
	c := &dns.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for _, z := range zones {
		for {
			m := new(dns.Msg)
			m.SetQuestion(z.name, dns.TypeSOA)
			m.SetEdns0(1232, true)
			r, _, err := c.Exchange(m, net.JoinHostPort(knotAddr, "53"))
			if err == nil && r.Rcode == dns.RcodeSuccess && len(r.Answer) > 0 && (z.policy == "" || len(r.Answer) > 1) {
				break
			}
			select {
			case <-knot.done:
				return fmt.Errorf("knotd exited: %v\n%s", knot.err, knot.tail())
			default:
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("knot does not serve %s (%v):\n%s", z.name, err, knot.tail())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// waitValidated polls unbound until it answers for test. with the AD bit:
// it has followed the delegation from the private root and validated.
func waitValidated(unbound *proc) error {
	c := &dns.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		m := new(dns.Msg)
		m.SetQuestion("test.", dns.TypeSOA)
		m.SetEdns0(1232, true)
		r, _, err := c.Exchange(m, net.JoinHostPort(unboundAddr, "53"))
		if err == nil && r.Rcode == dns.RcodeSuccess && r.AuthenticatedData {
			return nil
		}
		select {
		case <-unbound.done:
			return fmt.Errorf("unbound exited: %v\n%s", unbound.err, unbound.tail())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("unbound does not validate test. (%v, %v):\n%s", err, r, unbound.tail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
