package delivery

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
	"github.com/postern/postern/relay/smtptest"
)

// rawWorld is a world whose mail (notices included) goes to m.
func rawWorld(t *testing.T, m *rawMX) *world {
	t.Helper()
	w := newWorld(t, smtptest.Start(t, nil))
	w.engine.cfg.Port = m.serve(t)
	return w
}

func (w *world) enqueue(env queue.Envelope, body string) string {
	w.t.Helper()
	id, err := w.q.Enqueue("", env, strings.NewReader(body))
	if err != nil {
		w.t.Fatal(err)
	}
	return id
}

// final is the audit record of rcpt's final outcome.
func (w *world) final(rcpt string) audit.Record {
	w.t.Helper()
	records, err := audit.Query(w.q, audit.Filter{})
	if err != nil {
		w.t.Fatal(err)
	}
	for _, r := range records {
		if r.Recipient == rcpt {
			return r
		}
	}
	w.t.Fatalf("no outcome recorded for %s", rcpt)
	return audit.Record{}
}

func rcpts(format string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf(format, i)
	}
	return out
}

func noViolations(t *testing.T, m *rawMX) {
	t.Helper()
	if _, _, v, _ := m.snapshot(); len(v) > 0 {
		t.Fatalf("the client broke the server's rules:\n%s", strings.Join(v, "\n"))
	}
}

// TestPipelinedTransactionIsOneFlight: where the server offers PIPELINING
// (RFC 2920), MAIL, every RCPT and DATA (or the BDAT with the message)
// arrive together, without the client waiting for a reply in between; on
// a reused session the RSET leads the next group. go-smtp's client sent
// one command per round trip: the server, holding its replies as a
// pipelining server may, saw it wait after MAIL.
func TestPipelinedTransactionIsOneFlight(t *testing.T) {
	for _, chunking := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunking=%v", chunking), func(t *testing.T) {
			m := &rawMX{pipelining: true, chunking: chunking}
			w := rawWorld(t, m)
			for i := 0; i < 2; i++ {
				w.submit(sender, "a@dest.test", "b@dest.test", "c@dest.test")
				w.run()
			}
			noViolations(t, m)
			msgs, groups, _, conns := m.snapshot()
			if len(msgs) != 2 || conns != 1 {
				t.Fatalf("%d messages over %d connections, want 2 over 1", len(msgs), conns)
			}
			last := "DATA"
			if chunking {
				last = "BDAT"
			}
			want := []string{"MAIL RCPT RCPT RCPT " + last, "RSET MAIL RCPT RCPT RCPT " + last}
			var got []string
			for _, g := range groups {
				if strings.Contains(g, "MAIL") {
					got = append(got, g)
				}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("command groups %q, want %q", got, want)
			}
		})
	}
}

// TestNoPipeliningOneCommandPerRoundTrip: a server that does not offer
// PIPELINING gets each command only after it answered the one before.
func TestNoPipeliningOneCommandPerRoundTrip(t *testing.T) {
	for _, chunking := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunking=%v", chunking), func(t *testing.T) {
			m := &rawMX{chunking: chunking, rcptReply: func(a string) string {
				if strings.HasPrefix(a, "no") {
					return "550 5.1.1 no such user"
				}
				return ""
			}}
			w := rawWorld(t, m)
			for i := 0; i < 2; i++ {
				w.submit(sender, "a@dest.test", "no@dest.test", "b@dest.test")
				w.run()
			}
			noViolations(t, m)
			if d := m.delivered(); len(d) != 2 || !slices.Equal(d[1].Rcpts, []string{"a@dest.test", "b@dest.test"}) {
				t.Fatalf("delivered %+v", d)
			}
		})
	}
}

