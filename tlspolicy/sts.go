package tlspolicy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/internal/mailname"
)

// STSPolicy is a parsed MTA-STS policy (RFC 8461 3.2).
type STSPolicy struct {
	Mode   string // "enforce", "testing" or "none"
	MX     []string
	MaxAge time.Duration
}

// maxSTSAge caps how long a policy is trusted (RFC 8461 3.2: max_age is at
// most 31557600 seconds, one year).
const maxSTSAge = 31557600 * time.Second

// ParseSTSPolicy parses a policy body strictly: the version must be STSv1,
// mode and max_age must appear exactly once and be valid, mx patterns must
// be host names (a "*." prefix allowed) and present unless mode is none.
// Unknown keys are ignored, as the RFC asks.
func ParseSTSPolicy(body string) (STSPolicy, error) {
	var p STSPolicy
	seen := map[string]bool{}
	for i, line := range strings.Split(strings.ReplaceAll(body, "\r\n", "\n"), "\n") {
		line = strings.TrimRight(line, " \t")
		if line == "" {
			continue
		}
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			return p, fmt.Errorf("line %d: no colon", i+1)
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if key != "mx" && seen[key] {
			return p, fmt.Errorf("line %d: %s given twice", i+1, key)
		}
		seen[key] = true
		switch key {
		case "version":
			if value != "STSv1" {
				return p, fmt.Errorf("version %q is not STSv1", value)
			}
		case "mode":
			if value != "enforce" && value != "testing" && value != "none" {
				return p, fmt.Errorf("mode %q is not enforce, testing or none", value)
			}
			p.Mode = value
		case "max_age":
			n, err := strconv.ParseUint(value, 10, 32)
			if err != nil || len(value) > 10 || n > uint64(maxSTSAge/time.Second) {
				return p, fmt.Errorf("max_age %q is not a number of seconds up to 31557600", value)
			}
			p.MaxAge = time.Duration(n) * time.Second
		case "mx":
			pattern := mailname.Normalize(value)
			if !validHostName(strings.TrimPrefix(pattern, "*.")) {
				return p, fmt.Errorf("mx %q is not a host name pattern", value)
			}
			p.MX = append(p.MX, pattern)
		}
	}
	switch {
	case !seen["version"]:
		return p, errors.New("no version")
	case p.Mode == "":
		return p, errors.New("no mode")
	case !seen["max_age"]:
		return p, errors.New("no max_age")
	case len(p.MX) == 0 && p.Mode != "none":
		return p, errors.New("no mx")
	}
	return p, nil
}

// validHostName accepts letters, digits, hyphens and underscores in two or
// more non-empty labels of at most 63 octets.
func validHostName(host string) bool {
	labels := strings.Split(host, ".")
	if len(labels) < 2 || len(host) > 253 {
		return false
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || strings.IndexFunc(l, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_')
		}) >= 0 {
			return false
		}
	}
	return true
}

// Matches reports whether host is one of the policy's MX patterns; a
// wildcard stands for exactly one leftmost label (RFC 8461 4.1).
func (p STSPolicy) Matches(host string) bool {
	host = mailname.Normalize(host)
	for _, pattern := range p.MX {
		if rest, ok := strings.CutPrefix(pattern, "*."); ok {
			if _, after, ok := strings.Cut(host, "."); ok && after == rest {
				return true
			}
		} else if host == pattern {
			return true
		}
	}
	return false
}

// Strings renders the policy for TLS reports (RFC 8460 4.3 policy-string).
func (p STSPolicy) Strings() []string {
	out := []string{"version: STSv1", "mode: " + p.Mode}
	for _, mx := range p.MX {
		out = append(out, "mx: "+mx)
	}
	return append(out, fmt.Sprintf("max_age: %d", int64(p.MaxAge/time.Second)))
}

// ParseSTSRecord reads the id of an "_mta-sts" TXT record (RFC 8461 3.1):
// "v=STSv1; id=...;" with v first and an id of 1 to 32 letters and digits.
func ParseSTSRecord(txt string) (string, error) {
	fields := strings.Split(txt, ";")
	if strings.TrimSpace(fields[0]) != "v=STSv1" {
		return "", errors.New("does not begin with v=STSv1")
	}
	id := ""
	for _, f := range fields[1:] {
		f = strings.Trim(f, " \t")
		if f == "" {
			continue
		}
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return "", fmt.Errorf("field %q has no value", f)
		}
		if k == "id" {
			if id != "" {
				return "", errors.New("id given twice")
			}
			if len(v) < 1 || len(v) > 32 || strings.IndexFunc(v, func(r rune) bool {
				return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
			}) >= 0 {
				return "", fmt.Errorf("id %q is not 1 to 32 letters and digits", v)
			}
			id = v
		}
	}
	if id == "" {
		return "", errors.New("no id")
	}
	return id, nil
}

// stsID picks the policy id from a domain's TXT records: records that do
// not begin with v=STSv1 are ignored, and anything but exactly one valid
// remaining record means no policy.
func stsID(txts []string) (string, error) {
	var candidates []string
	for _, t := range txts {
		if strings.HasPrefix(t, "v=STSv1") {
			candidates = append(candidates, t)
		}
	}
	switch len(candidates) {
	case 0:
		return "", nil
	case 1:
		return ParseSTSRecord(candidates[0])
	}
	return "", fmt.Errorf("%d v=STSv1 records", len(candidates))
}
