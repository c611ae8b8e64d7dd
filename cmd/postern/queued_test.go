package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/queue"
)

// TestQueuedStartupAndMemory holds the daemon to its targets with many
// messages queued (bench/README.md): its whole resident memory (VmRSS,
// which counts the pages of the memory-mapped queue database it has
// touched) under 150 MB just after the start, its own memory (RssAnon)
// under 150 MB once every message has been tried and deferred, and
// listening within 3 s of the start. Time depends on what else the machine
// does (3.6 s with 100,000 on the 2 shared cores at load 14, 1.2 s idle):
// the test fails above twice the target and logs whether the target itself
// was met. CI runs it with 2,000 messages; the figures in bench/README.md
// come from
//
//	POSTERN_QUEUED=100000 go test ./cmd/postern -run QueuedStartup -v -timeout 30m
func TestQueuedStartupAndMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("the queued-startup figures are skipped in -short mode")
	}
	const (
		targetStartup = 3 * time.Second
		maxStartup    = 2 * targetStartup
		maxAnonKB     = 150 << 10
		maxRSSKB      = 150 << 10
	)
	n := 2000
	if v := os.Getenv("POSTERN_QUEUED"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			t.Fatalf("POSTERN_QUEUED=%q is not a positive number", v)
		}
	}
	d := newDaemon(t, nil)
	os.MkdirAll(d.dataDir, 0o700)
	q, err := queue.Open(d.dataDir+"/queue.db", queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	body := "Subject: queued\r\n\r\n" + strings.Repeat(strings.Repeat("x", 76)+"\r\n", 26) // about 2 KB
	fill := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				env := queue.Envelope{From: "app@example.org", Recipients: []queue.Recipient{{Addr: fmt.Sprintf("r%d@stuck.test", i)}}}
				if _, err := q.Enqueue("", env, strings.NewReader(body)); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	if err := q.Close(); err != nil || t.Failed() {
		t.Fatalf("filling the queue: %v", err)
	}
	t.Logf("queued %d messages of %d bytes in %s", n, len(body), time.Since(fill).Round(time.Millisecond))

	start := time.Now()
	d.start()
	startup := time.Since(start)
	pid := d.cmd.Process.Pid
	rssStart := procStatusKB(t, pid, "VmRSS:")
	t.Logf("startup with %d queued: %s to listening (target %s met: %v); just after start: %s",
		n, startup.Round(time.Millisecond), targetStartup, startup <= targetStartup, rss(pid))
	if startup > maxStartup {
		t.Errorf("startup with %d queued took %s, more than %s", n, startup.Round(time.Millisecond), maxStartup)
	}
	if rssStart > maxRSSKB {
		t.Errorf("VmRSS just after start with %d queued: %d MB, more than %d MB", n, rssStart>>10, maxRSSKB>>10)
	}

	// Every message is tried once (its MX refuses connections) and
	// deferred: wait until the queue says so.
	deferred := fmt.Sprintf(`postern_queue_messages{state="deferred"} %d`+"\n", n)
	if !eventually(t, time.Minute+time.Duration(n)*5*time.Millisecond, func() bool {
		_, metrics := httpGet(t, "http://"+d.web+"/metrics")
		return strings.Contains(metrics, deferred)
	}) {
		t.Fatalf("not every one of the %d messages was tried within the deadline", n)
	}
	anonTried := procStatusKB(t, pid, "RssAnon:")
	t.Logf("every message tried and deferred after %s: %s, peak %d MB", time.Since(start).Round(time.Millisecond),
		rss(pid), procStatusKB(t, pid, "VmHWM:")>>10)
	if anonTried > maxAnonKB {
		t.Errorf("RssAnon after trying all %d: %d MB, more than %d MB", n, anonTried>>10, maxAnonKB>>10)
	}
}

func rss(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return err.Error()
	}
	// RSS counts the pages of the memory-mapped database too (RssFile);
	// RssAnon is the process's own memory.
	var parts []string
	for _, l := range strings.Split(string(b), "\n") {
		for _, k := range []string{"VmRSS:", "RssAnon:", "RssFile:"} {
			if strings.HasPrefix(l, k) {
				parts = append(parts, k+" "+strings.Join(strings.Fields(strings.TrimPrefix(l, k)), " "))
			}
		}
	}
	return strings.Join(parts, ", ")
}

// TestLargeMessageStreams submits a 50 MB message and waits for it at the
// MX: the daemon's peak RSS grows by much less than the message, because
// submission streams it to the spool and delivery streams it from there.
func TestLargeMessageStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("50 MB through the daemon skipped in -short mode")
	}
	d := newDaemon(t, nil)
	d.editConfig(`tls_listen: ["127.0.0.1:0"]`, `tls_listen: ["127.0.0.1:0"]
  max_message_bytes: 67108864`)
	if out, err := d.run("pw\n", "user", "add", "app", "--password-stdin"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d.start()
	pid := d.cmd.Process.Pid
	before := procStatusKB(t, pid, "VmHWM:")
	const size = 50 << 20
	line := strings.Repeat("0123456789", 9) + "abcdefgh\r\n" // 100 bytes
	content := "Subject: large\r\nMessage-ID: <large@stream>\r\n\r\n" + strings.Repeat(line, size/len(line))
	if _, err := submit(d.starttls, "app", "pw", "app@example.org", "rcpt@dest.test", []byte(content)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.sink.Arrived:
	case <-time.After(2 * time.Minute):
		t.Fatal("the large message never reached the MX")
	}
	if got := d.sink.Received()[0].Data; !strings.HasSuffix(string(got), content) {
		t.Fatalf("the MX received %d bytes, not the message", len(got))
	}
	after := procStatusKB(t, pid, "VmHWM:")
	t.Logf("50 MB message: peak RSS %d MB before, %d MB after (grew %d MB); now %s",
		before>>10, after>>10, (after-before)>>10, rss(pid))
	if grew := (after - before) << 10; grew >= size {
		t.Fatalf("peak RSS grew by %d bytes for a %d-byte message: it was held in memory whole", grew, size)
	}
}

func procStatusKB(t *testing.T, pid int, key string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, key) {
			v, _ := strconv.ParseInt(strings.Fields(strings.TrimPrefix(l, key))[0], 10, 64)
			return v
		}
	}
	t.Fatalf("%s not in /proc/%d/status", key, pid)
	return 0
}
