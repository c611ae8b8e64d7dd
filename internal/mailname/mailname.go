// Package mailname holds the few rules Postern applies to the names in
// mail, domain names and addresses, so that every package applies them
// alike: one way to normalise a domain, one way to match a domain against
// a configured pattern, one way to tell an address that needs SMTPUTF8.
//
// It imports nothing of Postern's, so that relay, tlspolicy and cmd can all
// use it. queue and resolver, which import nothing of ours by design, keep
// their own one-line forms (queue.Domain, the resolver's canonical names).
package mailname

import "strings"

// Normalize is domain as Postern compares and stores it: lower case (DNS
// names compare without regard to case, RFC 4343) and without the trailing
// dot of a fully qualified name (RFC 1034 3.1), so that "Example.COM." and
// "example.com" are one key.
func Normalize(domain string) string {
	return strings.ToLower(strings.TrimSuffix(domain, "."))
}

// Match reports whether domain falls under pattern, which is either a
// domain (that domain only) or ".suffix" (every subdomain of suffix, but
// not suffix itself). Both sides are normalised first, so case and a
// trailing dot never decide a match.
func Match(pattern, domain string) bool {
	pattern, domain = Normalize(pattern), Normalize(domain)
	if strings.HasPrefix(pattern, ".") {
		return len(domain) > len(pattern) && strings.HasSuffix(domain, pattern)
	}
	return domain == pattern
}

// IsASCII reports whether s is all ASCII: an address that is not needs
// SMTPUTF8 (RFC 6531 3.4) and, in a notice, the utf-8 address type
// (RFC 6533 3).
func IsASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
