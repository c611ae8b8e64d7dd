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
