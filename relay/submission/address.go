package submission

import (
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/internal/mailname"
)

func addressError(code int, enh smtp.EnhancedCode, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

// canonicalAddress checks a mailbox from MAIL FROM or RCPT TO and returns the
// form Postern stores and sends on. go-smtp hands over quoted local parts
// without their quotes ("a b"@x arrives as a b@x), so a local part that is not
// a dot-atom is quoted again (RFC 5321 4.1.2) rather than passed on broken.
// badCode is the enhanced code for a syntax error: 5.1.7 for a sender, 5.1.3
// for a recipient.
func canonicalAddress(addr string, smtputf8 bool, badCode smtp.EnhancedCode) (string, *smtp.SMTPError) {
	if len(addr) > 254 {
		return "", addressError(501, badCode, "Address too long")
	}
	for i := 0; i < len(addr); i++ {
		if addr[i] < 0x20 || addr[i] == 0x7f {
			return "", addressError(501, badCode, "Control characters are not allowed in addresses")
		}
	}
	if !utf8.ValidString(addr) {
		return "", addressError(501, badCode, "Address is not valid UTF-8")
	}
	if !smtputf8 && !mailname.IsASCII(addr) {
		// RFC 6531 3.5: non-ASCII addresses need SMTPUTF8 on MAIL FROM.
		return "", addressError(553, smtp.EnhancedCode{5, 6, 7}, "Non-ASCII address requires SMTPUTF8")
	}
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return "", addressError(501, badCode, "Address must be local-part@domain")
	}
	local, domain := addr[:at], addr[at+1:]
	if len(local) > 64 {
		return "", addressError(501, badCode, "Local part longer than 64 octets")
	}
	if !validDomain(domain) {
		return "", addressError(501, badCode, "Invalid domain in address")
	}
	if !isDotAtom(local) {
		local = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(local) + `"`
	}
	return local + "@" + domain, nil
}

func validDomain(d string) bool {
	if strings.HasPrefix(d, "[") {
		return strings.HasSuffix(d, "]") && !strings.ContainsAny(d[1:len(d)-1], "[] \\")
	}
	if len(d) > 253 || strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".") || strings.Contains(d, "..") {
		return false
	}
	for _, r := range d {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r >= 0x80) {
			return false
		}
	}
	return true
}

// isDotAtom reports whether s needs no quoting (RFC 5322 3.2.3).
func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for _, r := range s {
		if r >= 0x80 {
			continue // UTF-8 atext (RFC 6532)
		}
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("!#$%&'*+-/=?^_`{|}~.", r)) {
			return false
		}
	}
	return true
}
