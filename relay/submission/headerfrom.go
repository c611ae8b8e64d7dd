package submission

import (
	"fmt"
	"net/mail"
	"strings"

	"github.com/emersion/go-smtp"
	"golang.org/x/net/idna"

	"github.com/postern/postern/relay/auth"
)

// The header From is what a reader sees and what DMARC aligns on (RFC 7489
// 3.1), and it picks the DKIM keys: binding only the envelope sender to
// the user would let a user allowed *@example.org sign as anyone Postern
// holds keys for. So every address of every From and Sender field must be
// one the user may send as. Parsing fails closed: a field Postern cannot
// read is a field a receiver may read differently (the parser-differential
// spoofs of DMARC), so it is refused, not skipped.

// senderField is one From or Sender header field as the message wrote it.
type senderField struct {
	name  string // "from" or "sender"
	value string // after the colon, folded lines included
	open  bool   // while readHeader may still append folded lines
}

// addresses returns the field's mailboxes. Unfolding removes each CRLF
// that precedes white space (RFC 5322 2.2.3); group syntax contributes its
// members (RFC 6854).
func (f senderField) addresses() ([]string, error) {
	value := strings.TrimSpace(strings.NewReplacer("\r\n", "", "\n", "", "\r", "").Replace(f.value))
	list, err := mail.ParseAddressList(value)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, a := range list {
		out = append(out, a.Address)
	}
	return out, nil
}

func headerRefusal(text string, args ...any) *smtp.SMTPError {
	return reply(550, "5.7.1", "Message refused: "+fmt.Sprintf(text, args...))
}

// checkHeaderSenders says why the message's From and Sender fields are not
// the user's, or nil. Users without patterns may send as anyone; a message
// without a From field names no one (the receiver sees no author to trust).
func checkHeaderSenders(u *auth.User, fields []senderField) *smtp.SMTPError {
	if len(u.AllowFrom) == 0 {
		return nil
	}
	count := map[string]int{}
	for _, f := range fields {
		// RFC 5322 3.6 allows one From and at most one Sender; with two,
		// receivers disagree on which one they show and check.
		if count[f.name]++; count[f.name] > 1 {
			return headerRefusal("more than one %s header field (RFC 5322 3.6 allows one)", fieldTitle(f.name))
		}
		addrs, err := f.addresses()
		if err != nil {
			return headerRefusal("the %s header field cannot be parsed, so it cannot be checked against the addresses you may send as", fieldTitle(f.name))
		}
		if len(addrs) == 0 {
			return headerRefusal("the %s header field names no address", fieldTitle(f.name))
		}
		for _, a := range addrs {
			if !u.MaySend(a) {
				return headerRefusal("%s address %s is not one this user may send as", fieldTitle(f.name), printable(a))
			}
		}
	}
	return nil
}

// fromDomain is the one domain of the message's From addresses, in its
// ASCII form (what DKIM keys are configured under), when every From
// address is one the user may send as; "" otherwise. It decides which
// DKIM keys sign, so it re-checks what checkHeaderSenders checked: a user
// exempt from that check, or a setting that turns it off, must still never
// get another domain's signature.
func fromDomain(u *auth.User, fields []senderField) string {
	domain := ""
	for _, f := range fields {
		if f.name != "from" {
			continue
		}
		addrs, err := f.addresses()
		if err != nil || len(addrs) == 0 {
			return ""
		}
		for _, a := range addrs {
			d := asciiDomain(a)
			if d == "" || !u.MaySend(a) || (domain != "" && d != domain) {
				return ""
			}
			domain = d
		}
	}
	return domain
}

// asciiDomain is addr's domain in lower-case A-label form, or "" when it
// has none or it is not a valid IDNA name.
func asciiDomain(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 || at == len(addr)-1 {
		return ""
	}
	d, err := idna.Lookup.ToASCII(addr[at+1:])
	if err != nil {
		return ""
	}
	return strings.ToLower(d)
}

func fieldTitle(name string) string {
	if name == "sender" {
		return "Sender"
	}
	return "From"
}

// printable keeps a client-supplied address fit for a reply line.
func printable(s string) string {
	if len(s) > 254 {
		return "(overlong address)"
	}
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			return "(address with control characters)"
		}
	}
	return s
}
