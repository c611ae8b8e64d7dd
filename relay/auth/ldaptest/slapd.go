// Package ldaptest runs a real OpenLDAP server (Debian's slapd) for tests:
// its own configuration and database in a temporary directory, plain LDAP
// (with StartTLS) and LDAPS on free loopback ports, a certificate from a
// test CA, filled with ldapadd, stopped by its PID. Where slapd or
// ldap-utils are not installed, Start skips the test (and fails it under
// CI=true, where .ci/run has installed them).
package ldaptest

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/tlspolicy/tlstest"
)

// The directory's fixed names.
const (
	Base          = "dc=example,dc=org"
	AdminDN       = "cn=admin," + Base
	AdminPassword = "admin-secret"
)

// Server is a running slapd.
type Server struct {
	URL    string // ldap://127.0.0.1:PORT/ (StartTLS offered)
	TLSURL string // ldaps://127.0.0.1:PORT/
	CA     *tlstest.CA
	CAFile string // the CA's certificate, PEM

	t    testing.TB
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

// A small schema of the test's own for proxyAddresses, the Active
// Directory attribute (the OIDs are under 2.25, UUID-derived, so no one
// else's).
const schema = `
attributetype ( 2.25.265590512409473711104117316405547458217.1 NAME 'proxyAddresses'
	EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
	SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
objectclass ( 2.25.265590512409473711104117316405547458217.2 NAME 'posternTestMailUser'
	SUP top AUXILIARY MAY ( proxyAddresses ) )
`

func binary(names ...string) string {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
		if p := filepath.Join("/usr/sbin", n); fileExists(p) {
			return p
		}
	}
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// Start runs slapd with the base entry and an admin, then adds ldif.
func Start(t testing.TB, ldif string) *Server {
	t.Helper()
	return StartWith(t, ldif, "")
}

// StartWith is Start with global slapd.conf lines of the test's own
// ("sizelimit 1"), placed before the database.
func StartWith(t testing.TB, ldif, global string) *Server {
	t.Helper()
	slapd, ldapadd := binary("slapd"), binary("ldapadd")
	schemaDir := "/etc/ldap/schema"
	if slapd == "" || ldapadd == "" || !fileExists(filepath.Join(schemaDir, "inetorgperson.schema")) {
		if os.Getenv("CI") == "true" {
			// .ci/run installs them: CI must not pass by skipping.
			t.Fatal("slapd and ldap-utils are not installed, and CI must run the LDAP tests")
		}
		t.Skip("slapd and ldap-utils are not installed (apt-get install slapd ldap-utils); skipping the LDAP test")
	}
	dir := t.TempDir()
	s := &Server{t: t, dir: dir, CA: tlstest.NewCA(t, "Postern test LDAP CA"), done: make(chan struct{})}
	leaf := s.CA.Leaf(t, false, "127.0.0.1", "localhost")
	key, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	var chain []byte
	for _, der := range leaf.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	s.CAFile = filepath.Join(dir, "ca.pem")
	write(t, s.CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.CA.Cert.Raw}))
	write(t, filepath.Join(dir, "cert.pem"), chain)
	write(t, filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}))
	write(t, filepath.Join(dir, "mail.schema"), []byte(schema))
	if err := os.Mkdir(filepath.Join(dir, "db"), 0o700); err != nil {
		t.Fatal(err)
	}
	modules := ""
	if fileExists("/usr/lib/ldap/back_mdb.so") {
		modules = "modulepath /usr/lib/ldap\nmoduleload back_mdb\n"
	}
	conf := fmt.Sprintf(`include %[1]s/core.schema
include %[1]s/cosine.schema
include %[1]s/inetorgperson.schema
include %[2]s/mail.schema
%[3]spidfile %[2]s/slapd.pid
TLSCACertificateFile %[2]s/ca.pem
TLSCertificateFile %[2]s/cert.pem
TLSCertificateKeyFile %[2]s/key.pem
%[7]s
database mdb
maxsize 16777216
suffix "%[4]s"
rootdn "%[5]s"
rootpw %[6]s
directory %[2]s/db
access to attrs=userPassword by anonymous auth by self read by * none
access to * by * read
`, schemaDir, dir, modules, Base, AdminDN, AdminPassword, global)
	write(t, filepath.Join(dir, "slapd.conf"), []byte(conf))

	plain, secure := freePort(t), freePort(t)
	s.URL = fmt.Sprintf("ldap://127.0.0.1:%d/", plain)
	s.TLSURL = fmt.Sprintf("ldaps://127.0.0.1:%d/", secure)
	// -d keeps slapd in the foreground, so that its PID is the child's and
	// its log goes to the test's.
	s.cmd = exec.Command(slapd, "-f", filepath.Join(dir, "slapd.conf"), "-h", s.URL+" "+s.TLSURL, "-d", "0")
	s.cmd.Stdout, s.cmd.Stderr = &testLog{t}, &testLog{t}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(s.Stop)
	for _, port := range []int{plain, secure} {
		s.waitListening(port)
	}
	s.Add(t, fmt.Sprintf("dn: %s\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n"+
		"dn: ou=people,%s\nobjectClass: organizationalUnit\nou: people\n", Base, Base))
	if ldif != "" {
		s.Add(t, ldif)
	}
	return s
}

func write(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// freePort finds a port nothing listens on (slapd takes no :0).
func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (s *Server) waitListening(port int) {
	s.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-s.done:
			s.t.Fatalf("slapd exited at start (see its log above)")
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("slapd not listening on %d: %v", port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Add runs ldapadd as the admin, over StartTLS.
func (s *Server) Add(t testing.TB, ldif string) {
	t.Helper()
	cmd := exec.Command(binary("ldapadd"), "-x", "-ZZ", "-H", s.URL, "-D", AdminDN, "-w", AdminPassword)
	cmd.Env = append(os.Environ(), "LDAPTLS_CACERT="+s.CAFile, "LDAPTLS_REQCERT=demand")
	cmd.Stdin = strings.NewReader(ldif)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ldapadd: %v\n%s", err, out)
	}
}

// Stop ends slapd (SIGTERM to its PID) and waits for it; the directory is
// then down, as a test of an outage wants.
func (s *Server) Stop() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

type testLog struct{ t testing.TB }

func (l *testLog) Write(p []byte) (int, error) {
	l.t.Logf("slapd: %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
