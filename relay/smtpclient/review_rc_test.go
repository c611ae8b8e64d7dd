package smtpclient

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// pipeliningServer greets, answers EHLO with PIPELINING (and CHUNKING
// where chunking), and returns.
func pipeliningServer(c net.Conn, r *bufio.Reader, chunking bool) {
	fmt.Fprintf(c, "220 mx\r\n")
	line(r)
	if chunking {
		fmt.Fprintf(c, "250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
	} else {
		fmt.Fprintf(c, "250-mx\r\n250 PIPELINING\r\n")
	}
}

// readFlight reads the commands of one pipelined DATA flight (up to DATA).
func readFlight(r *bufio.Reader) []string {
	var cmds []string
	for {
		l := line(r)
		cmds = append(cmds, l)
		if l == "DATA" || l == "" {
			return cmds
		}
	}
}

// readBody reads a dot-terminated message.
func readBody(r *bufio.Reader) {
	for {
		if l := line(r); l == "." || l == "" {
			return
		}
	}
}

// TestStrayReplyAfterTransactionGivesSessionUp: a server that answers
// the end of data twice (a broken server, or one that ran a submitter's
// smuggled commands) leaves a reply the client never asked for. Read as
// the reply to the next transaction's pipelined RSET, it shifts every
// reply after it by one: the next message's first recipient gets MAIL's
// 250, and DATA gets the last recipient's 550, which failed the whole
// message for good with a recipient's refusal. A reply that no command
// asked for puts the session out of step: it is given up, never reused.
func TestStrayReplyAfterTransactionGivesSessionUp(t *testing.T) {
	for _, later := range []bool{false, true} {
		name := map[bool]string{false: "same write", true: "while idle"}[later]
		t.Run(name, func(t *testing.T) {
			idle, stray := make(chan struct{}), make(chan struct{})
			c := fakeServer(t, func(c net.Conn, r *bufio.Reader) {
				pipeliningServer(c, r, false)
				readFlight(r)
				fmt.Fprintf(c, "250 ok\r\n250 ok\r\n354 go\r\n")
				readBody(r)
				if !later {
					fmt.Fprintf(c, "250 2.0.0 queued\r\n250 2.0.0 queued again\r\n")
				} else {
					fmt.Fprintf(c, "250 2.0.0 queued\r\n")
					<-idle
					fmt.Fprintf(c, "250 2.0.0 queued again\r\n")
					close(stray)
				}
				// The next transaction, answered correctly.
				if cmds := readFlight(r); len(cmds) < 4 {
					return
				}
				fmt.Fprintf(c, "250 reset\r\n250 sender ok\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
				readBody(r)
				fmt.Fprintf(c, "250 2.0.0 queued\r\n")
			})
			if err := c.Greet(time.Second); err != nil {
				t.Fatal(err)
			}
			if err := c.Hello("relay.test"); err != nil {
				t.Fatal(err)
			}
			res, err := c.Send(Mail{From: "a@x.test"}, []Rcpt{{Addr: "b@y.test"}}, strings.NewReader("hi\r\n"))
			if err != nil || res.Accepted() != 1 || res.Data != nil {
				t.Fatalf("first transaction: %+v %v", res, err)
			}
			if later {
				close(idle)
				<-stray
			}
			if err := c.Reset(); err == nil {
				res, err = c.Send(Mail{From: "a@x.test"}, []Rcpt{{Addr: "b@y.test"}, {Addr: "gone@y.test"}}, strings.NewReader("hi\r\n"))
				if err == nil {
					t.Fatalf("the next transaction ran on a session out of step: %+v", res)
				}
				var e *Error
				if errors.As(err, &e) {
					t.Fatalf("the next transaction failed with a reply meant for another command: %v", err)
				}
			}
			if c.Broken() == nil {
				t.Fatal("the session out of step is not given up")
			}
			c.Close()
		})
	}
}

// TestAuthErrorNeverCarriesCredentials: a server that echoes the command
// it refuses ("500 unrecognized command: AUTH PLAIN AHJl...") or the
// password it decoded would put the credentials in the error, which
// delivery logs and puts in the delay notice sent to the message's
// sender. The error names the reply without them.
func TestAuthErrorNeverCarriesCredentials(t *testing.T) {
	creds := base64.StdEncoding.EncodeToString([]byte("\x00relay\x00s3cret-pw"))
	for _, reply := range []string{
		"500 5.5.2 unrecognized command: AUTH PLAIN " + creds,
		"535 5.7.8 password s3cret-pw is wrong for relay",
	} {
		c := fakeServer(t, func(c net.Conn, r *bufio.Reader) {
			fmt.Fprintf(c, "220 mx\r\n")
			line(r)
			fmt.Fprintf(c, "250-mx\r\n250 AUTH PLAIN\r\n")
			line(r)
			fmt.Fprintf(c, "%s\r\n", reply)
			line(r)
		})
		if err := c.Greet(time.Second); err != nil {
			t.Fatal(err)
		}
		if err := c.Hello("relay.test"); err != nil {
			t.Fatal(err)
		}
		err := c.Auth("relay", "s3cret-pw")
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("want an *Error, got %v", err)
		}
		if strings.Contains(err.Error(), creds) || strings.Contains(err.Error(), "s3cret-pw") {
			t.Fatalf("the error carries the credentials: %v", err)
		}
		c.Close()
	}
}

// TestReplyTooManyInFlightIsNoRefusal: a server that answers MAIL twice
// shifts the replies of a pipelined flight by one, so DATA is read as
// refused with the last recipient's 550 while the 354 waits unread. That
// was returned as the server's refusal of the message (a bounce of every
// recipient); it is a session out of step, which the message outlives.
func TestReplyTooManyInFlightIsNoRefusal(t *testing.T) {
	c := fakeServer(t, func(c net.Conn, r *bufio.Reader) {
		pipeliningServer(c, r, false)
		readFlight(r)
		fmt.Fprintf(c, "250 ok\r\n250 ok again\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
		line(r)
	})
	if err := c.Greet(time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	res, err := c.Send(Mail{From: "a@x.test"}, []Rcpt{{Addr: "b@y.test"}, {Addr: "gone@y.test"}}, strings.NewReader("hi\r\n"))
	var e *Error
	if err == nil || errors.As(err, &e) || !errors.Is(err, ErrOutOfStep) {
		t.Fatalf("want the session out of step, got %+v %v", res, err)
	}
	c.Close()
}

// TestReplyTooManyBeforeFirstTransaction: a server that answers EHLO
// with one reply too many had the first transaction's replies shifted by
// one, as a stray reply on a reused session does: with CHUNKING, the
// accepted recipient got MAIL's 250, the refused one the first
// recipient's, and the BDAT the refusal, so both recipients failed for
// good with the 550 meant for one. The session is out of step before the
// transaction starts; nothing is sent on it.
func TestReplyTooManyBeforeFirstTransaction(t *testing.T) {
	sent := make(chan int, 1)
	c := fakeServer(t, func(c net.Conn, r *bufio.Reader) {
		fmt.Fprintf(c, "220 mx\r\n")
		line(r)
		fmt.Fprintf(c, "250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n250 ok\r\n")
		n := 0
		for {
			l := line(r)
			if l == "" {
				sent <- n
				return
			}
			n++
			var size int
			if _, err := fmt.Sscanf(l, "BDAT %d LAST", &size); err == nil {
				io.ReadFull(r, make([]byte, size))
				break
			}
		}
		sent <- n
		fmt.Fprintf(c, "250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n250 2.0.0 queued\r\n")
		line(r)
	})
	if err := c.Greet(time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	res, err := c.Send(Mail{From: "a@x.test"}, []Rcpt{{Addr: "b@y.test"}, {Addr: "gone@y.test"}}, strings.NewReader("hi\r\n"))
	if !errors.Is(err, ErrOutOfStep) {
		t.Fatalf("want the session out of step, got %+v %v", res, err)
	}
	c.Close()
	if n := <-sent; n != 0 {
		t.Fatalf("%d commands sent on a session out of step", n)
	}
}

// TestUpgradeForgetsExtensions: what a server offered before STARTTLS
// (PIPELINING, CHUNKING, AUTH, SIZE) is never used inside TLS (RFC 3207
// 4.2); only the EHLO said inside counts. Here the connection is handed
// back as it is, which is all Upgrade needs to show it.
func TestUpgradeForgetsExtensions(t *testing.T) {
	got := make(chan string, 1)
	var conn net.Conn
	c := fakeServer(t, func(c net.Conn, r *bufio.Reader) {
		fmt.Fprintf(c, "220 mx\r\n")
		line(r)
		fmt.Fprintf(c, "250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-SIZE 10\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n")
		line(r)
		fmt.Fprintf(c, "220 go ahead\r\n")
		line(r)
		fmt.Fprintf(c, "250 mx\r\n")
		got <- line(r) // what comes after the second EHLO, if anything
	})
	conn = c.conn
	if err := c.Greet(time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.StartTLS(); err != nil {
		t.Fatal(err)
	}
	c.Upgrade(conn)
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	for _, ext := range []string{"PIPELINING", "CHUNKING", "AUTH", "SIZE", "STARTTLS"} {
		if ok, _ := c.Extension(ext); ok {
			t.Errorf("%s offered before STARTTLS is still taken as offered", ext)
		}
	}
	if err := c.Auth("relay", "s3cret-pw"); err == nil {
		t.Fatal("AUTH went ahead without being offered inside TLS")
	}
	c.Close()
	if l := <-got; l != "" {
		t.Fatalf("the server read %q after the second EHLO", l)
	}
}
