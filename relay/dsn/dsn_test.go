package dsn

import (
	"bufio"
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

var original = []byte("From: app@example.org\r\nTo: a@dest.test\r\nSubject: invoice\r\n\r\nsecret body\r\n")

type parsed struct {
	header  mail.Header
	parts   []string // content types
	human   string
	status  []textproto.MIMEHeader // per-message block, then per-recipient blocks
	payload string
}

// parse reads a report back the way a mail client would.
func parse(t *testing.T, raw []byte) parsed {
	t.Helper()
	if bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\n")) {
		t.Fatal("report has bare LF line endings")
	}
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("content type %q %v", mt, params)
	}
	p := parsed{header: msg.Header}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		ct := part.Header.Get("Content-Type")
		p.parts = append(p.parts, ct)
		body, _ := io.ReadAll(part)
		switch {
		case strings.HasPrefix(ct, "text/plain"):
			p.human = string(body)
		case strings.Contains(ct, "delivery-status"):
			tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(body)))
			for {
				h, err := tp.ReadMIMEHeader()
				if len(h) > 0 {
					p.status = append(p.status, h)
				}
				if err != nil {
					break
				}
			}
		default:
			p.payload = string(body)
		}
	}
	return p
}

func TestBounceStructure(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	n := Notice{
		ReportingMTA: "relay.test", From: "MAILER-DAEMON@relay.test", To: "app@example.org",
		EnvelopeID: "env42", Arrival: now.Add(-time.Hour), Date: now,
		Recipients: []Recipient{
			{Final: "a@dest.test", Original: "rfc822;orig@dest.test", Action: Failed, Status: "5.1.1",
				RemoteMTA: "mx.dest.test", Diagnostic: "550 5.1.1 no such user\r\nInjected: yes", LastAttempt: now},
			{Final: "b@dest.test", Action: Delayed, Status: "4.4.1", Diagnostic: "connection refused",
				WillRetryUntil: now.Add(96 * time.Hour)},
		},
	}
	p := parse(t, Build(n, original))
	if p.header.Get("Subject") != "Undelivered Mail Returned to Sender" || p.header.Get("Auto-Submitted") != "auto-replied" ||
		p.header.Get("To") != "<app@example.org>" || p.header.Get("Injected") != "" {
		t.Errorf("headers: %v", p.header)
	}
	if len(p.parts) != 3 || p.parts[1] != "message/delivery-status" || p.parts[2] != "message/rfc822" {
		t.Fatalf("parts %v", p.parts)
	}
	if len(p.status) != 3 {
		t.Fatalf("status blocks: %v", p.status)
	}
	msgBlock, r1, r2 := p.status[0], p.status[1], p.status[2]
	for field, want := range map[string]string{"Reporting-Mta": "dns; relay.test", "Original-Envelope-Id": "env42",
		"Arrival-Date": "Sat, 28 Nov 2026 11:00:00 +0000"} {
		if got := msgBlock.Get(field); got != want {
			t.Errorf("%s = %q, want %q", field, got, want)
		}
	}
	for field, want := range map[string]string{"Final-Recipient": "rfc822; a@dest.test", "Original-Recipient": "rfc822;orig@dest.test",
		"Action": "failed", "Status": "5.1.1", "Remote-Mta": "dns; mx.dest.test",
		"Diagnostic-Code": "smtp; 550 5.1.1 no such user  Injected: yes"} {
		if got := r1.Get(field); got != want {
			t.Errorf("recipient 1 %s = %q, want %q", field, got, want)
		}
	}
	if r2.Get("Action") != "delayed" || r2.Get("Will-Retry-Until") == "" || r2.Get("Diagnostic-Code") != "x-postern; connection refused" {
		t.Errorf("recipient 2: %v", r2)
	}
	if p.payload != string(original) {
		t.Errorf("returned message %q", p.payload)
	}
	if !strings.Contains(p.human, "could not be delivered to <a@dest.test>") {
		t.Errorf("explanation: %q", p.human)
	}
}

