package submission

import (
	"crypto/tls"
	"encoding/json"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/auth"
)

// TestPlainTextOnImplicitTLSIsAWarning: a client that speaks plain text to
// port 465 (or resets the connection) is the client's trouble: a warning
// with client_ip a field of its own, not an ERROR with the address inside
// a string.
func TestPlainTextOnImplicitTLSIsAWarning(t *testing.T) {
	dir := t.TempDir()
	q, err := queue.Open(filepath.Join(dir, "queue.db"), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	db, err := bolt.Open(filepath.Join(dir, "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	users, _ := auth.NewStore(db, nil)
	cert, err := SelfSigned("relay.test")
	if err != nil {
		t.Fatal(err)
	}
	var logged logBuffer
	srv := New(Config{Hostname: "relay.test", MaxMessageBytes: 1 << 10, MaxRecipients: 5, MaxLineLength: 2000,
		CommandTimeout: 10 * time.Second, DataTimeout: 10 * time.Second, MaxConnections: 5, MaxConnectionsPerIP: 5},
		Deps{Queue: q, Auth: auth.NewVerifier(users, auth.DefaultLimits, nil), Log: slog.New(slog.NewJSONHandler(&logged, nil)),
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }, Sleep: func(time.Duration) {}})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(l)
	defer srv.smtp.Close()

	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("EHLO client.test\r\n"))
	c.Read(make([]byte, 512)) // the server gives up on the handshake and closes
	c.Close()

	var line map[string]any
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, l := range strings.Split(logged.String(), "\n") {
			if json.Unmarshal([]byte(l), &line) == nil && line["level"] != "INFO" {
				break
			}
			line = nil
		}
		if line != nil {
			break
		}
	}
	if line == nil || line["level"] != "WARN" || line["client_ip"] != "127.0.0.1" || line["msg"] != "submission connection failed" {
		t.Fatalf("logged: %v\n%s", line, logged.String())
	}
}
