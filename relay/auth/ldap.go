package auth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// LDAPConfig is a directory to check passwords against (Active Directory,
// OpenLDAP).
type LDAPConfig struct {
	// URL is ldaps://host[:port], or ldap://host[:port] with StartTLS:
	// passwords never cross the network in cleartext.
	URL      string
	StartTLS bool
	// RootCAs verify the directory's certificate; nil means the system
	// roots. The name verified is the URL's host.
	RootCAs *x509.CertPool
	// BindDN and BindPassword are the account that searches; empty binds
	// anonymously for the search.
	BindDN, BindPassword string
	// Base and Filter find the user: every {user} in Filter is replaced by
	// the name given at AUTH, escaped (RFC 4515 3), e.g.
	// "(&(objectClass=person)(uid={user}))" or "(sAMAccountName={user})".
	Base, Filter string
	// SenderAttribute names the attribute holding the addresses the user
	// may send as: "mail", or "proxyAddresses", whose "smtp:" values
	// (either case) are taken and other types (X500:, SIP:) ignored.
	SenderAttribute string
	// SenderTemplate is a sender pattern with {user} replaced by the
	// name ("{user}@example.org"). With both, either allows.
	SenderTemplate string
	// Timeout bounds one check: connecting, TLS, search and bind.
	Timeout time.Duration
}

// SettingError is a bad LDAPConfig; Setting names the field as the
// configuration file does ("url", "filter", "sender_template").
type SettingError struct {
	Setting string
	Err     error
}

func (e *SettingError) Error() string { return e.Setting + ": " + e.Err.Error() }
func (e *SettingError) Unwrap() error { return e.Err }

func bad(setting, format string, args ...any) error {
	return &SettingError{Setting: setting, Err: fmt.Errorf(format, args...)}
}

// LDAP checks passwords by binding to a directory as the user.
type LDAP struct {
	cfg  LDAPConfig
	tls  *tls.Config
	desc string
}

// NewLDAP checks cfg; the errors name the setting at fault by its field.
func NewLDAP(cfg LDAPConfig) (*LDAP, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Host == "" {
		return nil, bad("url", "%q: want ldaps://host[:port] or ldap://host[:port] with starttls", cfg.URL)
	}
	switch {
	case u.Scheme == "ldaps" && cfg.StartTLS:
		return nil, bad("starttls", "not with ldaps://, which is TLS from the start")
	case u.Scheme == "ldap" && !cfg.StartTLS:
		return nil, bad("url", "%q: ldap:// would send passwords in cleartext; use ldaps:// or set starttls: true", cfg.URL)
	case u.Scheme != "ldap" && u.Scheme != "ldaps":
		return nil, bad("url", "%q: want ldaps:// or ldap:// (with starttls)", cfg.URL)
	}
	if cfg.Base == "" {
		return nil, bad("base", "must be set (the subtree to search, e.g. ou=people,dc=example,dc=org)")
	}
	if !strings.Contains(cfg.Filter, "{user}") {
		return nil, bad("filter", "%q: must contain {user}", cfg.Filter)
	}
	if _, err := ldap.CompileFilter(strings.ReplaceAll(cfg.Filter, "{user}", "x")); err != nil {
		return nil, bad("filter", "%q: %w", cfg.Filter, err)
	}
	if cfg.SenderAttribute == "" && cfg.SenderTemplate == "" {
		// Without either, a directory user could send as anyone.
		return nil, bad("sender_attribute", "set it or sender_template, or directory users could send as anyone")
	}
	if t := cfg.SenderTemplate; t != "" {
		if err := ValidatePatterns([]string{strings.ReplaceAll(t, "{user}", "x")}); err != nil {
			return nil, bad("sender_template", "%w", err)
		}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	host := u.Hostname()
	return &LDAP{
		cfg:  cfg,
		tls:  &tls.Config{ServerName: host, RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12},
		desc: u.Scheme + "://" + u.Host,
	}, nil
}

func (l *LDAP) String() string { return l.desc }

// Authenticate finds name with the search account, then binds as the
// entry found with password (RFC 4513 5.1.3): the directory, not Postern,
// decides whether the password is right.
func (l *LDAP) Authenticate(ctx context.Context, name, password string) (User, error) {
	if password == "" {
		// A simple bind with a name and no password is an
		// "unauthenticated bind" that many servers accept (RFC 4513
		// 5.1.2): it proves nothing.
		return User{}, ErrBadCredentials
	}
	conn, err := l.connect(ctx)
	if err != nil {
		return User{}, fmt.Errorf("%w: %s: %w", ErrUnavailable, l.desc, err)
	}
	defer conn.Close()
	entry, err := l.find(conn, name)
	if err != nil {
		return User{}, err
	}
	if err := conn.Bind(entry.DN, password); err != nil {
		if ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
			return User{}, ErrBadCredentials
		}
		// Busy, unavailable, a lost connection: not the password's fault.
		return User{}, fmt.Errorf("%w: %s: bind as the user: %w", ErrUnavailable, l.desc, err)
	}
	senders := l.senders(name, entry)
	if len(senders) == 0 {
		// An empty list would allow any sender.
		return User{}, fmt.Errorf("%w: directory entry %s has no sender address (%s)", ErrBadCredentials, entry.DN, l.cfg.SenderAttribute)
	}
	return User{Name: name, AllowFrom: senders, Source: SourceLDAP}, nil
}