// TestPerRecipientRepliesPipelined: the replies to pipelined RCPTs are
// each recipient's own, in order: delivered, bounced with its 550, deferred
// with its 450, and a 452 that is about the mailbox (4.2.2), not the
// number of recipients, deferred too.
func TestPerRecipientRepliesPipelined(t *testing.T) {
	for _, chunking := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunking=%v", chunking), func(t *testing.T) {
			replies := map[string]string{"b@dest.test": "550 5.1.1 no such user b", "c@dest.test": "450 4.2.1 try c later",
				"d@dest.test": "452 4.2.2 mailbox of d full"}
			m := &rawMX{pipelining: true, chunking: chunking, rcptReply: func(a string) string { return replies[a] }}
			w := rawWorld(t, m)
			id := w.submit(sender, "a@dest.test", "b@dest.test", "c@dest.test", "d@dest.test", "e@dest.test")
			w.run()
			noViolations(t, m)
			if d := m.delivered(); len(d) != 1 || !slices.Equal(d[0].Rcpts, []string{"a@dest.test", "e@dest.test"}) {
				t.Fatalf("delivered %+v", d)
			}
			want := []struct {
				state queue.State
				reply string
			}{
				{queue.Delivered, "250 2.0.0 accepted"}, {queue.Failed, "550 5.1.1 no such user b"},
				{queue.Pending, "450 4.2.1 try c later"}, {queue.Pending, "452 4.2.2 mailbox of d full"}, {queue.Delivered, "250 2.0.0 accepted"},
			}
			for i, r := range w.state(id).Recipients {
				if r.State != want[i].state || r.LastReply != want[i].reply {
					t.Errorf("%s: %v %q, want %v %q", r.Addr, r.State, r.LastReply, want[i].state, want[i].reply)
				}
			}
		})
	}
}

// TestAllRecipientsRefusedKeepsSession: when every RCPT of a pipelined
// transaction is refused, the DATA or BDAT sent with them is refused too
// (or, from a server that takes DATA anyway, ended at once with a lone
// dot, RFC 2920 3.1), nothing counts as delivered, and the session stays
// in step for the next message.
func TestAllRecipientsRefusedKeepsSession(t *testing.T) {
	cases := map[string]*rawMX{
		"pipelined DATA":             {pipelining: true},
		"pipelined DATA, 354 anyway": {pipelining: true, data354Anyway: true},
		"pipelined BDAT":             {pipelining: true, chunking: true},
		"without pipelining, BDAT":   {chunking: true},
		"without pipelining, DATA":   {},
	}
	for name, m := range cases {
		t.Run(name, func(t *testing.T) {
			m.rcptReply = func(a string) string {
				if strings.HasPrefix(a, "gone") {
					return "550 5.1.1 " + a + " is gone"
				}
				return ""
			}
			w := rawWorld(t, m)
			refused := w.submit(sender, "gone1@dest.test", "gone2@dest.test")
			w.run()
			ok := w.submit(sender, "here@dest.test")
			w.run()
			noViolations(t, m)
			if d := m.delivered(); len(d) != 1 || !slices.Equal(d[0].Rcpts, []string{"here@dest.test"}) || string(d[0].Data) != body {
				t.Fatalf("delivered %+v", d)
			}
			for i := 1; i <= 2; i++ {
				r := w.final(fmt.Sprintf("gone%d@dest.test", i))
				if r.QueueID != refused || r.Result != audit.Bounced || r.Reply != fmt.Sprintf("550 5.1.1 gone%d@dest.test is gone", i) {
					t.Fatalf("%+v", r)
				}
			}
			if r := w.final("here@dest.test"); r.QueueID != ok || r.Result != audit.Delivered {
				t.Fatalf("%+v", r)
			}
			if _, _, _, conns := m.snapshot(); conns != 1 {
				t.Fatalf("%d connections, want the session kept", conns)
			}
		})
	}
}

// TestRecipientsSplitIntoTransactionsOf100: RFC 5321 4.5.3.1.8 has a
// server take 100 recipients per transaction; 250 go out as 100, 100 and
// 50 on one session, and each recipient's outcome is its own.
func TestRecipientsSplitIntoTransactionsOf100(t *testing.T) {
	for _, pipelining := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipelining=%v", pipelining), func(t *testing.T) { testSplitInto100s(t, pipelining) })
	}
}

