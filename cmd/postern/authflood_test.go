package main

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestAuthFloodMemoryBounded drives the built daemon with 1,000 concurrent
// failed AUTHs from 20 loopback addresses (the default connection limits:
// 1,000 in all, 50 per address), half for a real user with a wrong password
// and half for unknown users, and fails if the daemon's peak RSS (VmHWM)
// passes 300 MB. Before hashes were bounded, 300 such AUTHs reached 5.9 GB
// (19 MiB of argon2id memory each, all at once); issue 14 item 10.
func TestAuthFloodMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("AUTH flood skipped in -short mode")
	}
	if runtime.GOOS != "linux" {
		t.Skip("needs Linux: the whole of 127.0.0.0/8 on loopback, and VmHWM in /proc")
	}
	const conns, addrs, limitKB = 1000, 20, 300 * 1000
	d := newDaemon(t, nil)
	if out, err := d.run("s3cret\n", "user", "add", "app", "--password-stdin", "--allow-from", "*@example.org"); err != nil {
		t.Fatalf("user add: %v\n%s", err, out)
	}
	d.start()
	pid := d.cmd.Process.Pid
	before := vmHWM(t, pid)

	// Every client connects and says EHLO first; then all send AUTH at once.
	start := time.Now()
	var ready, replied sync.WaitGroup
	fire := make(chan struct{})
	var mu sync.Mutex
	codes := map[string]int{}
	ready.Add(conns)
	replied.Add(conns)
	for i := range conns {
		go func() {
			defer replied.Done()
			code, err := failedAuth(d.implicit, net.IPv4(127, 0, 0, byte(1+i%addrs)), i, &ready, fire)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				codes["error: "+err.Error()]++
				return
			}
			codes[code]++
		}()
	}
	ready.Wait()
	connected := time.Since(start)
	close(fire)
	replied.Wait()
	took := time.Since(start)
	peak := vmHWM(t, pid)
	t.Logf("%d failed AUTHs from %d addresses: peak RSS (VmHWM) %d kB (%.1f MB; %d kB at start), connected in %v, all answered after %v; replies %v",
		conns, addrs, peak, float64(peak)/1000, before, connected.Round(time.Millisecond), took.Round(time.Millisecond), codes)
	for code, n := range codes {
		// 535: a wrong password or unknown user; 454 4.7.0: the address is
		// locked out, or no hash slot came free in time. Anything else,
		// 235 above all, is a failure.
		if !strings.HasPrefix(code, "535 5.7.8") && !strings.HasPrefix(code, "454 4.7.0") {
			t.Errorf("%d clients got %q", n, code)
		}
	}
	if peak > limitKB {
		t.Fatalf("daemon peak RSS %d kB under the AUTH flood, want at most %d kB", peak, limitKB)
	}
}

// failedAuth connects from local over implicit TLS, says EHLO, reports
// ready, waits for fire, then tries a wrong password and returns the reply.
func failedAuth(addr string, local net.IP, i int, ready *sync.WaitGroup, fire <-chan struct{}) (string, error) {
	signalled := false
	defer func() {
		if !signalled {
			ready.Done()
		}
	}()
	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: local}, Timeout: 30 * time.Second}
	raw, err := dialer.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(90 * time.Second))
	c := tls.Client(raw, e2eTLS)
	text := textproto.NewConn(c)
	if _, _, err := text.ReadResponse(220); err != nil {
		return "", fmt.Errorf("greeting: %w", err)
	}
	if err := text.PrintfLine("EHLO flood%d.test", i); err != nil {
		return "", err
	}
	if _, _, err := text.ReadResponse(250); err != nil {
		return "", fmt.Errorf("EHLO: %w", err)
	}
	signalled = true
	ready.Done()
	<-fire
	user := "app"
	if i%2 == 1 {
		user = "ghost" + strconv.Itoa(i)
	}
	token := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00wrong-" + strconv.Itoa(i)))
	if err := text.PrintfLine("AUTH PLAIN %s", token); err != nil {
		return "", err
	}
	line, err := text.ReadLine()
	if err != nil {
		return "", fmt.Errorf("AUTH: %w", err)
	}
	text.PrintfLine("QUIT")
	if len(line) > 9 {
		line = line[:9] // "535 5.7.8"
	}
	return line, nil
}

// vmHWM is a process's peak resident set size in kB (proc(5)).
func vmHWM(t *testing.T, pid int) int {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			return kb
		}
	}
	t.Fatal("no VmHWM in /proc status")
	return 0
}
