package tlspolicy

import (
	"crypto/tls"
	"testing"
)

func TestLevels(t *testing.T) {
	for _, n := range []string{"none", "may", "encrypt", "verify"} {
		l, err := ParseLevel(n)
		if err != nil || l.String() != n {
			t.Errorf("%s: %v %v", n, l, err)
		}
	}
	if _, err := ParseLevel("dane-only"); err == nil {
		t.Error("unknown level accepted")
	}
	if c, _ := (Decision{Level: Verify}).ClientConfig("mx.test"); c.VerifyConnection == nil || c.ServerName != "mx.test" || c.MinVersion != tls.VersionTLS12 {
		t.Errorf("verify config %+v", c)
	}
	if c, _ := (Decision{Level: Encrypt}).ClientConfig("mx.test"); !c.InsecureSkipVerify || c.MinVersion != tls.VersionTLS12 {
		t.Errorf("encrypt config %+v", c)
	}
	if !(Decision{Level: Encrypt}).Required() || (Decision{Level: May}).Required() {
		t.Error("Required")
	}
}

// TestParseLevelAndModeAlikeAboutCase: both read names in any case.
func TestParseLevelAndModeAlikeAboutCase(t *testing.T) {
	if l, err := ParseLevel("Verify"); err != nil || l != Verify {
		t.Errorf("ParseLevel(Verify) = %v, %v", l, err)
	}
	if m, err := ParseMode("Verify"); err != nil || m != ModeVerify {
		t.Errorf("ParseMode(Verify) = %v, %v", m, err)
	}
}