func testSplitInto100s(t *testing.T, pipelining bool) {
	m := &rawMX{pipelining: pipelining, chunking: true, rcptReply: func(a string) string {
		if a == "r007@dest.test" || a == "r150@dest.test" {
			return "550 5.1.1 unknown " + a
		}
		return ""
	}}
	w := rawWorld(t, m)
	all := rcpts("r%03d@dest.test", 250)
	id := w.submit(sender, all...)
	w.run()
	noViolations(t, m)
	d := m.delivered()
	var sizes []int
	var got []string
	for _, msg := range d {
		sizes = append(sizes, len(msg.Rcpts))
		got = append(got, msg.Rcpts...)
	}
	want := slices.DeleteFunc(slices.Clone(all), func(a string) bool { return a == "r007@dest.test" || a == "r150@dest.test" })
	if !slices.Equal(sizes, []int{99, 99, 50}) || !slices.Equal(got, want) {
		t.Fatalf("transactions of %v recipients", sizes)
	}
	if _, _, _, conns := m.snapshot(); conns != 1 {
		t.Fatalf("%d connections", conns)
	}
	for i, a := range all {
		r := w.final(a)
		wantResult, wantReply := audit.Delivered, "250 2.0.0 accepted"
		if i == 7 || i == 150 {
			wantResult, wantReply = audit.Bounced, "550 5.1.1 unknown "+a
		}
		if r.QueueID != id || r.Result != wantResult || r.Reply != wantReply {
			t.Fatalf("recipient %d %s: %+v", i, a, r)
		}
	}
}

// TestTooManyRecipientsGoInNextTransaction: a 452 4.5.3 to a RCPT (RFC
// 5321 4.5.3.1.10) means "this one and the rest in another transaction",
// not a deferral: a server that takes 40 per transaction gets 100
// recipients as 40, 40 and 20.
func TestTooManyRecipientsGoInNextTransaction(t *testing.T) {
	for _, pipelining := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipelining=%v", pipelining), func(t *testing.T) {
			m := &rawMX{pipelining: pipelining, maxRcpts: 40}
			w := rawWorld(t, m)
			all := rcpts("r%03d@dest.test", 100)
			id := w.submit(sender, all...)
			w.run()
			noViolations(t, m)
			var sizes []int
			var got []string
			for _, msg := range m.delivered() {
				sizes = append(sizes, len(msg.Rcpts))
				got = append(got, msg.Rcpts...)
			}
			if !slices.Equal(sizes, []int{40, 40, 20}) || !slices.Equal(got, all) {
				t.Fatalf("transactions of %v recipients", sizes)
			}
			if m, err := w.q.Get(id); err == nil {
				t.Fatalf("message still queued: %+v", m.Recipients[40])
			}
		})
	}
}

// TestDSNParametersOnTheWire: RET, ENVID, NOTIFY and ORCPT go out as RFC
// 3461 4 writes them: ENVID and an rfc822 ORCPT in xtext (byte by byte,
// so a UTF-8 character is two +XX), a utf-8 ORCPT to a server without
// SMTPUTF8 as RFC 6533's utf-8-addr-xtext, where a backslash is escaped
// too. go-smtp's client refused the non-ASCII ENVID.
func TestDSNParametersOnTheWire(t *testing.T) {
	m := &rawMX{pipelining: true, dsn: true}
	w := rawWorld(t, m)
	env := queue.Envelope{From: sender, Return: "HDRS", EnvelopeID: "id+1=2 é", Recipients: []queue.Recipient{
		{Addr: "a@dest.test", Notify: []string{"SUCCESS", "FAILURE"}, Original: "rfc822;a+x=y@orig.test"},
		{Addr: "b@dest.test", Notify: []string{"NEVER"}, Original: `utf-8;ü\b@orig.test`},
	}}
	w.enqueue(env, body)
	w.run()
	noViolations(t, m)
	m.mu.Lock()
	lines := slices.Clone(m.lines)
	m.mu.Unlock()
	want := []string{
		fmt.Sprintf("MAIL FROM:<%s> BODY=8BITMIME SIZE=%d RET=HDRS ENVID=id+2B1+3D2+20+C3+A9", sender, len(body)),
		"RCPT TO:<a@dest.test> NOTIFY=SUCCESS,FAILURE ORCPT=RFC822;a+2Bx+3Dy@orig.test",
		`RCPT TO:<b@dest.test> NOTIFY=NEVER ORCPT=UTF-8;\x{FC}\x{5C}b@orig.test`,
	}
	for _, l := range want {
		if !slices.Contains(lines, l) {
			t.Errorf("no %q among\n%s", l, strings.Join(lines, "\n"))
		}
	}
}

