package interop

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// receiver is a real MTA Postern delivers to. It listens on port 25 of
// two addresses, tlsIP offering STARTTLS and plainIP not, and relays
// everything it accepts to the sink.
type receiver struct {
	name    string
	tlsIP   string
	plainIP string
	start   func(w *world, r *receiver) error
	leaf    *leaf
	proc    *proc
	// brokenTLS is set when the packaged receiver's own STARTTLS does not
	// work in this setup: it stays in the suite, expected to make mail
	// wait under every policy that needs TLS and to receive under may.
	brokenTLS string
}

func allReceivers() []*receiver {
	return []*receiver{
		{name: "postfix", tlsIP: "127.77.1.10", plainIP: "127.77.1.11", start: startPostfix},
		{name: "exim", tlsIP: "127.77.2.10", plainIP: "127.77.2.11", start: startExim},
		{name: "opensmtpd", tlsIP: "127.77.3.10", plainIP: "127.77.3.11", start: startOpenSMTPD,
			// Debian bookworm's opensmtpd 6.8.0p2 fails every STARTTLS
			// handshake on the server side ("io-error: error:0A080006:SSL
			// routines::EVP lib", alert internal_error to the client),
			// with RSA and ECDSA keys alike, and swaks sees the same: its
			// privilege-separated key process does not work with OpenSSL 3.
			brokenTLS: "OpenSMTPD 6.8.0p2 on OpenSSL 3: every server-side TLS handshake fails (EVP lib)"},
		{name: "sendmail", tlsIP: "127.77.4.10", plainIP: "127.77.4.11", start: startSendmail},
	}
}

// Host and domain names of a receiver, in the zones below.
func (r *receiver) mxName() string         { return "mx-" + r.name + ".plain.test" }
func (r *receiver) otherName() string      { return "other-" + r.name + ".plain.test" }
func (r *receiver) notlsName() string      { return "mxnotls-" + r.name + ".plain.test" }
func (r *receiver) daneEEName() string     { return "mx." + r.name + ".dane-ee.test" }
func (r *receiver) daneTAName() string     { return "mx." + r.name + ".dane-ta.test" }
func (r *receiver) daneBadName() string    { return "mx.bad-" + r.name + ".dane-ee.test" }
func (r *receiver) domain(p string) string { return policyDomains[p](r) }

// reuseDomain is a second domain under may with the same MX host.
func (r *receiver) reuseDomain() string { return "reuse-" + r.name + ".plain.test" }

func (r *receiver) issueCert(w *world) error {
	names := []string{r.mxName(), r.daneTAName()}
	var err error
	r.leaf, err = w.ca.issue(w.dir, r.name, names)
	return err
}

// policyDomains: for each policy of the matrix, the recipient domain that
// puts a receiver under it. Which policy each domain gets is set in
// Postern's config (tls.policies) or published in DNS (TLSA).
var policyDomains = map[string]func(r *receiver) string{
	"may":               func(r *receiver) string { return "may-" + r.name + ".plain.test" },
	"verify":            func(r *receiver) string { return "verify-" + r.name + ".plain.test" },
	"dane-ee":           func(r *receiver) string { return r.name + ".dane-ee.test" },
	"dane-ta":           func(r *receiver) string { return r.name + ".dane-ta.test" },
	"verify-wrong-name": func(r *receiver) string { return "wrongname-" + r.name + ".plain.test" },
	"dane-mismatch":     func(r *receiver) string { return "bad-" + r.name + ".dane-ee.test" },
	"encrypt-no-tls":    func(r *receiver) string { return "notls-" + r.name + ".plain.test" },
	"may-no-tls":        func(r *receiver) string { return "notlsmay-" + r.name + ".plain.test" },
}

