package submission

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

// FuzzCanonicalAddress: whatever the client sends in MAIL or RCPT, an
// accepted address has exactly one unquoted '@' before the domain, no
// control characters (no header or command injection), and is stable.
func FuzzCanonicalAddress(f *testing.F) {
	for _, s := range []string{"a@b.test", `a b@x.test`, `"q"@x`, "jörg@dest.test", "a@[127.0.0.1]", "@x", "a@", "a\r\nb@x", `a"b@x`, `a\b@x`} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, addr string, utf8 bool) {
		out, serr := canonicalAddress(addr, utf8, smtp.EnhancedCode{5, 1, 3})
		if serr != nil {
			if serr.Code < 500 || serr.Code > 559 {
				t.Fatalf("refusal with code %d", serr.Code)
			}
			return
		}
		if strings.ContainsAny(out, "\r\n\x00") {
			t.Fatalf("control characters survive: %q", out)
		}
		again, serr := canonicalAddress(out, utf8, smtp.EnhancedCode{5, 1, 3})
		if serr != nil && !strings.HasPrefix(out, `"`) {
			t.Fatalf("canonical form %q refused: %v", out, serr)
		}
		if serr == nil && !strings.HasPrefix(out, `"`) && again != out {
			t.Fatalf("not stable: %q -> %q", out, again)
		}
	})
}

// FuzzContent: the content path either refuses a message or stores it with
// every line ending in CRLF and the submitted bytes intact.
func FuzzContent(f *testing.F) {
	for _, s := range []string{"Subject: x\r\n\r\nbody\r\n", "a\nb", "a\rb\r\n", "no end", "\r\n", "", "H: v\r\n continued\r\n\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		g := &crlfGuard{r: bytes.NewReader(in)}
		br := bufio.NewReaderSize(g, 64<<10)
		header, _, err := readHeader(br)
		if err != nil {
			return
		}
		rest, err := io.ReadAll(br)
		if err != nil {
			return
		}
		out := append(header, rest...)
		if !bytes.HasPrefix(out, in) {
			t.Fatalf("content changed: %q -> %q", in, out)
		}
		for i, c := range out {
			if c == '\n' && (i == 0 || out[i-1] != '\r') || c == '\r' && (i+1 >= len(out) || out[i+1] != '\n') {
				t.Fatalf("bare CR or LF passed at %d: %q", i, out)
			}
		}
	})
}
