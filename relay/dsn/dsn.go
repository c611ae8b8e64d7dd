// Package dsn builds delivery status notifications (RFC 3464, with RFC 6533
// for internationalised addresses): the bounce, delay and success reports
// Postern sends back to a message's sender.
package dsn

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"mime/quotedprintable"
	"strings"
	"time"

	"github.com/postern/postern/internal/mailname"
)

// Action is what happened to a recipient (RFC 3464 2.3.3).
type Action string

const (
	Failed    Action = "failed"
	Delayed   Action = "delayed"
	Delivered Action = "delivered"
	Relayed   Action = "relayed"
)

// Recipient is one per-recipient block of a report.
type Recipient struct {
	Final    string // the recipient address Postern tried
	Original string // the ORCPT parameter as submitted, "type;address"
	Action   Action
	Status   string // enhanced status code, "5.1.1"
	// RemoteMTA is the host that gave Diagnostic, when one did.
	RemoteMTA string
	// Diagnostic is the remote reply ("550 5.1.1 no such user"), or
	// Postern's own reason when no server was reached.
	Diagnostic     string
	LastAttempt    time.Time
	WillRetryUntil time.Time // for Delayed
}

// Notice is everything a report says.
type Notice struct {
	ReportingMTA string // Postern's host name
	From         string // header From, e.g. "MAILER-DAEMON@relay.example"
	To           string // the original envelope sender
	EnvelopeID   string // ENVID as submitted
	Arrival      time.Time
	Date         time.Time
	Recipients   []Recipient
	// HeadersOnly returns the original's header section rather than the
	// whole message (RET=HDRS, a message too large to return, or a
	// REQUIRETLS message whose body must not travel unprotected).
	HeadersOnly bool
	// OriginalLost says the original could not be read back (its stored
	// copy is gone): the report says so and returns none of it, leaving out
	// the optional third part (RFC 6522 3).
	OriginalLost bool
}

// MaxReturnedBytes bounds how much of an original message a report carries;
// larger originals are returned as headers only.
const MaxReturnedBytes = 1 << 20

// RelayedTo is the per-recipient block of a "relayed" report (RFC 3461
// 5.2.2): final (with its ORCPT, original) was accepted by remoteMTA, which
// does not offer the DSN extension, so it will send no success report and
// may not honour the other DSN parameters either. A relayed report is a
// success: status 2.0.0.
func RelayedTo(final, original, remoteMTA string, at time.Time) Recipient {
	return Recipient{Final: final, Original: original, Action: Relayed, Status: "2.0.0", RemoteMTA: remoteMTA, LastAttempt: at}
}

// Wanted reports whether a recipient's NOTIFY preferences (RFC 3461 4.1) ask
// for a report of action. Without NOTIFY, failures and delays are reported.
func Wanted(notify []string, action Action) bool {
	if len(notify) == 0 {
		return action == Failed || action == Delayed
	}
	want := map[Action]string{Failed: "FAILURE", Delayed: "DELAY", Delivered: "SUCCESS", Relayed: "SUCCESS"}[action]
	for _, n := range notify {
		switch strings.ToUpper(n) {
		case "NEVER":
			return false
		case want:
			return true
		}
	}
	return false
}

// Build writes the report as a complete message (headers and body), with
// original as the message it reports on.
func Build(n Notice, original []byte) []byte {
	global := !mailname.IsASCII(n.To) || anyNonASCII(n.Recipients)
	boundary := newBoundary()
	var b bytes.Buffer
	msgID := boundary[:24] + "@" + n.ReportingMTA
	header(&b, "From", "Mail Delivery System <"+n.From+">")
	header(&b, "To", "<"+n.To+">")
	header(&b, "Subject", subject(n.Recipients))
	header(&b, "Date", n.Date.Format(time.RFC1123Z))
	header(&b, "Message-ID", "<"+msgID+">")
	header(&b, "Auto-Submitted", "auto-replied") // RFC 3834: never answer this automatically
	header(&b, "MIME-Version", "1.0")
	header(&b, "Content-Type", `multipart/report; report-type=delivery-status; boundary="`+boundary+`"`)
	b.WriteString("\r\n")

	part(&b, boundary, "text/plain; charset=utf-8", "quoted-printable")
	qp := quotedprintable.NewWriter(&b)
	io.WriteString(qp, explanation(n))
	qp.Close()
	b.WriteString("\r\n")

	statusType := "message/delivery-status"
	if global {
		statusType = "message/global-delivery-status"
	}
	part(&b, boundary, statusType, "")
	writeStatus(&b, n)

	headersOnly := n.HeadersOnly || len(original) > MaxReturnedBytes
	switch {
	case n.OriginalLost:
	case headersOnly:
		part(&b, boundary, map[bool]string{false: "text/rfc822-headers", true: "message/global-headers"}[global], "")
		b.Write(headerSection(original))
	default:
		part(&b, boundary, map[bool]string{false: "message/rfc822", true: "message/global"}[global], "")
		b.Write(original)
	}
	// The CRLF before a boundary belongs to the delimiter (RFC 2046 5.1.1),
	// so the returned message keeps its own last line ending.
	fmt.Fprintf(&b, "\r\n--%s--\r\n", boundary)
	return b.Bytes()
}

