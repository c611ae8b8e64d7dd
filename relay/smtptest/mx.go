// Package smtptest runs real SMTP servers in-process on 127.0.0.1:0 that
// record what they receive, for tests of anything that delivers mail.
//
// It is a thin wrapper over internal/lab, which `postern demo` shares: a
// failure there fails the test, and the server stops when the test ends.
package smtptest

import (
	"testing"

	"github.com/postern/postern/internal/lab"
)

// Message is one message as the MX received it.
type Message = lab.Message

// MX is a recording SMTP server offering STARTTLS with a self-signed
// certificate for "mx.test", localhost and 127.0.0.1.
type MX = lab.MX

// Start runs an MX until the test ends; configure runs before it serves.
func Start(t testing.TB, configure func(*MX)) *MX {
	t.Helper()
	mx, err := lab.StartMX(configure)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mx.Close)
	return mx
}
