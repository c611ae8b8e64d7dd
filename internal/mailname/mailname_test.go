package mailname

import "testing"

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"example.com": "example.com", "Example.COM.": "example.com", "": "", ".": "", "MX.Dest.Test": "mx.dest.test",
	} {
		if got := Normalize(in); got != want {
			t.Errorf("Normalize(%q) = %q; want %q", in, got, want)
		}
	}
}

// One behaviour for routes (relay/delivery) and local TLS policies
// (tlspolicy): exact or ".suffix", whatever the case or trailing dot of
// either side.
func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, domain string
		want            bool
	}{
		{"example.com", "example.com", true},
		{"example.com", "EXAMPLE.com", true},
		{"Example.COM", "example.com", true},
		{"example.com.", "example.com", true},
		{"example.com", "example.com.", true},
		{"example.com", "mail.example.com", false},
		{".example.com", "mail.example.com", true},
		{".example.com", "a.b.EXAMPLE.COM.", true},
		{".Example.Com", "mail.example.com", true},
		{".example.com", "example.com", false},
		{".example.com", "badexample.com", false},
		{".example.com", ".example.com", false},
		{"example.com", "example.org", false},
		{"", "example.com", false},
	} {
		if got := Match(tc.pattern, tc.domain); got != tc.want {
			t.Errorf("Match(%q, %q) = %v; want %v", tc.pattern, tc.domain, got, tc.want)
		}
	}
}

func TestIsASCII(t *testing.T) {
	for s, want := range map[string]bool{"": true, "user@example.com": true, "üser@example.com": false, "user@bücher.example": false, "\x7f": true} {
		if got := IsASCII(s); got != want {
			t.Errorf("IsASCII(%q) = %v; want %v", s, got, want)
		}
	}
}