func writeStatus(b *bytes.Buffer, n Notice) {
	header(b, "Reporting-MTA", "dns; "+n.ReportingMTA)
	if n.EnvelopeID != "" {
		header(b, "Original-Envelope-Id", n.EnvelopeID)
	}
	if !n.Arrival.IsZero() {
		header(b, "Arrival-Date", n.Arrival.Format(time.RFC1123Z))
	}
	for _, r := range n.Recipients {
		b.WriteString("\r\n")
		if r.Original != "" {
			header(b, "Original-Recipient", r.Original)
		}
		header(b, "Final-Recipient", addressType(r.Final)+"; "+r.Final)
		header(b, "Action", string(r.Action))
		header(b, "Status", r.Status)
		if r.RemoteMTA != "" {
			header(b, "Remote-MTA", "dns; "+r.RemoteMTA)
		}
		if r.Diagnostic != "" {
			kind := "smtp"
			if r.RemoteMTA == "" {
				kind = "x-postern"
			}
			header(b, "Diagnostic-Code", kind+"; "+r.Diagnostic)
		}
		if !r.LastAttempt.IsZero() {
			header(b, "Last-Attempt-Date", r.LastAttempt.Format(time.RFC1123Z))
		}
		if r.Action == Delayed && !r.WillRetryUntil.IsZero() {
			header(b, "Will-Retry-Until", r.WillRetryUntil.Format(time.RFC1123Z))
		}
	}
	b.WriteString("\r\n")
}

func subject(rcpts []Recipient) string {
	worst := Delivered
	for _, r := range rcpts {
		if r.Action == Failed {
			worst = Failed
		} else if r.Action == Delayed && worst != Failed {
			worst = Delayed
		}
	}
	switch worst {
	case Failed:
		return "Undelivered Mail Returned to Sender"
	case Delayed:
		return "Delayed Mail (still being retried)"
	}
	for _, r := range rcpts {
		if r.Action != Relayed {
			return "Successful Mail Delivery Report"
		}
	}
	return "Relayed Mail Delivery Report"
}

func explanation(n Notice) string {
	var b strings.Builder
	fmt.Fprintf(&b, "This is the mail system at %s.\r\n\r\n", n.ReportingMTA)
	for _, r := range n.Recipients {
		switch r.Action {
		case Failed:
			fmt.Fprintf(&b, "Your message could not be delivered to <%s>; no further attempts will be made.\r\n", r.Final)
		case Delayed:
			fmt.Fprintf(&b, "Your message to <%s> has not been delivered yet; it will be retried", r.Final)
			if !r.WillRetryUntil.IsZero() {
				fmt.Fprintf(&b, " until %s", r.WillRetryUntil.UTC().Format(time.RFC1123))
			}
			b.WriteString(". You need not send it again.\r\n")
		case Relayed:
			fmt.Fprintf(&b, "Your message to <%s> was relayed", r.Final)
			if r.RemoteMTA != "" {
				fmt.Fprintf(&b, " to %s", r.RemoteMTA)
			}
			b.WriteString(", which does not offer delivery status notifications: no further report\r\n" +
				"will come for this recipient, whether the message is delivered or not.\r\n")
		default:
			fmt.Fprintf(&b, "Your message to <%s> was %s.\r\n", r.Final, r.Action)
		}
		if r.Diagnostic != "" {
			who := n.ReportingMTA
			if r.RemoteMTA != "" {
				who = r.RemoteMTA
			}
			fmt.Fprintf(&b, "    %s said: %s\r\n", who, r.Diagnostic)
		}
		b.WriteString("\r\n")
	}
	if n.OriginalLost {
		b.WriteString("The content of your message could not be read back from this system's queue (its stored copy\r\n" +
			"was lost), so it is not returned with this report. Please check whether it needs to be sent again.\r\n\r\n")
	}
	return b.String()
}

// header writes one field, with any control characters in value (a remote
// server's reply is its own word) made harmless and the line kept short.
func header(b *bytes.Buffer, name, value string) {
	value = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, value)
	if max := 900 - len(name); len(value) > max {
		value = value[:max]
	}
	fmt.Fprintf(b, "%s: %s\r\n", name, value)
}

func part(b *bytes.Buffer, boundary, contentType, encoding string) {
	fmt.Fprintf(b, "--%s\r\nContent-Type: %s\r\n", boundary, contentType)
	if encoding != "" {
		fmt.Fprintf(b, "Content-Transfer-Encoding: %s\r\n", encoding)
	}
	b.WriteString("\r\n")
}

// headerSection returns the original's header section, through its blank line.
func headerSection(msg []byte) []byte {
	r := bufio.NewReader(bytes.NewReader(msg))
	var out bytes.Buffer
	for {
		line, err := r.ReadBytes('\n')
		out.Write(line)
		if err != nil || len(bytes.TrimRight(line, "\r\n")) == 0 {
			break
		}
	}
	if !bytes.HasSuffix(out.Bytes(), []byte("\r\n")) {
		out.WriteString("\r\n")
	}
	return out.Bytes()
}

func addressType(addr string) string {
	if mailname.IsASCII(addr) {
		return "rfc822"
	}
	return "utf-8" // RFC 6533 3
}

func anyNonASCII(rcpts []Recipient) bool {
	for _, r := range rcpts {
		if !mailname.IsASCII(r.Final) || !mailname.IsASCII(r.Original) {
			return true
		}
	}
	return false
}

func newBoundary() string {
	var b [16]byte
	rand.Read(b[:])
	return "postern-" + hex.EncodeToString(b[:])
}
