package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runDemoBinary runs the built binary's demo with its own TMPDIR, so that
// what it leaves behind can be seen.
func runDemoBinary(t *testing.T, args ...string) (*exec.Cmd, string) {
	t.Helper()
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	cmd := exec.Command(bin, append([]string{"demo"}, args...)...)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	return cmd, tmp
}

// section returns the demo's report on one destination.
func section(out, domain string) string {
	_, rest, ok := strings.Cut(out, "\n== "+domain+" ")
	if !ok {
		return ""
	}
	if end := strings.Index(rest, "\n== "); end >= 0 {
		rest = rest[:end]
	}
	if end := strings.Index(rest, "\nThe audit trail"); end >= 0 {
		rest = rest[:end]
	}
	return rest
}

// The demo shows every destination handled as its policy demands, and
// leaves nothing behind.
func TestDemo(t *testing.T) {
	cmd, tmp := runDemoBinary(t)
	out, err := cmd.CombinedOutput()
	text := string(out)
	if err != nil {
		t.Fatalf("postern demo: %v\n%s", err, text)
	}
	for domain, want := range map[string][]string{
		"dane-ee.example":    {`decision: dane \(1 usable TLSA`, `outcome: delivered over TLS 1\.[23], verified by DANE-EE,`},
		"dane-ta.example":    {`decision: dane \(1 usable TLSA`, `outcome: delivered over TLS 1\.[23], verified by DANE-TA,`},
		"mta-sts.example":    {`MTA-STS policy: version: STSv1; mode: enforce`, `decision: mta-sts verify`, `outcome: delivered over TLS 1\.[23], verified by PKIX,`},
		"no-policy.example":  {`decision: default may`, `outcome: delivered over TLS 1\.[23], unverified,`},
		"wrong-cert.example": {`outcome: waiting in the queue \(1 attempt.*TLS report result: tlsa-invalid\): 4\.7\.\d+ .*no TLSA record matches`},
		"stripped.example":   {`decision: do not use: .*DNSSEC bogus`, `outcome: waiting in the queue \(1 attempt.*TLS report result: dnssec-invalid\): 4\.7\.\d+ `},
		"null-mx.example":    {`outcome: bounced: "5\.1\.10 .*its failure notice was delivered to demo@sender\.example`},
	} {
		s := section(text, domain)
		for _, w := range append(want, `\n   => as its policy demands\n`) {
			if !regexp.MustCompile(w).MatchString(s) {
				t.Errorf("%s: no %q in its report:\n%s", domain, w, s)
			}
		}
	}
	for _, line := range []string{
		"6 records: 3 delivered verified, 2 delivered unverified, 1 bounced or expired\n",
		"Every destination got what its policy demands.\n",
	} {
		if !strings.Contains(text, line) {
			t.Errorf("no %q in the output:\n%s", line, text)
		}
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("the demo left %v in TMPDIR", left)
	}
	if t.Failed() {
		t.Logf("output:\n%s", text)
	}
}

// With --keep-running the daemon answers the commands the demo prints,
// and Ctrl-C stops it and removes its directory; --keep keeps it, and the
// commands then work on it offline.
func TestDemoKeepRunningAndKeep(t *testing.T) {
	cmd, tmp := runDemoBinary(t, "--keep-running", "--keep")
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		for range lines {
		}
		<-exited
	})
	var out strings.Builder
	var auditCmd string
	timeout := time.After(60 * time.Second)
	for auditCmd == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the demo ended:\n%s", out.String())
			}
			out.WriteString(l + "\n")
			// "  BIN audit -c FILE", where BIN may be "go run ./cmd/postern".
			if f := strings.Fields(l); len(f) >= 3 && f[len(f)-3] == "audit" && f[len(f)-2] == "-c" {
				auditCmd = f[len(f)-1]
			}
		case <-timeout:
			t.Fatalf("no audit command printed:\n%s", out.String())
		}
	}
	cfg := auditCmd
	bin, _ := buildOnce()
	q, err := exec.Command(bin, "queue", "list", "-c", cfg).CombinedOutput()
	if err != nil || strings.Count(string(q), " deferred ") != 2 || !strings.Contains(string(q), "4.7.5") {
		t.Fatalf("queue list on the running demo: %v\n%s", err, q)
	}
	cmd.Process.Signal(syscall.SIGINT)
	for l := range lines {
		out.WriteString(l + "\n")
	}
	if err := <-exited; err != nil {
		t.Fatalf("demo after SIGINT: %v\n%s", err, out.String())
	}
	exited <- nil // for the cleanup
	if _, err := os.Stat(cfg); err != nil {
		t.Fatalf("--keep did not keep the configuration: %v", err)
	}
	if filepath.Dir(filepath.Dir(cfg)) != tmp {
		t.Fatalf("the demo's directory %s is not in TMPDIR %s", cfg, tmp)
	}
	a, err := exec.Command(bin, "audit", "-c", cfg).CombinedOutput()
	if err != nil || !strings.Contains(string(a), "6 records: 3 delivered verified, 2 delivered unverified") {
		t.Fatalf("audit on the kept directory: %v\n%s", err, a)
	}
}
