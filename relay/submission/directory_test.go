package submission

import (
	"context"
	"fmt"
	"testing"

	"github.com/postern/postern/relay/auth"
)

type downDirectory struct{}

func (downDirectory) Authenticate(context.Context, string, string) (auth.User, error) {
	return auth.User{}, fmt.Errorf("%w: ldaps://directory.test: connection refused", auth.ErrUnavailable)
}
func (downDirectory) String() string { return "ldaps://directory.test" }

// TestDirectoryDownIs454: when the directory cannot answer, AUTH gets
// 454 4.7.0, never 535, and the local users still log in.
func TestDirectoryDownIs454(t *testing.T) {
	h := newHarness(t)
	h.srv.auth.(*auth.Verifier).SetDirectory(downDirectory{})
	r := dialRaw(t, h.starttls)
	r.expect("", "220")
	r.expect("EHLO client.test", "250")
	r.startTLS()
	r.expect("EHLO client.test", "250")
	for i := 0; i < 3; i++ {
		r.expect("AUTH PLAIN "+plainToken("diruser", "pw"), "454 4.7.0 Temporary authentication failure")
	}
	r.expect("AUTH PLAIN "+plainToken(testUser, testPassword), "235")
}