// TestMessageBytesExact: what the server stores is the message as queued,
// in SMTP's canonical form, by DATA and by BDAT alike: lines that start
// with a dot (stuffed for DATA, untouched in a BDAT chunk), a last line
// without a line break (which gets one), bare LFs (which become CRLF), and
// a message large enough for several BDAT chunks, each counted exactly.
func TestMessageBytesExact(t *testing.T) {
	big := strings.Repeat(".dot line\r\n"+strings.Repeat("x", 70)+"\r\n..\r\n", 3000)
	bodies := []struct{ name, stored, want string }{
		{"dots", "Subject: x\r\n\r\n.leading\r\n..two\r\n.\r\nend\r\n", "Subject: x\r\n\r\n.leading\r\n..two\r\n.\r\nend\r\n"},
		{"no final line break", "Subject: x\r\n\r\nlast line.", "Subject: x\r\n\r\nlast line.\r\n"},
		{"ends in a dot line without line break", "Subject: x\r\n\r\n.", "Subject: x\r\n\r\n.\r\n"},
		{"bare LF", "Subject: x\n\n.a\nb\n", "Subject: x\r\n\r\n.a\r\nb\r\n"},
		{"several chunks", big, big},
	}
	for _, ext := range []struct{ pipelining, chunking bool }{{true, false}, {true, true}, {false, true}} {
		for _, b := range bodies {
			chunking := ext.chunking
			t.Run(fmt.Sprintf("%s/pipelining=%v/chunking=%v", b.name, ext.pipelining, chunking), func(t *testing.T) {
				m := &rawMX{pipelining: ext.pipelining, chunking: chunking}
				w := rawWorld(t, m)
				w.enqueue(queue.Envelope{From: sender, Recipients: []queue.Recipient{{Addr: "a@dest.test"}}}, b.stored)
				w.enqueue(queue.Envelope{From: sender, Recipients: []queue.Recipient{{Addr: "b@dest.test"}}}, "Subject: next\r\n\r\nin step\r\n")
				w.run()
				noViolations(t, m)
				d := m.delivered()
				if len(d) != 2 {
					t.Fatalf("delivered %d messages", len(d))
				}
				if string(d[0].Data) != b.want {
					t.Fatalf("received %d bytes %q..., want %d bytes %q...", len(d[0].Data), head(d[0].Data), len(b.want), head([]byte(b.want)))
				}
				if string(d[1].Data) != "Subject: next\r\n\r\nin step\r\n" {
					t.Fatalf("the next message: %q", d[1].Data)
				}
				if chunking && (len(d[0].BDAT) == 0 || (b.name == "several chunks") != (len(d[0].BDAT) > 1)) {
					t.Fatalf("BDAT chunks %v", d[0].BDAT)
				}
			})
		}
	}
}

func head(b []byte) string {
	if len(b) > 80 {
		return string(b[:80])
	}
	return string(b)
}

// TestLargerThanAnnouncedSize: a message larger than the SIZE the server
// announced (RFC 1870) is not sent; it fails with 5.3.4, as Postfix fails
// it, instead of being sent whole for the server to refuse. go-smtp's
// client sent it.
func TestLargerThanAnnouncedSize(t *testing.T) {
	m := &rawMX{pipelining: true, size: 40}
	w := rawWorld(t, m)
	w.submit(sender, "a@dest.test")
	w.run()
	if d := m.delivered(); len(d) != 0 {
		t.Fatalf("sent anyway: %+v", d)
	}
	if r := w.final("a@dest.test"); r.Result != audit.Bounced || !strings.HasPrefix(r.Reply, "5.3.4 the message (56 bytes) exceeds the size limit of mx.dest.test (40 bytes)") {
		t.Fatalf("%+v", r)
	}
}

// TestRefusedRSETIsNoRefusalOfTheMessage: a server that refuses the RSET
// before the next transaction on a reused session (sent with it, where the
// server pipelines) loses the session, not the message: the message goes
// over a new connection, never bounced with the RSET's 5xx.
func TestRefusedRSETIsNoRefusalOfTheMessage(t *testing.T) {
	for _, pipelining := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipelining=%v", pipelining), func(t *testing.T) {
			m := &rawMX{pipelining: pipelining, rsetReply: "502 5.5.1 RSET not implemented"}
			w := rawWorld(t, m)
			w.submit(sender, "a@dest.test")
			w.run()
			w.submit(sender, "b@dest.test")
			w.run()
			if r := w.final("b@dest.test"); r.Result != audit.Delivered {
				t.Fatalf("%+v", r)
			}
			if d := m.delivered(); len(d) != 2 {
				t.Fatalf("delivered %d messages", len(d))
			}
		})
	}
}