// zones is the DNS of the world: a private signed root, test. under it,
// and below that one zone per case.
func (w *world) zones() []*zone {
	root := &zone{name: ".", policy: "ec", records: []string{"ns.root. 3600 IN A " + knotAddr}}
	test := &zone{name: "test.", policy: "ed3"}
	plain := &zone{name: "plain.test.", policy: "ec3"}
	daneEE := &zone{name: "dane-ee.test.", policy: "ec"}
	daneTA := &zone{name: "dane-ta.test.", policy: "ed3"}
	for _, r := range w.receivers {
		a := func(name, ip string) string { return name + ". 300 IN A " + ip }
		mx := func(domain, host string) string { return domain + ". 300 IN MX 10 " + host + "." }
		plain.records = append(plain.records,
			a(r.mxName(), r.tlsIP), a(r.otherName(), r.tlsIP), a(r.notlsName(), r.plainIP),
			mx(r.domain("may"), r.mxName()), mx(r.domain("verify"), r.mxName()),
			mx(r.domain("verify-wrong-name"), r.otherName()),
			mx(r.domain("encrypt-no-tls"), r.notlsName()), mx(r.domain("may-no-tls"), r.notlsName()),
			mx(r.reuseDomain(), r.mxName()))
		daneEE.records = append(daneEE.records,
			a(r.daneEEName(), r.tlsIP), mx(r.domain("dane-ee"), r.daneEEName()),
			"_25._tcp."+r.daneEEName()+". 300 IN TLSA 3 1 1 "+spkiSHA256(r.leaf.cert),
			a(r.daneBadName(), r.tlsIP), mx(r.domain("dane-mismatch"), r.daneBadName()),
			"_25._tcp."+r.daneBadName()+". 300 IN TLSA 3 1 1 "+strings.Repeat("ab", 32))
		// TLS reports for the DANE-EE domain (RFC 8460 3).
		daneEE.records = append(daneEE.records,
			"_smtp._tls."+r.domain("dane-ee")+". 300 IN TXT \"v=TLSRPTv1; rua=mailto:"+tlsrptMailbox+"\"")
		daneTA.records = append(daneTA.records,
			a(r.daneTAName(), r.tlsIP), mx(r.domain("dane-ta"), r.daneTAName()),
			"_25._tcp."+r.daneTAName()+". 300 IN TLSA 2 0 1 "+certSHA256(w.ca.cert))
	}
	pf := w.receivers[0] // the DNS cases are delivered to Postfix
	cases := []*zone{
		// An MX host that is a CNAME for a DANE-EE host: RFC 7672 2.2.2
		// has the TLSA records looked up at the CNAME's target.
		{name: "cname.test.", policy: "ed", records: []string{
			"cname.test. 300 IN MX 10 mx.cname.test.",
			"mx.cname.test. 300 IN CNAME " + pf.daneEEName() + ".",
		}},
		// Unsigned: its TLSA record (which matches nothing) is insecure and
		// must be ignored (RFC 7672 2.2): delivery under may.
		{name: "unsigned.test.", records: []string{
			"unsigned.test. 300 IN MX 10 mx.unsigned.test.",
			"mx.unsigned.test. 300 IN A " + pf.tlsIP,
			"_25._tcp.mx.unsigned.test. 300 IN TLSA 3 1 1 " + strings.Repeat("00", 32),
		}},
		// Signed, but the parent's DS matches no key: bogus. Nothing from
		// it may be used; the mail waits.
		{name: "bogus.test.", policy: "ec", bogus: true, records: []string{
			"bogus.test. 300 IN MX 10 mx.bogus.test.",
			"mx.bogus.test. 300 IN A " + pf.tlsIP,
			"_25._tcp.mx.bogus.test. 300 IN TLSA 3 1 1 " + spkiSHA256(pf.leaf.cert),
		}},
		// Only unusable TLSA records (unassigned usage 4, unassigned
		// matching type 3): RFC 7672 2.2 makes that encrypted delivery
		// without authentication.
		{name: "unusable.test.", policy: "ec3", records: []string{
			"unusable.test. 300 IN MX 10 mx.unusable.test.",
			"mx.unusable.test. 300 IN A " + pf.tlsIP,
			"_25._tcp.mx.unusable.test. 300 IN TLSA 4 1 1 " + spkiSHA256(pf.leaf.cert),
			"_25._tcp.mx.unusable.test. 300 IN TLSA 3 1 3 " + spkiSHA256(pf.leaf.cert),
		}},
		// The senders' domain: DKIM keys, and an MX (Postfix) for bounces.
		{name: "sender.test.", policy: "ed", records: append([]string{
			"sender.test. 300 IN MX 10 mx.sender.test.",
			"mx.sender.test. 300 IN A " + pf.tlsIP,
		}, w.dkimRecords()...)},
	}
	return append([]*zone{root, test, plain, daneEE, daneTA}, cases...)
}

