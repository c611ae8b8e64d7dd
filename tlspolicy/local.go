package tlspolicy

import (
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	"github.com/postern/postern/internal/mailname"
)

// Mode is what an operator's policy entry (or tls.default) asks for.
type Mode uint8

// The zero Mode is ModeUnset, never ModeNone: a Mode that nobody set (a
// Local built without one, a Config whose Default was forgotten) must not
// quietly mean "no TLS". An unset mode asks for what verify asks for.
const (
	ModeUnset    Mode = iota // not set: treated as verify, never as none
	ModeNone                 // no TLS at all
	ModeMay                  // opportunistic
	ModeEncrypt              // TLS required, any certificate
	ModeVerify               // TLS required with a PKIX-valid certificate
	ModeDANE                 // DANE where published, else the default
	ModeDANEOnly             // deliver only over DANE
)

// modeNames are the names ParseMode reads and String prints, from ModeNone.
var modeNames = [...]string{"none", "may", "encrypt", "verify", "dane", "dane-only"}

func (m Mode) String() string {
	if m == ModeUnset || int(m) > len(modeNames) {
		return "unset"
	}
	return modeNames[m-ModeNone]
}

// ParseMode reads a mode's name; there is no name for ModeUnset.
func ParseMode(s string) (Mode, error) {
	for i, n := range modeNames {
		if strings.EqualFold(s, n) {
			return ModeNone + Mode(i), nil
		}
	}
	return ModeUnset, fmt.Errorf("%q: use none, may, encrypt, verify, dane or dane-only", s)
}

// weakens reports whether an Override entry with this mode may set a
// published policy aside: only none and may (never an unset mode).
func (m Mode) weakens() bool { return m == ModeNone || m == ModeMay }

// level is the TLS level a mode asks for by itself; ModeUnset and anything
// unknown ask for Verify.
func (m Mode) level() Level {
	switch m {
	case ModeNone:
		return None
	case ModeMay, ModeDANE:
		return May
	case ModeEncrypt:
		return Encrypt
	}
	return Verify
}

// Local is one entry of tls.policies.
type Local struct {
	Domain     string // exact, or ".suffix" for every subdomain
	Mode       Mode
	MinVersion uint16    // 0: the mode's default
	Names      []string  // extra certificate names accepted by verify
	Until      time.Time // zero: no end; after it the entry lapses by itself
	// Override lets none or may weaken a policy the domain publishes
	// (DANE, MTA-STS): for a partner with a broken setup.
	Override bool
}

// ParseTLSVersion reads "1.2" or "1.3".
func ParseTLSVersion(s string) (uint16, error) {
	switch s {
	case "", "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("%q: use 1.2 or 1.3", s)
}

// localFor finds the entry for domain: an exact match first, then the
// longest matching suffix. Lapsed entries are skipped, and said so.
func localFor(entries []Local, domain string, now time.Time) (entry *Local, lapsed *Local) {
	best := -1
	for i := range entries {
		e := &entries[i]
		var score int
		switch {
		case !mailname.Match(e.Domain, domain):
			continue
		case !strings.HasPrefix(e.Domain, "."):
			score = 1 << 16
		default:
			score = len(e.Domain)
		}
		if !e.Until.IsZero() && now.After(e.Until) {
			if lapsed == nil {
				lapsed = e
			}
			continue
		}
		if score > best {
			best, entry = score, e
		}
	}
	return entry, lapsed
}
