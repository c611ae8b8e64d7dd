package submission

import (
	"encoding/binary"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/quota"
)

// TestSendingLimitsHoldAcrossSessions (review of issue 19): the limits were
// checked at MAIL and RCPT against what was already queued, and counted
// only once a message was queued, so every session of a credential could
// pass its checks before any counted. A leaked password used from many
// connections at once (50 per address, 1000 in all by default, each with
// up to max_recipients) sent many times its hourly limit. Here 8 sessions
// against 2 messages and 5 recipients an hour.
func TestSendingLimitsHoldAcrossSessions(t *testing.T) {
	h := newHarness(t, func(c *Config, _ *auth.Limits) {
		c.SendingLimits = quota.Limits{MessagesPerHour: 2, RecipientsPerHour: 5}
	})
	var sessions []*raw
	for i := 0; i < 8; i++ {
		sessions = append(sessions, h.loggedIn(testUser))
	}
	rcpts := []string{"a", "b", "c", "d", "e"}
	for _, r := range sessions {
		if r.cmd("MAIL FROM:<app@example.org>")[:3] != "250" {
			continue
		}
		for _, to := range rcpts {
			if r.cmd("RCPT TO:<" + to + "@dest.test>")[:3] != "250" {
				break
			}
		}
	}
	for _, r := range sessions {
		if got := r.cmd("DATA"); got[:3] == "354" {
			r.conn.Write([]byte(msg))
			r.reply()
		}
	}
	messages, recipients := h.quota.Used(testUser)
	if messages > 2 || recipients > 5 {
		t.Errorf("one credential queued %d messages to %d recipients, against limits of 2 and 5 an hour", messages, recipients)
	}
}

// TestSendingLimitsReleaseAbandoned: what a transaction in flight holds of
// a credential's limits is given back when it ends without a message
// (RSET, a refused DATA, a dropped connection), so holding never locks a
// credential out.
func TestSendingLimitsReleaseAbandoned(t *testing.T) {
	h := newHarness(t, func(c *Config, _ *auth.Limits) {
		c.SendingLimits = quota.Limits{MessagesPerHour: 2, RecipientsPerHour: 10}
	})
	a, b, c := h.inTransaction(testUser), h.inTransaction(testUser), h.loggedIn(testUser)
	c.expect("MAIL FROM:<app@example.org>", "450 4.7.1 Message limit")
	a.expect("RSET", "250")
	c.expect("MAIL FROM:<app@example.org>", "250")
	c.expect("RSET", "250")
	b.conn.Close()
	a.expect("MAIL FROM:<app@example.org>", "250")
	c.expect("MAIL FROM:<app@example.org>", "250") // b's hold went with its connection
	a.expect("RCPT TO:<x@dest.test>", "250")
	if got := a.sendData("From: app@example.org\r\n\r\nhi\r\n.\r\n"); got[:3] != "250" {
		t.Fatalf("DATA: %s", got)
	}
	if m, r := h.quota.Used(testUser); m != 1 || r != 1 {
		t.Errorf("used %d messages, %d recipients; want 1 and 1", m, r)
	}
	c.expect("RSET", "250")
	c.expect("MAIL FROM:<app@example.org>", "250")
}

// proxyV2Unix is a version 2 PROXY header for a connection that reached
// the balancer over a UNIX socket (AF_UNIX, STREAM): 108 bytes of source
// path, 108 of destination, no port.
func proxyV2Unix(src string) []byte {
	b := append([]byte(nil), v2Signature...)
	b = append(b, 0x21, 0x31, 0, 216) // version 2, PROXY; AF_UNIX, STREAM; length 216
	path := make([]byte, 216)
	copy(path, src)
	copy(path[108:], "/run/haproxy/submission.sock")
	return append(b, path...)
}