// TestSmuggledCommandsNeverReachARefusingServer: a submitter's message
// whose lines read as a transaction (MAIL, RCPT, DATA) is never sent ahead
// of the RCPT replies. A server that refuses every recipient and then, against
// RFC 3030 3, refuses the BDAT without reading its chunk would run those
// lines as commands: a message of the submitter's making, from any sender,
// sent from this relay (SMTP smuggling). The chunk now waits for the
// replies, behind a NOOP that ends the group; where a recipient is taken
// it goes as before, and where none is, nothing is sent. A message without
// such lines still goes with the envelope (TestPipelinedTransactionIsOneFlight).
func TestSmuggledCommandsNeverReachARefusingServer(t *testing.T) {
	smuggling := "From: app@example.org\r\nSubject: hi\r\n\r\nhello\r\n.\r\n" +
		"mail FROM:<forged@evil.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\nSubject: forged\r\n\r\nforged\r\n.\r\n"
	w, m := sentToRefusedRecipient(t, smuggling)
	for _, d := range m.delivered() {
		if d.From == "forged@evil.test" {
			t.Fatalf("the message's own lines ran as a transaction at the server: %+v", d)
		}
	}
	if d := m.delivered(); len(d) != 0 {
		t.Fatalf("delivered %+v, want nothing: every recipient was refused", d)
	}
	// With a recipient taken, the message goes after the replies, whole.
	w.enqueue(queue.Envelope{From: sender, Recipients: []queue.Recipient{{Addr: "gone2@dest.test"}, {Addr: "here@dest.test"}}}, smuggling)
	w.run()
	noViolations(t, m)
	d := m.delivered()
	if len(d) != 1 || !slices.Equal(d[0].Rcpts, []string{"here@dest.test"}) || string(d[0].Data) != smuggling || len(d[0].BDAT) != 1 {
		t.Fatalf("delivered %+v", d)
	}
	// Every chunk went alone, after a group ended by NOOP, and only to a
	// transaction that took it (the notices to the sender, which quote
	// the message, included).
	msgs, groups, _, _ := m.snapshot()
	bdats := 0
	for i, g := range groups {
		if strings.Contains(g, "BDAT") {
			bdats++
			if g != "BDAT" || i == 0 || !strings.HasSuffix(groups[i-1], "NOOP") {
				t.Fatalf("command groups %q: a chunk went with its envelope", groups)
			}
		}
	}
	if first := groups[slices.IndexFunc(groups, func(g string) bool { return strings.Contains(g, "MAIL") })]; first != "MAIL RCPT NOOP" {
		t.Fatalf("first transaction %q, want MAIL RCPT NOOP and no chunk", first)
	}
	if bdats != len(msgs) {
		t.Fatalf("%d chunks sent for %d messages taken: a chunk went to a transaction without recipients", bdats, len(msgs))
	}
}

// TestSmuggledCommandsLedByControlBytes: a server that skips blanks in a
// wider sense than space and tab (this one splits its lines on any Unicode
// space, as strings.Fields does) read "\vmail FROM:" as MAIL; the first
// chunk with such lines went in the envelope's flight, and, refused
// unread, its lines ran as a transaction from Postern.
func TestSmuggledCommandsLedByControlBytes(t *testing.T) {
	smuggling := "From: app@example.org\r\nSubject: hi\r\n\r\nhello\r\n" +
		"\vmail FROM:<forged@evil.test>\r\n\vRCPT TO:<victim@dest.test>\r\n\fDATA\r\nSubject: forged\r\n\r\nforged\r\n.\r\n"
	_, m := sentToRefusedRecipient(t, smuggling)
	if d := m.delivered(); len(d) != 0 {
		t.Fatalf("delivered %+v, want nothing: the message's own lines ran as a transaction at the server", d)
	}
}

// sentToRefusedRecipient sends body, for gone@dest.test only, to a server
// with PIPELINING and CHUNKING that refuses every gone… recipient and then
// refuses a BDAT without recipients without reading its chunk.
func sentToRefusedRecipient(t *testing.T, body string) (*world, *rawMX) {
	t.Helper()
	m := &rawMX{pipelining: true, chunking: true, bdatUnreadWhenRefused: true, rcptReply: func(a string) string {
		if strings.HasPrefix(a, "gone") {
			return "550 5.1.1 " + a + " is gone"
		}
		return ""
	}}
	w := rawWorld(t, m)
	w.enqueue(queue.Envelope{From: sender, Recipients: []queue.Recipient{{Addr: "gone@dest.test"}}}, body)
	w.run()
	return w, m
}
