package auth

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/relay/auth/ldaptest"
)

// The directory: alice has mail addresses; bob, Active Directory style,
// proxyAddresses (the primary SMTP:, an alias smtp:, and an X500: that is
// not mail); carol has no address at all.
const people = `dn: uid=alice,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: A
mail: alice@example.org
mail: billing@example.org
userPassword: alice-pw

dn: uid=bob,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
objectClass: posternTestMailUser
uid: bob
cn: Bob
sn: B
proxyAddresses: SMTP:bob@example.org
proxyAddresses: smtp:b.alias@example.net
proxyAddresses: X500:/o=Example/ou=Exchange/cn=bob
userPassword: bob-pw

dn: uid=carol,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: carol
cn: Carol
sn: C
userPassword: carol-pw

dn: cn=postern,dc=example,dc=org
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: postern
userPassword: search-pw
`

func newLDAP(t *testing.T, cfg LDAPConfig) *LDAP {
	t.Helper()
	if cfg.Base == "" {
		cfg.Base = "ou=people," + ldaptest.Base
	}
	if cfg.Filter == "" {
		cfg.Filter = "(&(objectClass=inetOrgPerson)(uid={user}))"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	l, err := NewLDAP(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestLDAPAgainstSlapd checks passwords against a real OpenLDAP, over
// LDAPS and over StartTLS, verified against the test CA; reads the senders
// from mail, from proxyAddresses, or a template; and tells a wrong
// password (535) from a directory that cannot answer (454).
func TestLDAPAgainstSlapd(t *testing.T) {
	srv := ldaptest.Start(t, people)
	ctx := context.Background()
	bindDN := "cn=postern," + ldaptest.Base

	ldaps := newLDAP(t, LDAPConfig{URL: srv.TLSURL, RootCAs: srv.CA.Pool(), BindDN: bindDN, BindPassword: "search-pw", SenderAttribute: "mail"})
	u, err := ldaps.Authenticate(ctx, "alice", "alice-pw")
	if err != nil || u.Source != SourceLDAP || !slices.Equal(u.AllowFrom, []string{"alice@example.org", "billing@example.org"}) {
		t.Fatalf("alice over LDAPS: %+v %v", u, err)
	}
	for _, tc := range []struct {
		name, password string
		want           error
	}{
		{"alice", "wrong", ErrBadCredentials},
		{"alice", "", ErrBadCredentials}, // an unauthenticated bind proves nothing
		{"nobody", "x", ErrNoSuchUser},
		{"ali*", "alice-pw", ErrNoSuchUser},      // the name is escaped in the filter
		{"*)(uid=*", "x", ErrNoSuchUser},         // and cannot widen it
		{"carol", "carol-pw", ErrBadCredentials}, // no sender address: never "any sender"
	} {
		if _, err := ldaps.Authenticate(ctx, tc.name, tc.password); !errors.Is(err, tc.want) {
			t.Errorf("%s/%q: %v, want %v", tc.name, tc.password, err, tc.want)
		}
	}

	// StartTLS, anonymous search, proxyAddresses: only the smtp: values, either case.
	starttls := newLDAP(t, LDAPConfig{URL: srv.URL, StartTLS: true, RootCAs: srv.CA.Pool(), SenderAttribute: "proxyAddresses"})
	u, err = starttls.Authenticate(ctx, "bob", "bob-pw")
	if err != nil || !slices.Equal(u.AllowFrom, []string{"bob@example.org", "b.alias@example.net"}) {
		t.Fatalf("bob over StartTLS: %+v %v", u, err)
	}
	if !u.MaySend("B.Alias@example.net") || u.MaySend("x@example.net") {
		t.Errorf("bob's senders: %v", u.AllowFrom)
	}
	tmpl := newLDAP(t, LDAPConfig{URL: srv.URL, StartTLS: true, RootCAs: srv.CA.Pool(), SenderTemplate: "{user}@staff.example.org"})
	if u, err := tmpl.Authenticate(ctx, "carol", "carol-pw"); err != nil || !slices.Equal(u.AllowFrom, []string{"carol@staff.example.org"}) {
		t.Fatalf("template: %+v %v", u, err)
	}

	// Not verified (the system roots do not know the test CA), a wrong
	// search password, a filter matching two entries: the directory
	// cannot answer, which is never a wrong password.
	for name, l := range map[string]*LDAP{
		"unverified LDAPS":    newLDAP(t, LDAPConfig{URL: srv.TLSURL, SenderAttribute: "mail"}),
		"unverified StartTLS": newLDAP(t, LDAPConfig{URL: srv.URL, StartTLS: true, SenderAttribute: "mail"}),
		"bad bind_password":   newLDAP(t, LDAPConfig{URL: srv.TLSURL, RootCAs: srv.CA.Pool(), BindDN: bindDN, BindPassword: "nope", SenderAttribute: "mail"}),
		"ambiguous filter":    newLDAP(t, LDAPConfig{URL: srv.TLSURL, RootCAs: srv.CA.Pool(), Filter: "(|(uid={user})(uid=bob))", SenderAttribute: "mail"}),
	} {
		if _, err := l.Authenticate(ctx, "alice", "alice-pw"); !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrBadCredentials) {
			t.Errorf("%s: %v, want unavailable", name, err)
		}
		t.Logf("%s: %v", name, err)
	}

	// Through the verifier: a directory user logs in, the success is
	// remembered; with the directory down, a remembered success still
	// logs in, anything else is 'unavailable' and counts no failure.
	v := NewVerifier(newStore(t), Limits{MaxFailures: 1, Window: time.Hour, Lockout: time.Hour}, nil)
	v.SetDirectory(ldaps)
	if u, _, err := v.Verify(ctx, "192.0.2.1", "alice", "alice-pw"); err != nil || u.Source != SourceLDAP {
		t.Fatalf("verify alice: %+v %v", u, err)
	}
	srv.Stop()
	if _, _, err := v.Verify(ctx, "192.0.2.1", "alice", "alice-pw"); err != nil {
		t.Fatalf("remembered success with the directory down: %v", err)
	}
	for i := 0; i < 3; i++ {
		_, _, err := v.Verify(ctx, "192.0.2.2", "bob", "bob-pw")
		if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrBadCredentials) {
			t.Fatalf("directory down: %v", err)
		}
		if !strings.Contains(err.Error(), srv.TLSURL[:len(srv.TLSURL)-1]) {
			t.Errorf("the error does not name the directory: %v", err)
		}
	}
	if v.Locked("192.0.2.2") {
		t.Error("an outage of the directory locked a client out")
	}
}