// startPostfix runs Postfix's master from the unpacked package, in the
// foreground (-d), with a config directory of its own.
func startPostfix(w *world, r *receiver) error {
	tree := filepath.Join(treeRoot(), "postfix")
	dir := filepath.Join(w.dir, "postfix")
	q := filepath.Join(dir, "queue")
	libs := filepath.Join(tree, "usr/lib/postfix")
	// Per-recipient answers of a real MTA: one address is greylisted (450)
	// and one does not exist (550), for the RCPT and bounce tests.
	mainCF := fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %[1]s
data_directory = %[2]s/data
daemon_directory = %[3]s/usr/lib/postfix/sbin
command_directory = %[3]s/usr/sbin
shlib_directory = %[4]s
meta_directory = %[2]s
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C LD_LIBRARY_PATH=%[4]s
mail_owner = postfix
setgid_group = postdrop
myhostname = %[5]s
# Postfix accepts only addresses of an interface here; master.cf binds the
# suite's own addresses.
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
notify_classes =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:%[6]s
smtp_tls_security_level = none
smtpd_tls_security_level = may
smtpd_tls_chain_files = %[7]s, %[8]s
smtpd_tls_loglevel = 1
smtputf8_enable = yes
message_size_limit = 40000000
smtpd_recipient_restrictions = check_recipient_access inline:{
  { later@%[9]s = 450 4.2.0 greylisted, try again later },
  { nobody@%[9]s = 550 5.1.1 no such user here } },
  permit_mynetworks, reject_unauth_destination
maillog_file = /dev/stdout
`, q, dir, tree, libs, r.mxName(), w.sink.port(), r.leaf.keyFile, r.leaf.chainFile, r.domain("may"))
	masterCF := fmt.Sprintf(`%[1]s:25 inet n - n - - smtpd
%[2]s:25 inet n - n - - smtpd -o smtpd_tls_security_level=none
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
showq     unix  n - n - - showq
`, r.tlsIP, r.plainIP)
	if err := writeFile(filepath.Join(dir, "main.cf"), mainCF, 0o644); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, "master.cf"), masterCF, 0o644); err != nil {
		return err
	}
	// The queue layout "postfix check" would make, owned as Postfix wants.
	if _, err := run(nil, "install", "-d", "-o", "postfix", filepath.Join(dir, "data")); err != nil {
		return err
	}
	if _, err := run(nil, "install", "-d", filepath.Join(q, "pid")); err != nil {
		return err
	}
	for _, sub := range []string{"active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming", "private", "saved", "trace"} {
		if _, err := run(nil, "install", "-d", "-o", "postfix", "-m", "0700", filepath.Join(q, sub)); err != nil {
			return err
		}
	}
	if _, err := run(nil, "install", "-d", "-o", "postfix", "-g", "postdrop", "-m", "0730", filepath.Join(q, "maildrop")); err != nil {
		return err
	}
	if _, err := run(nil, "install", "-d", "-o", "postfix", "-g", "postdrop", "-m", "0710", filepath.Join(q, "public")); err != nil {
		return err
	}
	var err error
	r.proc, err = w.spawn("postfix", []string{"LD_LIBRARY_PATH=" + libs},
		filepath.Join(tree, "usr/lib/postfix/sbin/master"), "-c", dir, "-d")
	if err != nil {
		return err
	}
	if err := r.proc.waitListening(r.tlsIP + ":25"); err != nil {
		return err
	}
	return r.proc.waitListening(r.plainIP + ":25")
}

// startExim runs exim4-daemon-light (Exim with GnuTLS) in the foreground
// (-bdf). Exim keeps root, which port 25 needs, only for a -C config in
// its TRUSTED_CONFIG_LIST, so the config is written where install.sh
// listed it.
func startExim(w *world, r *receiver) error {
	tree := filepath.Join(treeRoot(), "exim4")
	dir := filepath.Join(w.dir, "exim")
	for _, d := range []string{"spool", "log"} {
		if _, err := run(nil, "install", "-d", "-o", "Debian-exim", "-m", "0750", filepath.Join(dir, d)); err != nil {
			return err
		}
	}
	conf := fmt.Sprintf(`primary_hostname = %[1]s
# Exim re-executes itself to deliver; it is not at its compiled-in path.
exim_path = %[8]s/usr/sbin/exim4
spool_directory = %[2]s/spool
log_file_path = %[2]s/log/%%slog
pid_file_path = %[2]s/exim.pid
daemon_smtp_ports = 25
local_interfaces = <; %[3]s ; %[4]s
# STARTTLS on one address only.
tls_advertise_hosts = ${if eq{$received_ip_address}{%[4]s}{}{*}}
tls_certificate = %[5]s
tls_privatekey = %[6]s
smtputf8_advertise_hosts = *
accept_8bitmime = true
message_size_limit = 40M
host_lookup =
rfc1413_hosts =
never_users =
acl_smtp_rcpt = acl_rcpt
log_selector = +tls_cipher +tls_peerdn +smtp_connection +received_recipients +outgoing_port
# Exim is also the smarthost that requires AUTH, offered only inside TLS.
auth_advertise_hosts = ${if eq{$tls_in_cipher}{}{}{*}}

begin acl
acl_rcpt:
  deny message = 530 5.7.0 authentication required
       domains = %[9]s
       !authenticated = *
  accept

begin authenticators
plain_server:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${if and {{eq{$auth2}{%[10]s}}{eq{$auth3}{%[11]s}}}}
  server_set_id = $auth2
login_server:
  driver = plaintext
  public_name = LOGIN
  server_prompts = Username:: : Password::
  server_condition = ${if and {{eq{$auth1}{%[10]s}}{eq{$auth2}{%[11]s}}}}
  server_set_id = $auth1

begin routers
to_sink:
  driver = manualroute
  route_list = * 127.0.0.1
  self = send
  transport = to_sink

begin transports
to_sink:
  driver = smtp
  port = %[7]s
  hosts_avoid_tls = *
  hosts_try_chunking =
  hosts_try_prdr =
`, r.mxName(), dir, r.tlsIP, r.plainIP, r.leaf.chainFile, r.leaf.keyFile, w.sink.port(), tree,
		strings.Join(smarthostDomains, " : "), smarthostUser, smarthostPass)
	// Exim reads its key after dropping to its own user.
	if _, err := run(nil, "chgrp", "Debian-exim", r.leaf.keyFile); err != nil {
		return err
	}
	if err := os.Chmod(r.leaf.keyFile, 0o640); err != nil {
		return err
	}
	confPath := filepath.Join(tree, "interop.conf")
	if err := writeFile(confPath, conf, 0o644); err != nil {
		return err
	}
	var err error
	r.proc, err = w.spawn("exim", nil, filepath.Join(tree, "usr/sbin/exim4"), "-C", confPath, "-bdf", "-d-all+pid+tls")
	if err != nil {
		return err
	}
	if err := r.proc.waitListening(r.tlsIP + ":25"); err != nil {
		return err
	}
	return r.proc.waitListening(r.plainIP + ":25")
}

// startOpenSMTPD runs smtpd in the foreground (-d). Its queue is the
// compiled-in /var/spool/smtpd (smtpd.conf cannot move it).
func startOpenSMTPD(w *world, r *receiver) error {
	tree := filepath.Join(treeRoot(), "opensmtpd")
	dir := filepath.Join(w.dir, "opensmtpd")
	conf := fmt.Sprintf(`pki %[1]s cert "%[2]s"
pki %[1]s key "%[3]s"
smtp max-message-size 40M
listen on %[4]s port 25 tls pki %[1]s hostname %[1]s
listen on %[5]s port 25 hostname %[1]s
action "sink" relay host smtp://127.0.0.1:%[6]s
match from any for any action "sink"
`, r.mxName(), r.leaf.chainFile, r.leaf.keyFile, r.tlsIP, r.plainIP, w.sink.port())
	confPath := filepath.Join(dir, "smtpd.conf")
	if err := writeFile(confPath, conf, 0o644); err != nil {
		return err
	}
	var err error
	r.proc, err = w.spawn("opensmtpd", nil, filepath.Join(tree, "usr/sbin/smtpd"), "-d", "-f", confPath)
	if err != nil {
		return err
	}
	if err := r.proc.waitListening(r.tlsIP + ":25"); err != nil {
		return err
	}
	return r.proc.waitListening(r.plainIP + ":25")
}

// startSendmail runs sendmail in the foreground (-bD) with a sendmail.cf
// built by m4 from the package's own cf macros.
func startSendmail(w *world, r *receiver) error {
	tree := filepath.Join(treeRoot(), "sendmail")
	dir := filepath.Join(w.dir, "sendmail")
	if _, err := run(nil, "install", "-d", "-m", "0700", filepath.Join(dir, "mqueue")); err != nil {
		return err
	}
	// Host names come from files only: the system resolver is not the
	// suite's DNS, and nothing here needs it.
	if err := writeFile(filepath.Join(dir, "service.switch"), "hosts files\naliases files\n", 0o644); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, "aliases"), "postmaster: root\n", 0o644); err != nil {
		return err
	}
	// m4 quotes are ` and '.
	q := func(v string) string { return "`" + v + "'" }
	var mc strings.Builder
	fmt.Fprintf(&mc, "divert(-1)\ninclude(%s)\ndivert(0)dnl\nOSTYPE(%s)dnl\n",
		q(filepath.Join(tree, "usr/share/sendmail/cf/m4/cf.m4")), q("linux"))
	for _, d := range [][2]string{
		{"confDOMAIN_NAME", r.mxName()},
		{"QUEUE_DIR", filepath.Join(dir, "mqueue")},
		{"STATUS_FILE", filepath.Join(dir, "statistics")},
		{"ALIAS_FILE", filepath.Join(dir, "aliases")},
		{"confPID_FILE", filepath.Join(dir, "sendmail.pid")},
		{"confSERVICE_SWITCH_FILE", filepath.Join(dir, "service.switch")},
		{"confDONT_PROBE_INTERFACES", "true"},
		// The world's directory is under /tmp (sticky, world-writable).
		{"confDONT_BLAME_SENDMAIL", "TrustStickyBit,GroupWritableDirPathSafe"},
		{"confCACERT_PATH", w.dir},
		{"confCACERT", w.ca.file},
		{"confSERVER_CERT", r.leaf.chainFile},
		{"confSERVER_KEY", r.leaf.keyFile},
		{"confTO_IDENT", "0s"},
		{"confDELIVERY_MODE", "background"},
		{"confEIGHT_BIT_HANDLING", "pass8"},
		{"confMAX_MESSAGE_SIZE", "40000000"},
		{"SMART_HOST", "[127.0.0.1]"},
		{"RELAY_MAILER_ARGS", "TCP $h " + w.sink.port()},
		{"SMTP_MAILER_ARGS", "TCP $h " + w.sink.port()},
		{"ESMTP_MAILER_ARGS", "TCP $h " + w.sink.port()},
	} {
		fmt.Fprintf(&mc, "define(%s, %s)dnl\n", q(d[0]), q(d[1]))
	}
	for _, f := range []string{"promiscuous_relay", "accept_unresolvable_domains", "nocanonify", "no_default_msa"} {
		fmt.Fprintf(&mc, "FEATURE(%s)dnl\n", q(f))
	}
	// STARTTLS on one address only (M=S: do not offer it).
	fmt.Fprintf(&mc, "DAEMON_OPTIONS(%s)dnl\n", q("Family=inet, Addr="+r.tlsIP+", Port=25, Name=MTA"))
	fmt.Fprintf(&mc, "DAEMON_OPTIONS(%s)dnl\n", q("Family=inet, Addr="+r.plainIP+", Port=25, Name=MTA-notls, M=S"))
	fmt.Fprintf(&mc, "MAILER(%s)dnl\n", q("smtp"))
	cf := filepath.Join(dir, "sendmail.cf")
	cmd := exec.Command("m4")
	cmd.Stdin = strings.NewReader(mc.String())
	var m4Errors strings.Builder // FEATURE(promiscuous_relay) warns here
	cmd.Stderr = &m4Errors
	cfText, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("m4 sendmail.mc: %w\n%s", err, m4Errors.String())
	}
	if err := writeFile(cf, string(cfText), 0o644); err != nil {
		return err
	}
	// Sendmail looks its host name up in DNS at start, whatever the
	// service switch says; the system's resolver may not answer here.
	r.proc, err = w.spawn("sendmail", nil, w.withSuiteDNS(filepath.Join(tree, "usr/libexec/sendmail/sendmail"), "-bD", "-C", cf)...)
	if err != nil {
		return err
	}
	if err := r.proc.waitListening(r.tlsIP + ":25"); err != nil {
		return err
	}
	return r.proc.waitListening(r.plainIP + ":25")
}
