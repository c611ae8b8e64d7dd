package interop

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The suite's world lives on loopback addresses of its own, 127.77.0.0/16
// (every 127/8 address reaches lo on Linux): knot and unbound on port 53,
// each receiving MTA on port 25 of two addresses (one offering STARTTLS,
// one not). Binding these ports is why the suite runs as root.
const (
	knotAddr    = "127.77.0.53"
	unboundAddr = "127.77.0.54"
)

// treeRoot is where interop/install.sh unpacks the MTA packages.
func treeRoot() string {
	if r := os.Getenv("POSTERN_INTEROP_ROOT"); r != "" {
		return r
	}
	return "/opt/postern-interop"
}

// world is everything the tests share: started once by the first test
// that needs it, stopped (every process by its PID) after the last.
type world struct {
	dir       string
	ca        *testCA
	procs     []*proc
	sink      *sink
	dns       *dnsWorld
	receivers []*receiver
	postern   *postern
	dkim      []dkimKey
	started   time.Duration

	procMu sync.Mutex
}

var (
	worldOnce sync.Once
	theWorld  *world
	worldErr  error
)

// needWorld skips the test unless the suite was asked for, and otherwise
// returns the shared world; with POSTERN_INTEROP set, anything missing is
// a failure, not a skip.
func needWorld(t *testing.T) *world {
	t.Helper()
	if os.Getenv("POSTERN_INTEROP") == "" {
		t.Skip("interop suite: run it as root with POSTERN_INTEROP=1 go test ./interop/ -v (after interop/install.sh)")
	}
	worldOnce.Do(func() {
		start := time.Now()
		theWorld, worldErr = startWorld()
		if theWorld != nil {
			theWorld.started = time.Since(start)
		}
	})
	if worldErr != nil {
		t.Fatalf("interop world: %v", worldErr)
	}
	t.Logf("world in %s (started in %s)", theWorld.dir, theWorld.started.Round(time.Millisecond))
	return theWorld
}

func TestMain(m *testing.M) {
	code := m.Run()
	if theWorld != nil {
		theWorld.stop()
		if code == 0 && os.Getenv("POSTERN_INTEROP_KEEP") == "" {
			os.RemoveAll(theWorld.dir)
		} else {
			fmt.Fprintf(os.Stderr, "interop: logs and configs kept in %s\n", theWorld.dir)
		}
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func startWorld() (w *world, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the interop suite binds ports 25 and 53 on 127.77.0.0/16: run it as root")
	}
	for _, tool := range []string{"knotd", "keymgr", "unbound", "swaks", "msmtp", "dkimverify", "/usr/bin/python3", "unshare", "m4"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found (run interop/install.sh): %w", tool, err)
		}
	}
	dir, err := os.MkdirTemp("", "postern-interop-")
	if err != nil {
		return nil, err
	}
	// The MTAs drop privileges to their own users, who must reach their
	// configs and queues under dir.
	os.Chmod(dir, 0o755)
	w = &world{dir: dir}
	defer func() {
		if err != nil {
			w.stop()
			err = fmt.Errorf("%w (logs in %s)", err, dir)
		}
	}()
	if w.ca, err = newTestCA(); err != nil {
		return w, err
	}
	if err := w.ca.writeFiles(dir); err != nil {
		return w, err
	}
	if w.sink, err = startSink(); err != nil {
		return w, err
	}
	w.receivers = allReceivers()
	for _, r := range w.receivers {
		if err := r.issueCert(w); err != nil {
			return w, err
		}
	}
	bin, err := buildPostern(dir)
	if err != nil {
		return w, err
	}
	if w.dkim, err = makeDKIMKeys(bin, dir); err != nil {
		return w, err
	}
	if w.dns, err = startDNS(w); err != nil {
		return w, err
	}
	// The receivers start in parallel: each takes a second or two.
	errs := make(chan error, len(w.receivers))
	for _, r := range w.receivers {
		go func() {
			if err := r.start(w, r); err != nil {
				errs <- fmt.Errorf("%s: %w", r.name, err)
				return
			}
			errs <- nil
		}()
	}
	var startErrs []error
	for range w.receivers {
		startErrs = append(startErrs, <-errs)
	}
	if err := errors.Join(startErrs...); err != nil {
		return w, err
	}
	if w.postern, err = startPostern(w, bin); err != nil {
		return w, err
	}
	return w, nil
}

func (w *world) stop() {
	if w.postern != nil {
		w.postern.stop()
	}
	// Last started, first stopped.
	w.procMu.Lock()
	procs := append([]*proc(nil), w.procs...)
	w.procMu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop()
	}
	if w.sink != nil {
		w.sink.close()
	}
}

// proc is a server process the suite started; stop ends it by its PID.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// spawn starts a long-running process with its output in dir/name.log.
func (w *world) spawn(name string, env []string, argv ...string) (*proc, error) {
	logPath := filepath.Join(w.dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = w.dir
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	w.procMu.Lock()
	w.procs = append(w.procs, p)
	w.procMu.Unlock()
	return p, nil
}

// withSuiteDNS wraps argv to run in a mount namespace of its own where
// /etc/resolv.conf names the suite's unbound and /etc/hosts gives the
// machine's name a domain and an IPv6 address: for programs that read
// the system's resolver configuration and offer no other way to set it,
// and that wait for their own host name to resolve (sendmail sleeps a
// minute per try). The process keeps its PID through the execs.
func (w *world) withSuiteDNS(argv ...string) []string {
	return append([]string{"unshare", "-m", "--", "sh", "-c",
		`mount --bind "$0" /etc/resolv.conf && mount --bind "$1" /etc/hosts && shift && exec "$@"`,
		w.dns.resolvConf, w.dns.hostsFile}, argv...)
}

// stop sends SIGTERM to the process and waits; SIGKILL after 10 seconds.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// tail is the end of the process's log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// waitListening polls until addr accepts TCP connections, the process
// exits, or 20 seconds pass.
func (p *proc) waitListening(addr string) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited (%v) before listening on %s:\n%s", p.name, p.err, addr, p.tail())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %s after 20s:\n%s", p.name, addr, p.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// run executes a command to completion and returns its combined output.
func run(env []string, argv ...string) (string, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out), nil
}

// writeFile writes a config file, failing on the first error.
func writeFile(path, content string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(content), mode)
}