// TestProxyProtocolUnixSourceKeepsTheBalancer (review of issue 19): a v2
// header for a client of the balancer's UNIX socket names a path, not an
// address. The path became the session's "client address": unchecked bytes
// in the Received header and the log, one throttle and one per-address
// limit for every such client, and an address that no operator can
// match. It carries no client address, as LOCAL does not: the balancer's
// own address stays, as for LOCAL and v1 UNKNOWN.
func TestProxyProtocolUnixSourceKeepsTheBalancer(t *testing.T) {
	h := newHarness(t, withProxyFrom("127.0.0.0/8"))
	r := dialProxied(t, h.starttls, proxyV2Unix("x] by evil\r\nX-Injected: yes"), false)
	r.expect("", "220")
	r.expect("EHLO client.test", "250")
	r.startTLS()
	r.expect("EHLO client.test", "250")
	r.expect("AUTH PLAIN "+plainToken(testUser, testPassword), "235")
	r.expect("MAIL FROM:<app@example.org>", "250")
	r.expect("RCPT TO:<a@dest.test>", "250")
	r.sendData("From: app@example.org\r\n\r\nhi\r\n.\r\n")
	m, body := h.only()
	if m.ClientIP != "127.0.0.1" {
		t.Errorf("client address %q, want the balancer's 127.0.0.1", m.ClientIP)
	}
	if head, _, _ := strings.Cut(string(body), "\r\n\r\n"); strings.Contains(head, "X-Injected") {
		t.Errorf("the UNIX path went into the header:\n%s", head)
	}
}

// TestSuspensionStopsAMessageInData (review of issue 19): "postern user
// suspend" is for a credential that is flooding now, and a flood's
// messages spend their time in DATA. A suspension that arrives while the
// body streams must stop that message too: it was checked only when DATA
// began, so the message already sending was queued and delivered.
func TestSuspensionStopsAMessageInData(t *testing.T) {
	h := newHarness(t)
	r := h.inTransaction(testUser)
	r.expect("DATA", "354")
	io.WriteString(r.conn, "From: app@example.org\r\nSubject: x\r\n\r\nfirst half\r\n")
	if err := h.quota.Suspend(testUser, true); err != nil {
		t.Fatal(err)
	}
	io.WriteString(r.conn, "second half\r\n.\r\n")
	if got := r.reply(); !strings.HasPrefix(got, "450 4.7.1 Sending is suspended") || h.count() != 0 {
		t.Errorf("suspended during DATA: %q, %d queued", got, h.count())
	}
}

// TestProxyProtocolLargeTLVsAndSplitHeader (review of issue 19; held): a
// v2 header with more TLVs than the 256-byte read buffer (HAProxy's
// unique-id, authority, SSL TLVs) and a v2 header arriving in pieces
// across TCP segments are read whole, and the client's address is the
// header's. A v1 header in pieces is refused (go-proxyproto reads v1 a
// byte at a time and gives up when the first read did not hold the whole
// line, as the PROXY protocol spec 2.1 allows: "the sender must always
// ensure that the header is sent at once"): closed, never read as
// commands.
func TestProxyProtocolLargeTLVsAndSplitHeader(t *testing.T) {
	h := newHarness(t, withProxyFrom("127.0.0.0/8"))
	v2 := proxyV2(netip.MustParseAddrPort("198.51.100.9:40100"))
	tlv := append([]byte{0xE0, 0x02, 0x58}, make([]byte, 600)...) // a custom TLV of 600 bytes
	binary.BigEndian.PutUint16(v2[14:16], binary.BigEndian.Uint16(v2[14:16])+uint16(len(tlv)))
	v2 = append(v2, tlv...)
	r := dialProxied(t, h.starttls, v2, false)
	r.expect("", "220")
	r.expect("QUIT", "221")

	split := func(header []byte) *raw {
		r := dialRaw(t, h.starttls)
		for _, part := range [][]byte{header[:3], header[3:17], header[17:]} {
			r.conn.Write(part)
			time.Sleep(5 * time.Millisecond) // separate segments; nothing waits on this
		}
		return r
	}
	r = split(proxyV1("203.0.113.43", 40101))
	if got := r.reply(); !strings.HasPrefix(got, "EOF") {
		t.Errorf("v1 header in pieces: %q, want the connection closed", got)
	}
	r = split(proxyV2(netip.MustParseAddrPort("203.0.113.44:40102")))
	r.expect("", "220")
	r.expect("EHLO client.test", "250")
	r.startTLS()
	r.expect("EHLO client.test", "250")
	r.expect("AUTH PLAIN "+plainToken(testUser, testPassword), "235")
	r.expect("MAIL FROM:<app@example.org>", "250")
	r.expect("RCPT TO:<a@dest.test>", "250")
	r.sendData("From: app@example.org\r\n\r\nhi\r\n.\r\n")
	if m, _ := h.only(); m.ClientIP != "203.0.113.44" {
		t.Errorf("client address %q after a split header", m.ClientIP)
	}
}