func TestHeadersOnly(t *testing.T) {
	n := Notice{ReportingMTA: "relay.test", From: "MAILER-DAEMON@relay.test", To: "app@example.org", Date: time.Now(),
		Recipients: []Recipient{{Final: "a@dest.test", Action: Failed, Status: "5.7.30"}}, HeadersOnly: true}
	p := parse(t, Build(n, original))
	if p.parts[2] != "text/rfc822-headers" || strings.Contains(p.payload, "secret body") || !strings.Contains(p.payload, "Subject: invoice") {
		t.Fatalf("headers-only part %q: %q", p.parts[2], p.payload)
	}
	n.HeadersOnly = false
	big := append(append([]byte{}, original...), bytes.Repeat([]byte("x"), MaxReturnedBytes)...)
	if p := parse(t, Build(n, big)); p.parts[2] != "text/rfc822-headers" {
		t.Fatalf("oversized original returned whole: %v", p.parts)
	}
}

func TestInternationalisedUsesGlobalTypes(t *testing.T) {
	n := Notice{ReportingMTA: "relay.test", From: "MAILER-DAEMON@relay.test", To: "app@example.org", Date: time.Now(),
		Recipients: []Recipient{{Final: "jörg@dest.test", Action: Failed, Status: "5.1.1"}}}
	p := parse(t, Build(n, original))
	if p.parts[1] != "message/global-delivery-status" || p.parts[2] != "message/global" ||
		p.status[1].Get("Final-Recipient") != "utf-8; jörg@dest.test" {
		t.Fatalf("parts %v status %v", p.parts, p.status)
	}
}

func TestWanted(t *testing.T) {
	cases := []struct {
		notify []string
		action Action
		want   bool
	}{
		{nil, Failed, true}, {nil, Delayed, true}, {nil, Delivered, false},
		{[]string{"NEVER"}, Failed, false},
		{[]string{"SUCCESS"}, Delivered, true}, {[]string{"SUCCESS"}, Failed, false},
		{[]string{"FAILURE", "DELAY"}, Delayed, true}, {[]string{"FAILURE"}, Delayed, false},
		{[]string{"SUCCESS"}, Relayed, true},
	}
	for _, c := range cases {
		if got := Wanted(c.notify, c.action); got != c.want {
			t.Errorf("Wanted(%v, %s) = %v", c.notify, c.action, got)
		}
	}
}

// A "relayed" report (RFC 3461 5.2.2) names the hop that took the message,
// says no later report will come, and carries the header section only.
func TestRelayedReport(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	n := Notice{ReportingMTA: "relay.test", From: "MAILER-DAEMON@relay.test", To: "app@example.org", EnvelopeID: "env9",
		Date: now, Recipients: []Recipient{RelayedTo("a@dest.test", "rfc822;a@dest.test", "mx.dest.test", now)}, HeadersOnly: true}
	p := parse(t, Build(n, original))
	if got := p.header.Get("Subject"); got != "Relayed Mail Delivery Report" {
		t.Errorf("subject %q", got)
	}
	if len(p.status) != 2 {
		t.Fatalf("status blocks: %v", p.status)
	}
	for field, want := range map[string]string{"Final-Recipient": "rfc822; a@dest.test", "Original-Recipient": "rfc822;a@dest.test",
		"Action": "relayed", "Status": "2.0.0", "Remote-Mta": "dns; mx.dest.test", "Diagnostic-Code": ""} {
		if got := p.status[1].Get(field); got != want {
			t.Errorf("%s = %q, want %q", field, got, want)
		}
	}
	if p.status[0].Get("Original-Envelope-Id") != "env9" {
		t.Errorf("ENVID not reported: %v", p.status[0])
	}
	if !strings.Contains(p.human, "relayed to mx.dest.test, which does not offer delivery status notifications") {
		t.Errorf("explanation: %q", p.human)
	}
	if p.parts[2] != "text/rfc822-headers" || strings.Contains(p.payload, "secret body") {
		t.Errorf("returned %s %q", p.parts[2], p.payload)
	}
}
