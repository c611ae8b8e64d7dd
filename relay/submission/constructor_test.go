package submission

import "testing"

// New, like every constructor, takes a nil logger to mean "log nothing"
// and a nil clock to mean time.Now, rather than panic at the first line
// it logs.
func TestNewDefaultsLoggerAndClock(t *testing.T) {
	srv := New(Config{Hostname: "relay.test"}, Deps{})
	if srv.log == nil || srv.clock == nil {
		t.Fatalf("New kept a nil logger (%v) or clock (%v)", srv.log == nil, srv.clock == nil)
	}
	srv.log.Info("logged nowhere")
	if _, err := NewCertificates("", "", "relay.test", nil); err != nil {
		t.Fatal(err)
	}
}
