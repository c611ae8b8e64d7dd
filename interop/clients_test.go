package interop

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// smtplibScript submits stdin with Python's smtplib; argv: port, mechanism,
// user, password, from, to. Port 465 is implicit TLS, any other STARTTLS.
const smtplibScript = `
import smtplib, ssl, sys
port, mech, user, password, frm, to = sys.argv[1:7]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
host = "` + posternIP + `"
if port == "465":
    s = smtplib.SMTP_SSL(host, 465, context=ctx, timeout=30)
    s.ehlo()
else:
    s = smtplib.SMTP(host, int(port), timeout=30)
    s.ehlo()
    s.starttls(context=ctx)
    s.ehlo()
s.user, s.password = user, password
code, resp = s.auth(mech, s.auth_plain if mech == "PLAIN" else s.auth_login)
assert code == 235, (code, resp)
refused = s.sendmail(frm, [to], sys.stdin.buffer.read())
assert not refused, refused
s.quit()
print("sent")
`

// TestSubmissionClients: swaks, msmtp and Python's smtplib submit to
// Postern on 587 (STARTTLS) and 465 (implicit TLS, RFC 8314) with AUTH
// PLAIN and AUTH LOGIN; each message is then delivered.
func TestSubmissionClients(t *testing.T) {
	w := needWorld(t)
	rcpt := "bob@" + w.receivers[0].domain("may")
	msmtprc := filepath.Join(w.dir, "msmtprc")
	if err := os.WriteFile(msmtprc, []byte("# empty: all settings on the command line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clients := map[string]func(port, mech string) []string{
		"swaks": func(port, mech string) []string {
			tls := "--tls"
			if port == "465" {
				tls = "--tls-on-connect"
			}
			return []string{"swaks", "--server", posternIP, "--port", port, tls, "--auth", mech,
				"--auth-user", submitUser, "--auth-password", submitPass, "--from", senderAddr, "--to", rcpt,
				"--data", "-", "--timeout", "30"}
		},
		"msmtp": func(port, mech string) []string {
			starttls := "on"
			if port == "465" {
				starttls = "off"
			}
			return []string{"msmtp", "-C", msmtprc, "--host=" + posternIP, "--port=" + port, "--tls=on",
				"--tls-starttls=" + starttls, "--tls-certcheck=off", "--auth=" + strings.ToLower(mech),
				"--user=" + submitUser, "--passwordeval=echo " + submitPass, "--from=" + senderAddr, rcpt}
		},
		"smtplib": func(port, mech string) []string {
			return []string{"/usr/bin/python3", "-c", smtplibScript, port, mech, submitUser, submitPass, senderAddr, rcpt}
		},
	}
	type sub struct{ name, tok string }
	var subs []sub
	for _, client := range []string{"swaks", "msmtp", "smtplib"} {
		for _, port := range []string{"587", "465"} {
			for _, mech := range []string{"PLAIN", "LOGIN"} {
				name := fmt.Sprintf("%s/%s/%s", client, port, mech)
				tok := token("client-" + client + "-" + port + "-" + mech)
				argv := clients[client](port, mech)
				cmd := exec.Command(argv[0], argv[1:]...)
				cmd.Stdin = strings.NewReader(string(testMessage(tok, rcpt, "")))
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Errorf("%s: %v\n%s", name, err, out)
					continue
				}
				subs = append(subs, sub{name, tok})
			}
		}
	}
	for _, s := range subs {
		if _, ok := w.sink.find(s.tok, 30*time.Second); !ok {
			t.Errorf("%s: submitted, never delivered", s.name)
		}
	}
	// A wrong password is refused with 535 5.7.8 (RFC 4954 6).
	out, err := exec.Command("swaks", "--server", posternIP, "--port", "587", "--tls", "--auth", "PLAIN",
		"--auth-user", submitUser, "--auth-password", "wrong", "--from", senderAddr, "--to", rcpt, "--quit-after", "AUTH").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "535 5.7.8") {
		t.Errorf("wrong password: %v\n%s", err, out)
	}
}
