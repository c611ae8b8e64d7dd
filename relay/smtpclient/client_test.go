package smtpclient

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestReadReply(t *testing.T) {
	cases := []struct {
		name, in string
		want     Reply
		err      bool
	}{
		{"single line with enhanced code", "550 5.1.1 no such user\r\n", Reply{550, "5.1.1", "no such user"}, false},
		{"multiline, code on each line (RFC 2034 4)", "550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n", Reply{550, "5.7.1", "first\nsecond\nthird"}, false},
		{"no enhanced code", "451 try again later\r\n", Reply{451, "", "try again later"}, false},
		{"code alone", "250\r\n", Reply{250, "", ""}, false},
		{"enhanced code alone", "250 2.0.0\r\n", Reply{250, "2.0.0", ""}, false},
		{"enhanced class differs from the reply's", "550 4.1.1 odd\r\n", Reply{550, "", "4.1.1 odd"}, false},
		{"leading zero is no code", "550 5.01.1 odd\r\n", Reply{550, "", "5.01.1 odd"}, false},
		{"bare LF taken", "250-a\n250 b\n", Reply{250, "", "a\nb"}, false},
		{"EHLO reply", "250-mx.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n", Reply{250, "", "mx.test\nPIPELINING\nSIZE 100"}, false},
		{"codes differ between lines", "250-a\r\n251 b\r\n", Reply{}, true},
		{"not a code", "HELLO\r\n", Reply{}, true},
		{"code out of range", "650 no\r\n", Reply{}, true},
		{"bad separator", "250+x\r\n", Reply{}, true},
		{"ends mid-reply", "250-a\r\n", Reply{}, true},
		{"line too long", "250 " + strings.Repeat("x", maxReplyLine) + "\r\n", Reply{}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readReply(bufio.NewReader(strings.NewReader(tc.in)))
			if (err != nil) != tc.err || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v, error %v", got, err, tc.want, tc.err)
			}
		})
	}
}

// FuzzReply: the reply parser never panics, reads nothing but SMTP codes,
// keeps an enhanced code only where its class is the reply's, and reads
// back what it parsed when it is written out again.
func FuzzReply(f *testing.F) {
	for _, s := range []string{"250 ok\r\n", "550-5.1.1 a\r\n550 5.1.1 b\r\n", "250-mx\r\n250-SIZE 10\r\n250 AUTH PLAIN\r\n",
		"421 4.4.2 bye\n", "354 go\r\n", "250\r\n", "5", "250-\r\n250 2.0.0\r\n", "452 4.5.3 too many\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		rep, err := readReply(bufio.NewReader(strings.NewReader(string(in))))
		if err != nil {
			return
		}
		if rep.Code < 200 || rep.Code > 599 {
			t.Fatalf("code %d", rep.Code)
		}
		if rep.Enhanced != "" && rep.Enhanced[0]-'0' != byte(rep.Code/100) {
			t.Fatalf("enhanced %s with code %d", rep.Enhanced, rep.Code)
		}
		var b strings.Builder
		lines := strings.Split(rep.Text, "\n")
		for i, l := range lines {
			sep := "-"
			if i == len(lines)-1 {
				sep = " "
			}
			if rep.Enhanced != "" {
				l = rep.Enhanced + " " + l
			}
			fmt.Fprintf(&b, "%d%s%s\r\n", rep.Code, sep, l)
		}
		again, err := readReply(bufio.NewReader(strings.NewReader(b.String())))
		if err != nil || again != rep {
			t.Fatalf("%q parsed as %+v, written as %q, read back as %+v, %v", in, rep, b.String(), again, err)
		}
	})
}

// fakeServer runs script on one connection from the client it returns.
func fakeServer(t *testing.T, script func(c net.Conn, r *bufio.Reader)) *Client {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		script(c, bufio.NewReader(c))
	}()
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); l.Close(); <-done })
	return New(conn, Timeouts{Command: 5 * time.Second, Block: 5 * time.Second, FinalDot: 5 * time.Second})
}

func line(r *bufio.Reader) string {
	l, _ := r.ReadString('\n')
	return strings.TrimRight(l, "\r\n")
}

