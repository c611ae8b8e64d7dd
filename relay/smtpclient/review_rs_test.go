package smtpclient

import (
	"bytes"
	"testing"
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