// connect dials, secures the connection (verifying the certificate) and
// binds the search account, within ctx and the configured timeout.
func (l *LDAP) connect(ctx context.Context) (*ldap.Conn, error) {
	timeout := l.cfg.Timeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	if timeout <= 0 {
		return nil, context.DeadlineExceeded
	}
	conn, err := ldap.DialURL(l.cfg.URL, ldap.DialWithDialer(&net.Dialer{Timeout: timeout}), ldap.DialWithTLSConfig(l.tls))
	if err != nil {
		return nil, err
	}
	conn.SetTimeout(timeout)
	if l.cfg.StartTLS {
		if err := conn.StartTLS(l.tls); err != nil {
			conn.Close()
			return nil, fmt.Errorf("starttls: %w", err)
		}
	}
	if l.cfg.BindDN != "" {
		// A refused search account is the operator's to fix: temporary
		// for the client (the caller wraps ErrUnavailable).
		if err := conn.Bind(l.cfg.BindDN, l.cfg.BindPassword); err != nil {
			conn.Close()
			return nil, fmt.Errorf("bind as bind_dn: %w", err)
		}
	}
	return conn, nil
}

// find returns the one entry the filter selects for name.
func (l *LDAP) find(conn *ldap.Conn, name string) (*ldap.Entry, error) {
	attrs := []string{"1.1"} // RFC 4511 4.5.1.8: no attributes
	if l.cfg.SenderAttribute != "" {
		attrs = []string{l.cfg.SenderAttribute}
	}
	filter := strings.ReplaceAll(l.cfg.Filter, "{user}", ldap.EscapeFilter(name))
	req := ldap.NewSearchRequest(l.cfg.Base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		2, int(l.cfg.Timeout/time.Second), false, filter, attrs, nil)
	res, err := conn.Search(req)
	// sizeLimitExceeded means more entries match than were returned
	// (RFC 4511 4.5.2): under our limit of 2, or under the directory's own
	// (slapd's sizelimit, an AD query policy), which may be 1 and then
	// returns one entry of several. Either way the filter is ambiguous.
	ambiguous := ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded)
	if err != nil && !ambiguous {
		return nil, fmt.Errorf("%w: %s: search: %w", ErrUnavailable, l.desc, err)
	}
	switch {
	case !ambiguous && (res == nil || len(res.Entries) == 0):
		return nil, fmt.Errorf("%s: %w", name, ErrNoSuchUser)
	case ambiguous || len(res.Entries) > 1:
		// Which one's password? The filter is wrong: the operator's to fix.
		return nil, fmt.Errorf("%w: %s: filter %s matches more than one entry", ErrUnavailable, l.desc, filter)
	}
	return res.Entries[0], nil
}

// senders are the user's sender patterns: the attribute's addresses,
// matched literally, and the template.
func (l *LDAP) senders(name string, entry *ldap.Entry) []string {
	var out []string
	if a := l.cfg.SenderAttribute; a != "" {
		for _, v := range entry.GetAttributeValues(a) {
			if addr, ok := senderAddress(v); ok {
				out = append(out, globEscape(addr))
			}
		}
	}
	if t := l.cfg.SenderTemplate; t != "" {
		out = append(out, strings.ReplaceAll(t, "{user}", globEscape(name)))
	}
	return out
}

// senderAddress reads an address from an attribute value: a plain
// address (mail), or a typed one (proxyAddresses: "SMTP:" is the primary
// address, "smtp:" an alias; "X500:", "SIP:" and the like are not mail).
func senderAddress(v string) (string, bool) {
	v = strings.TrimSpace(v)
	if typ, addr, ok := strings.Cut(v, ":"); ok && !strings.Contains(typ, "@") {
		if !strings.EqualFold(typ, "smtp") {
			return "", false
		}
		v = addr
	}
	at := strings.LastIndexByte(v, '@')
	if at <= 0 || at == len(v)-1 || strings.ContainsAny(v, " \t\r\n<>") {
		return "", false
	}
	return v, true
}

// globEscape makes s match only itself as a sender pattern: a directory
// value "*@example.org" is an odd address, not a licence.
func globEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`).Replace(s)
}