func TestHelloExtensions(t *testing.T) {
	c := fakeServer(t, func(c net.Conn, r *bufio.Reader) {
		fmt.Fprintf(c, "220 mx ESMTP\r\n")
		line(r)
		fmt.Fprintf(c, "250-mx.test greets you\r\n250-pipelining\r\n250-SIZE 35882577\r\n250-AUTH=LOGIN\r\n250-AUTH PLAIN CRAM-MD5\r\n250 CHUNKING\r\n")
		line(r)
	})
	if err := c.Greet(time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("PIPELINING"); !ok {
		t.Error("PIPELINING not seen")
	}
	if c.MaxSize() != 35882577 {
		t.Errorf("SIZE %d", c.MaxSize())
	}
	if got := strings.Join(c.AuthMechanisms(), " "); got != "LOGIN PLAIN CRAM-MD5" {
		t.Errorf("AUTH mechanisms %q", got)
	}
}

// TestAuthPlain: the credentials go in the initial response (RFC 4954 4);
// a server that asks for them with an empty 334 gets them again, once; a
// refusal is an *Error with the server's codes.
func TestAuthPlain(t *testing.T) {
	creds := base64.StdEncoding.EncodeToString([]byte("\x00relay\x00s3cret"))
	cases := []struct {
		name    string
		server  func(c net.Conn, r *bufio.Reader) string
		wantErr string // "" for success
	}{
		{"initial response", func(c net.Conn, r *bufio.Reader) string {
			l := line(r)
			fmt.Fprintf(c, "235 2.7.0 ok\r\n")
			return l
		}, ""},
		{"334 continuation", func(c net.Conn, r *bufio.Reader) string {
			first := line(r)
			fmt.Fprintf(c, "334 \r\n")
			again := line(r)
			fmt.Fprintf(c, "235 2.7.0 ok\r\n")
			return first + "|" + again
		}, ""},
		{"refused", func(c net.Conn, r *bufio.Reader) string {
			l := line(r)
			fmt.Fprintf(c, "535 5.7.8 bad credentials\r\n")
			return l
		}, "AUTH: 535 5.7.8 bad credentials"},
		{"asks twice", func(c net.Conn, r *bufio.Reader) string {
			first := line(r)
			fmt.Fprintf(c, "334 \r\n")
			second := line(r)
			fmt.Fprintf(c, "334 \r\n")
			cancel := line(r)
			fmt.Fprintf(c, "501 5.7.0 cancelled\r\n")
			return first + "|" + second + "|" + cancel
		}, "AUTH: 501 5.7.0 the server asked for the PLAIN response again: cancelled"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan string, 1)
			c := fakeServer(t, func(c net.Conn, r *bufio.Reader) {
				fmt.Fprintf(c, "220 mx\r\n")
				line(r)
				fmt.Fprintf(c, "250-mx\r\n250 AUTH PLAIN LOGIN\r\n")
				got <- tc.server(c, r)
			})
			if err := c.Greet(time.Second); err != nil {
				t.Fatal(err)
			}
			if err := c.Hello("relay.test"); err != nil {
				t.Fatal(err)
			}
			err := c.Auth("relay", "s3cret")
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatal(err)
			case tc.wantErr != "":
				var e *Error
				if !errors.As(err, &e) || err.Error() != tc.wantErr || strings.Contains(err.Error(), "s3cret") {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
			}
			wire := <-got
			want := map[string]string{"initial response": "AUTH PLAIN " + creds, "334 continuation": "AUTH PLAIN " + creds + "|" + creds,
				"refused": "AUTH PLAIN " + creds, "asks twice": "AUTH PLAIN " + creds + "|" + creds + "|*"}[tc.name]
			if wire != want {
				t.Fatalf("the server read %q, want %q", wire, want)
			}
		})
	}
}

func TestCanon(t *testing.T) {
	cases := []struct{ in, data, bdat string }{
		{"a\r\nb\r\n", "a\r\nb\r\n", "a\r\nb\r\n"},
		{".a\r\n..b\r\n.\r\n", "..a\r\n...b\r\n..\r\n", ".a\r\n..b\r\n.\r\n"},
		{"a\nb", "a\r\nb\r\n", "a\r\nb\r\n"},
		{"a\r", "a\r\n", "a\r\n"},
		{"a\rb\r\n", "a\r\nb\r\n", "a\r\nb\r\n"},
		{"a\r.\r\n", "a\r\n..\r\n", "a\r\n.\r\n"},
		{"a\r\r\nb", "a\r\n\r\nb\r\n", "a\r\n\r\nb\r\n"},
		{"\r", "\r\n", "\r\n"},
		{"", "", ""},
		{".", "..\r\n", ".\r\n"},
	}
	for _, tc := range cases {
		// Fed one byte at a time and whole, the same result.
		for _, step := range []int{1, len(tc.in) + 1} {
			for _, stuff := range []bool{true, false} {
				k := canon{stuff: stuff, bol: true}
				var out []byte
				for i := 0; i < len(tc.in); i += step {
					out = k.append(out, []byte(tc.in[i:min(i+step, len(tc.in))]))
				}
				out = k.end(out)
				want := map[bool]string{true: tc.data, false: tc.bdat}[stuff]
				if string(out) != want {
					t.Errorf("%q (step %d, stuff %v): %q, want %q", tc.in, step, stuff, out, want)
				}
			}
		}
	}
}

func TestXtext(t *testing.T) {
	for in, want := range map[string]string{"plain": "plain", "a+b=c d": "a+2Bb+3Dc+20d", "é": "+C3+A9", "\x01": "+01"} {
		if got := xtext(in); got != want {
			t.Errorf("xtext(%q) = %q, want %q", in, got, want)
		}
	}
	if got := utf8AddrXtext(`ü\+@x`); got != `\x{FC}\x{5C}\x{2B}@x` {
		t.Errorf("utf-8-addr-xtext %q", got)
	}
	if got := utf8AddrUnitext("ü =@x\x7f"); got != `ü\x{20}\x{3D}@x\x{7F}` {
		t.Errorf("utf-8-addr-unitext %q", got)
	}
}

// A chunk that a server could read as a transaction's commands, were it
// to refuse the chunk without reading it, is found wherever such a line
// starts; ordinary text is not.
func TestMayRunAsCommands(t *testing.T) {
	for chunk, want := range map[string]bool{
		"Subject: hi\r\n\r\nhello\r\n":                 false,
		"Subject: hi\r\n\r\nmail me back\r\n":          true, // costs a round trip, nothing more
		"Subject: hi\r\n\r\nMAIL FROM:<x@y>\r\n":       true,
		"Subject: hi\r\n\r\n  rcpt TO:<x@y>\r\n":       true,
		"Subject: hi\r\n\r\n\tData\r\n":                true,
		"Subject: hi\r\rBDAT 5 LAST\r\n":               true,
		"MAIL FROM:<x@y>\r\n":                          true,
		"Subject: a MAIL FROM inside a line\r\n":       false,
		"Subject: hi\r\n\r\nMAI":                       false,
		"X-Data-Classification: none\r\n\r\nhello\r\n": false,
	} {
		if got := mayRunAsCommands([]byte(chunk)); got != want {
			t.Errorf("%q: %v, want %v", chunk, got, want)
		}
	}
}
