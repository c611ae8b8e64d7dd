package resolver

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/miekg/dns"
)

// The IANA root zone key-signing keys (KSK-2017 and KSK-2024), from
// https://data.iana.org/root-anchors/root-anchors.xml.
const ianaRootAnchors = `
. IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D
. IN DS 38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16
`

// RootAnchors returns the built-in IANA root trust anchors.
func RootAnchors() []dns.RR {
	rrs, err := parseAnchors(strings.NewReader(ianaRootAnchors), "built-in")
	if err != nil {
		panic(err) // the constant above is wrong
	}
	return rrs
}

// LoadAnchors reads DS or DNSKEY records in zone-file format from path;
// they replace the built-in root anchors (for private roots and for tests).
func LoadAnchors(path string) ([]dns.RR, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseAnchors(f, path)
}

func parseAnchors(r io.Reader, name string) ([]dns.RR, error) {
	zp := dns.NewZoneParser(r, ".", name)
	var out []dns.RR
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		switch rr.(type) {
		case *dns.DS, *dns.DNSKEY:
			out = append(out, rr)
		default:
			return nil, fmt.Errorf("%s: %s %s is neither DS nor DNSKEY", name, rr.Header().Name, dns.TypeToString[rr.Header().Rrtype])
		}
	}
	if err := zp.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no DS or DNSKEY records", name)
	}
	return out, nil
}
