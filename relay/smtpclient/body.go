package smtpclient

import (
	"bytes"
	"strconv"
	"strings"
)

// canon puts a message in SMTP's canonical form as it streams out: a bare
// LF or a bare CR becomes CRLF (RFC 5321 2.3.8: CR and LF only occur
// together), and, for DATA, a line that starts with "." gets a second one
// (RFC 5321 4.5.2). A bare CR passed on would let a next hop that ends a
// line there read "\r.\r" as the end of data, and what follows as commands
// (SMTP smuggling); submission refuses one, but a message may reach the
// queue by other ways (an import).
type canon struct {
	stuff bool // dot-stuffing, for DATA
	bol   bool // at the beginning of a line
	cr    bool // a CR was written, and its LF is still to come
}

// append adds p, canonical, to dst.
func (k *canon) append(dst, p []byte) []byte {
	for len(p) > 0 {
		if k.cr {
			// The CR ends a line whatever follows it: with its own LF, or
			// with one added.
			dst = append(dst, '\n')
			k.bol, k.cr = true, false
			if p[0] == '\n' {
				p = p[1:]
				continue
			}
		}
		if k.bol && k.stuff && p[0] == '.' {
			dst = append(dst, '.')
		}
		k.bol = false
		i := bytes.IndexByte(p, '\n')
		end := i
		if i < 0 {
			end = len(p)
		}
		if j := bytes.IndexByte(p[:end], '\r'); j >= 0 && j != i-1 {
			// A CR not right before the LF (or with none after it here).
			dst = append(dst, p[:j+1]...)
			k.cr = true
			p = p[j+1:]
			continue
		}
		if i < 0 {
			return append(dst, p...)
		}
		dst = append(dst, p[:i]...)
		if i == 0 || p[i-1] != '\r' {
			dst = append(dst, '\r')
		}
		dst = append(dst, '\n')
		k.bol = true
		p = p[i+1:]
	}
	return dst
}

// end finishes the message: its last line gets a line break if it has
// none (a CR at the very end gets its LF).
func (k *canon) end(dst []byte) []byte {
	switch {
	case k.bol:
	case k.cr:
		dst = append(dst, '\n')
	default:
		dst = append(dst, '\r', '\n')
	}
	k.bol, k.cr = true, false
	return dst
}

// xtext encodes s as RFC 3461 4 says: "+" and "=", controls, space and
// bytes outside US-ASCII become "+" and two upper-case hex digits.
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= '!' && c <= '~' && c != '+' && c != '=' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('+')
		b.WriteString(strings.ToUpper(hex2(c)))
	}
	return b.String()
}

func hex2(c byte) string {
	const digits = "0123456789ABCDEF"
	return string([]byte{digits[c>>4], digits[c&15]})
}

// utf8AddrXtext encodes an address of type utf-8 for a server without
// SMTPUTF8 (RFC 6533 3: utf-8-addr-xtext): what QCHAR excludes ("+", "=",
// "\", controls, space, non-ASCII) becomes \x{HEX} of its code point.
func utf8AddrXtext(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r >= '!' && r <= '~' && r != '+' && r != '=' && r != '\\' {
			b.WriteRune(r)
			continue
		}
		b.WriteString(`\x{` + strings.ToUpper(strconv.FormatInt(int64(r), 16)) + "}")
	}
	return b.String()
}

// utf8AddrUnitext is utf-8-addr-unitext (RFC 6533 3), for a server that
// offers SMTPUTF8: non-ASCII goes as UTF-8, the rest as in utf8AddrXtext.
func utf8AddrUnitext(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r > 0x7f || (r >= '!' && r <= '~' && r != '+' && r != '=' && r != '\\') {
			b.WriteRune(r)
			continue
		}
		b.WriteString(`\x{` + strings.ToUpper(strconv.FormatInt(int64(r), 16)) + "}")
	}
	return b.String()
}
