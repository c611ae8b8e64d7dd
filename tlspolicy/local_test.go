package tlspolicy

import (
	"testing"
	"time"
)

// A local policy matches as a delivery route does (one function,
// mailname.Match): exact before the longest suffix, and neither the case nor
// a trailing dot of either side decides.
func TestLocalForMatching(t *testing.T) {
	entries := []Local{{Domain: ".Example.COM", Mode: ModeEncrypt}, {Domain: "mail.example.com.", Mode: ModeVerify},
		{Domain: ".mail.example.com", Mode: ModeDANE}}
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	for domain, want := range map[string]Mode{"mail.example.com": ModeVerify, "MAIL.example.com.": ModeVerify,
		"a.example.com": ModeEncrypt, "a.mail.example.com": ModeDANE} {
		if e, _ := localFor(entries, domain, now); e == nil || e.Mode != want {
			t.Errorf("%s: got %+v, want mode %v", domain, e, want)
		}
	}
	if e, _ := localFor(entries, "example.com", now); e != nil {
		t.Errorf("a .suffix entry matched the bare domain: %+v", e)
	}
}

// TestModeZeroIsNotNone: the zero Mode (an entry or default nobody set)
// asks for verified TLS and cannot weaken a published policy; the names
// parsed and printed are those of the configuration.
func TestModeZeroIsNotNone(t *testing.T) {
	var unset Mode
	if unset == ModeNone || unset.level() != Verify || unset.weakens() {
		t.Fatalf("zero Mode: none=%t level=%s weakens=%t", unset == ModeNone, unset.level(), unset.weakens())
	}
	if unset.String() != "unset" {
		t.Fatalf("zero Mode prints %q", unset.String())
	}
	if _, err := ParseMode(""); err == nil {
		t.Fatal(`ParseMode("") succeeded`)
	}
	for _, name := range []string{"none", "may", "encrypt", "verify", "dane", "dane-only"} {
		m, err := ParseMode(name)
		if err != nil || m == ModeUnset || m.String() != name {
			t.Fatalf("ParseMode(%q) = %v (%s), %v", name, m, m.String(), err)
		}
	}
	if m, _ := ParseMode("NONE"); m != ModeNone || ModeNone.level() != None || !ModeNone.weakens() {
		t.Fatal("none no longer means none")
	}
}
