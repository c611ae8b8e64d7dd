package tlspolicy_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.etcd.io/bbolt"

	"github.com/postern/postern/resolver"
	"github.com/postern/postern/resolver/resolvertest"
	"github.com/postern/postern/tlspolicy"
	"github.com/postern/postern/tlspolicy/tlstest"
)

// stsWorld serves example.test's MTA-STS record and policy.
type stsWorld struct {
	t       testing.TB
	dns     *resolvertest.Server
	zone    *resolvertest.Zone
	res     *resolver.Client
	ca      *tlstest.CA
	port    int
	fetches atomic.Int64
	mu      sync.Mutex
	body    string
	status  int
	ctype   string
	dbPath  string
}

func newSTSWorld(t testing.TB) *stsWorld {
	w := &stsWorld{t: t, ca: tlstest.NewCA(t, "Test Root"), status: 200, ctype: "text/plain; charset=utf-8",
		body: "version: STSv1\nmode: enforce\nmx: mx1.example.test\nmax_age: 86400\n", dbPath: filepath.Join(t.TempDir(), "state.db")}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.fetches.Add(1)
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.status == http.StatusFound {
			http.Redirect(rw, r, "https://elsewhere.test/policy", http.StatusFound)
			return
		}
		rw.Header().Set("Content-Type", w.ctype)
		rw.WriteHeader(w.status)
		fmt.Fprint(rw, w.body)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{w.ca.Leaf(t, false, "mta-sts.example.test")}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	w.port, _ = strconv.Atoi(u.Port())
	w.zone = resolvertest.NewZone(t, ".", dns.ECDSAP256SHA256, `
example.test. 300 IN MX 10 mx1.example.test.
example.test. 300 IN MX 20 mx2.example.test.
mx1.example.test. 300 IN A 127.0.0.1
mx2.example.test. 300 IN A 127.0.0.1
mta-sts.example.test. 300 IN A 127.0.0.1
_mta-sts.example.test. 300 IN TXT "v=STSv1; id=one;"`)
	w.dns = resolvertest.StartZones(t, w.zone)
	w.newResolver()
	return w
}

// newResolver drops every cached answer, as a restart (or a TTL) would.
func (w *stsWorld) newResolver() {
	res, err := resolver.New([]string{w.dns.Addr}, resolver.Options{Timeout: time.Second, Attempts: 1, Anchors: w.zone.DS()})
	if err != nil {
		w.t.Fatal(err)
	}
	w.res = res
}

func (w *stsWorld) set(status int, body string) {
	w.mu.Lock()
	w.status, w.body = status, body
	w.mu.Unlock()
}

// engine opens the state database and an engine over it; closing the
// database at the end of the returned function is a restart.
func (w *stsWorld) engine() (*tlspolicy.Engine, func()) {
	db, err := bbolt.Open(w.dbPath, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		w.t.Fatal(err)
	}
	e, err := tlspolicy.NewEngine(tlspolicy.Config{Default: tlspolicy.ModeMay, Roots: w.ca.Pool(), STSPort: w.port},
		tlspolicy.Deps{Resolver: w.res, DB: db})
	if err != nil {
		w.t.Fatal(err)
	}
	return e, func() { db.Close() }
}

func (w *stsWorld) decide(e *tlspolicy.Engine, host string) (tlspolicy.Decision, error) {
	return e.Decide(context.Background(), tlspolicy.Request{Domain: "example.test", MXHost: host, Port: 25})
}

func TestSTSPolicyCache(t *testing.T) {
	w := newSTSWorld(t)
	e, closeDB := w.engine()
	d, err := w.decide(e, "mx1.example.test")
	if err != nil || d.Source != "mta-sts" || d.Level != tlspolicy.Verify {
		t.Fatalf("enforce: %+v %v", d, err)
	}
	var refusal *tlspolicy.Refusal
	if _, err := w.decide(e, "mx2.example.test"); !errors.As(err, &refusal) || refusal.Permanent || refusal.Enhanced != "4.7.5" {
		t.Fatalf("MX outside the policy: %v", err)
	}
	if w.fetches.Load() != 1 {
		t.Fatalf("%d fetches for one policy", w.fetches.Load())
	}

	// A restart, with the policy server down: the cached policy is still in force.
	closeDB()
	w.set(http.StatusInternalServerError, "")
	w.newResolver()
	e, closeDB = w.engine()
	if d, err := w.decide(e, "mx1.example.test"); err != nil || d.Source != "mta-sts" {
		t.Fatalf("after restart: %+v %v", d, err)
	}
	if w.fetches.Load() != 1 {
		t.Fatal("fetched again although the id is unchanged")
	}

	// A new id makes it fetch again; the fetch fails; the cached policy stays.
	w.zone.Remove("_mta-sts.example.test.", dns.TypeTXT)
	w.zone.Add(`_mta-sts.example.test. 300 IN TXT "v=STSv1; id=two;"`)
	w.newResolver()
	e, closeDB = reopen(w, closeDB)
	if _, err := w.decide(e, "mx2.example.test"); !errors.As(err, &refusal) {
		t.Fatalf("failed refresh should keep the cached policy: %v", err)
	}
	if w.fetches.Load() != 2 || e.STSFailure("example.test") == "" {
		t.Fatalf("fetches %d, failure %q", w.fetches.Load(), e.STSFailure("example.test"))
	}

	// The server is back with a policy that allows mx2: the new id's policy wins.
	w.set(http.StatusOK, "version: STSv1\nmode: enforce\nmx: *.example.test\nmax_age: 86400\n")
	w.newResolver()
	e, closeDB = reopen(w, closeDB)
	if d, err := w.decide(e, "mx2.example.test"); err != nil || d.Source != "mta-sts" {
		t.Fatalf("new policy: %+v %v", d, err)
	}
	if c := e.STSCached("example.test"); c == nil || c.ID != "two" || len(c.Policy.MX) != 1 {
		t.Fatalf("cache: %+v", c)
	}
	closeDB()
}

func reopen(w *stsWorld, closeDB func()) (*tlspolicy.Engine, func()) {
	closeDB()
	return w.engine()
}

func TestSTSFetchIsStrict(t *testing.T) {
	for name, setup := range map[string]func(w *stsWorld){
		"redirect":         func(w *stsWorld) { w.set(http.StatusFound, "") },
		"not found":        func(w *stsWorld) { w.set(http.StatusNotFound, "") },
		"wrong media type": func(w *stsWorld) { w.mu.Lock(); w.ctype = "text/html"; w.mu.Unlock() },
		"invalid policy":   func(w *stsWorld) { w.set(http.StatusOK, "version: STSv1\nmode: enforce\n") },
		"oversized policy": func(w *stsWorld) { w.set(http.StatusOK, strings.Repeat("x", 70<<10)) },
		"untrusted HTTPS":  func(w *stsWorld) { w.ca = tlstest.NewCA(t, "Someone Else") },
	} {
		t.Run(name, func(t *testing.T) {
			w := newSTSWorld(t)
			setup(w)
			e, closeDB := w.engine()
			defer closeDB()
			// Without a usable policy the domain has none: opportunistic.
			if d, err := w.decide(e, "mx2.example.test"); err != nil || d.Source != "default" || d.Level != tlspolicy.May {
				t.Fatalf("%+v %v", d, err)
			}
			if e.STSFailure("example.test") == "" {
				t.Fatal("the failure is not kept for reports")
			}
		})
	}
}
