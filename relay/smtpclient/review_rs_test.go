package smtpclient

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// A lenient server that skips control bytes before a command, or cuts an
// over-long line into pieces at its buffer's size, still reads a command
// there: such chunks wait for the RCPT replies too.
func TestMayRunAsCommandsLenientServers(t *testing.T) {
	long := string(bytes.Repeat([]byte("x"), 511))
	for chunk, want := range map[string]bool{
		"Subject: hi\r\n\r\n\x00MAIL FROM:<x@y>\r\n":         true,
		"Subject: hi\r\n\r\n\x0bRCPT TO:<x@y>\r\n":           true,
		"Subject: hi\r\n\r\n\x0c\x00 DATA\r\n":               true,
		"Subject: hi\r\n\r\n" + long + "MAIL FROM:<x@y>\r\n": true,
		"Subject: hi\r\n\r\n" + long + "bdat 5 last\r\n":     true,
		"Subject: hi\r\n\r\nshort line with mail in it\r\n":  false,
		"Subject: hi\r\n\r\n\x00hello\r\n":                   false,
	} {
		if got := mayRunAsCommands([]byte(chunk)); got != want {
			t.Errorf("%.40q...: %v, want %v", chunk, got, want)
		}
	}
}

// TestReplyTooManyBeforeNOOPSendsNoChunk: a chunk that waits behind a
// NOOP is sent once the NOOP is answered. A server that answered MAIL
// twice shifted the replies by one: the refused recipient got the other's
// 250, the NOOP's read was the 550, and the chunk went out, its BDAT
// "taken" with the NOOP's 250, so the message counted as delivered to a
// recipient the server had refused. A reply left over after the NOOP's is
// a session out of step: nothing more is sent on it.
func TestReplyTooManyBeforeNOOPSendsNoChunk(t *testing.T) {
	got := make(chan string, 1)
	c := fakeServer(t, func(c net.Conn, r *bufio.Reader) {
		pipeliningServer(c, r, true)
		for range 4 { // MAIL, two RCPTs, NOOP
			line(r)
		}
		fmt.Fprintf(c, "250 ok\r\n250 ok again\r\n250 ok\r\n550 5.1.1 no such user\r\n250 noop\r\n")
		got <- line(r)
	})
	if err := c.Greet(time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	res, err := c.Send(Mail{From: "a@x.test"}, []Rcpt{{Addr: "b@y.test"}, {Addr: "gone@y.test"}},
		strings.NewReader("Subject: hi\r\n\r\nmail me back\r\n"))
	c.Close()
	if next := <-got; next != "" {
		t.Errorf("sent %q after a NOOP answered out of step", next)
	}
	if !errors.Is(err, ErrOutOfStep) {
		t.Fatalf("want the session out of step, got %+v %v", res, err)
	}
}

// TestBareCRNeverReachesTheServer: a bare CR went out as it was, and the
// dot after it unstuffed, so a next hop that ends a line at a bare CR read
// "\r.\r" as the end of data and what followed as commands (SMTP
// smuggling). Submission refuses bare CRs, but a message can reach the
// queue by other ways (an import); the client makes every CR a CRLF, as it
// does every bare LF (RFC 5321 2.3.8), for DATA and BDAT alike.
func TestBareCRNeverReachesTheServer(t *testing.T) {
	got := make(chan string, 1)
	c := fakeServer(t, func(c net.Conn, r *bufio.Reader) {
		pipeliningServer(c, r, false)
		readFlight(r)
		fmt.Fprintf(c, "250 ok\r\n250 ok\r\n354 go\r\n")
		var data strings.Builder
		for {
			l, err := r.ReadString('\n')
			if err != nil || l == ".\r\n" {
				break
			}
			data.WriteString(l)
		}
		fmt.Fprintf(c, "250 taken\r\n")
		got <- data.String()
	})
	if err := c.Greet(time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	body := "Subject: hi\r\n\r\nhello\r.\rMAIL FROM:<evil@x.test>\r\n"
	if _, err := c.Send(Mail{From: "a@x.test"}, []Rcpt{{Addr: "b@y.test"}}, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	data := <-got
	if i := strings.Index(strings.ReplaceAll(data, "\r\n", ""), "\r"); i >= 0 {
		t.Errorf("the server got a bare CR: %q", data)
	}
}
