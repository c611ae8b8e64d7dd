package tlspolicy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"go.etcd.io/bbolt"
	"golang.org/x/sync/singleflight"

	"github.com/postern/postern/internal/mailname"
	"github.com/postern/postern/resolver"
)

var stsBucket = []byte("mta-sts")

// maxSTSBody bounds a policy download; real policies are a few hundred bytes.
const maxSTSBody = 64 << 10

// CachedSTS is an MTA-STS policy as kept in the state database.
type CachedSTS struct {
	ID      string    `json:"id"`
	Policy  STSPolicy `json:"policy"`
	Fetched time.Time `json:"fetched"`
	Expires time.Time `json:"expires"`
}

// stsCache fetches MTA-STS policies and keeps them in bbolt for their
// max_age, so that a restart loses nothing and a failed refresh keeps the
// last good policy (RFC 8461 5.1).
type stsCache struct {
	db     *bbolt.DB
	res    Resolver
	budget time.Duration // for one shared resolution of a domain's policy
	client *http.Client
	now    func() time.Time
	log    *slog.Logger
	// fetches counts policy fetches by result (the engine's instrument).
	fetches metric.Int64Counter
	flight  singleflight.Group // one fetch per domain at a time
	mu      sync.Mutex
	// lastErr keeps, per domain, why the last fetch failed, for reports.
	lastErr map[string]string
	// mem mirrors recently used entries of the database, so that a
	// decision decodes nothing.
	mem *lru.Cache[string, *CachedSTS]
}

func newSTSCache(db *bbolt.DB, res Resolver, roots *x509.CertPool, port int, timeout time.Duration, now func() time.Time, log *slog.Logger, fetches metric.Int64Counter) (*stsCache, error) {
	if db != nil {
		if err := db.Update(func(tx *bbolt.Tx) error {
			_, err := tx.CreateBucketIfNotExists(stsBucket)
			return err
		}); err != nil {
			return nil, fmt.Errorf("mta-sts cache: %w", err)
		}
	}
	// The TXT lookup, the policy host's addresses and the fetch itself.
	c := &stsCache{db: db, res: res, now: now, log: log, fetches: fetches, lastErr: map[string]string{}, budget: 2 * timeout}
	c.mem, _ = lru.New[string, *CachedSTS](10000)
	dialer := &net.Dialer{Timeout: timeout}
	c.client = &http.Client{
		Timeout: timeout,
		// RFC 8461 3.3: "HTTP 3xx redirects MUST NOT be followed".
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{
			// The policy host is resolved through Postern's own resolver,
			// like everything else delivery depends on.
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				host, _, _ := net.SplitHostPort(addr)
				ans, err := res.LookupAddrs(ctx, host)
				if err != nil {
					return nil, err
				}
				if ans.Security == resolver.Bogus {
					return nil, fmt.Errorf("addresses of %s fail DNSSEC validation: %s", host, ans.Reason)
				}
				var lastErr error = fmt.Errorf("%s has no address", host)
				for _, a := range ans.Addrs {
					conn, err := dialer.DialContext(ctx, network, net.JoinHostPort(a.String(), strconv.Itoa(port)))
					if err == nil {
						return conn, nil
					}
					lastErr = err
				}
				return nil, lastErr
			},
			TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			DisableKeepAlives:   true,
			TLSHandshakeTimeout: timeout,
			Proxy:               nil,
		},
	}
	return c, nil
}

// policy returns the domain's policy in force, or nil when it has none.
// Deliveries to one domain share one fetch, which runs under a context of
// its own (bounded by the fetch budget), not the first caller's: one caller
// giving up must not fail the others, nor be recorded as the domain's
// failure. Each caller stops waiting at its own deadline, with an error
// that says so (errors.Is the context's error).
func (c *stsCache) policy(ctx context.Context, domain string) (*STSPolicy, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("MTA-STS policy of %s: %w", domain, context.Cause(ctx))
	}
	ch := c.flight.DoChan(domain, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.budget)
		defer cancel()
		return c.resolve(fctx, domain)
	})
	select {
	case r := <-ch:
		p, _ := r.Val.(*STSPolicy)
		return p, r.Err
	case <-ctx.Done():
		return nil, fmt.Errorf("MTA-STS policy of %s: %w", domain, context.Cause(ctx))
	}
}

func (c *stsCache) resolve(ctx context.Context, domain string) (*STSPolicy, error) {
	now := c.now()
	cached := c.load(domain)
	if cached != nil && !now.Before(cached.Expires) {
		cached = nil
	}
	txts, ans, err := c.res.LookupTXT(ctx, "_mta-sts."+domain)
	if err == nil && len(txts) == 0 && (ans.Security == resolver.Bogus || ans.Security == resolver.Indeterminate || ans.UpstreamBroken) {
		// An absence that fails validation proves nothing: REQUIRETLS
		// must not fail a message for good on it.
		err = fmt.Errorf("the answer that there is no record fails DNSSEC validation (%s): %s", ans.Security, ans.Reason)
	}
	var id string
	if err == nil {
		id, err = stsID(txts)
	}
	if err != nil || id == "" {
		// No (usable) record: a cached, unexpired policy stays in force.
		if cached != nil {
			return &cached.Policy, nil
		}
		if err != nil {
			return nil, fmt.Errorf("_mta-sts.%s: %w", domain, err)
		}
		return nil, nil
	}
	if cached != nil && cached.ID == id && now.Before(cached.Fetched.Add(refreshAfter(cached.Policy))) {
		return &cached.Policy, nil
	}
	pol, err := c.fetch(ctx, domain)
	c.mu.Lock()
	if err != nil {
		c.lastErr[domain] = err.Error()
	} else {
		delete(c.lastErr, domain)
	}
	c.mu.Unlock()
	if err != nil {
		if cached != nil {
			c.log.Warn("MTA-STS policy refresh failed; the cached policy stays in force", "domain", domain, "err", err, "expires", cached.Expires)
			return &cached.Policy, nil
		}
		return nil, err
	}
	entry := CachedSTS{ID: id, Policy: pol, Fetched: now, Expires: now.Add(min(pol.MaxAge, maxSTSAge))}
	c.store(domain, entry)
	return &entry.Policy, nil
}

// refreshAfter: a policy is fetched again, even with the same id, after a
// day or half its max_age, so that it never expires while in use.
func refreshAfter(p STSPolicy) time.Duration { return min(24*time.Hour, p.MaxAge/2) }

func (c *stsCache) fetch(ctx context.Context, domain string) (STSPolicy, error) {
	pol, err := c.fetchPolicy(ctx, domain)
	result := "ok"
	if err != nil {
		result = "error"
	}
	c.fetches.Add(ctx, 1, metric.WithAttributes(attribute.String("result", result)))
	return pol, err
}

func (c *stsCache) fetchPolicy(ctx context.Context, domain string) (STSPolicy, error) {
	url := "https://mta-sts." + domain + "/.well-known/mta-sts.txt"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return STSPolicy{}, err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return STSPolicy{}, fmt.Errorf("fetch %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return STSPolicy{}, fmt.Errorf("fetch %s: HTTP %d (redirects are not followed)", url, resp.StatusCode)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "text/plain" {
		return STSPolicy{}, fmt.Errorf("fetch %s: content type %q is not text/plain", url, resp.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxSTSBody+1))
	if err != nil {
		return STSPolicy{}, fmt.Errorf("fetch %s: %w", url, err)
	}
	if len(body) > maxSTSBody {
		return STSPolicy{}, fmt.Errorf("fetch %s: policy larger than %d bytes", url, maxSTSBody)
	}
	pol, err := ParseSTSPolicy(string(body))
	if err != nil {
		return STSPolicy{}, fmt.Errorf("policy at %s is invalid: %w", url, err)
	}
	return pol, nil
}

func (c *stsCache) load(domain string) *CachedSTS {
	if e, ok := c.mem.Get(domain); ok {
		return e
	}
	if c.db == nil {
		return nil
	}
	var out *CachedSTS
	c.db.View(func(tx *bbolt.Tx) error {
		if v := tx.Bucket(stsBucket).Get([]byte(domain)); v != nil {
			var e CachedSTS
			if json.Unmarshal(v, &e) == nil {
				out = &e
			}
		}
		return nil
	})
	c.mem.Add(domain, out) // nil too: the database has nothing for it
	return out
}

func (c *stsCache) store(domain string, e CachedSTS) {
	c.mem.Add(domain, &e)
	if c.db == nil {
		return
	}
	v, _ := json.Marshal(e)
	if err := c.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(stsBucket).Put([]byte(domain), v) }); err != nil {
		c.log.Error("storing an MTA-STS policy failed", "domain", domain, "err", err)
	}
}

// STSCached returns the cached policy of domain, if any (for policy check).
func (e *Engine) STSCached(domain string) *CachedSTS { return e.sts.load(mailname.Normalize(domain)) }

// STSFailure says why the last fetch of domain's policy failed ("" when it did not).
func (e *Engine) STSFailure(domain string) string {
	e.sts.mu.Lock()
	defer e.sts.mu.Unlock()
	return e.sts.lastErr[mailname.Normalize(domain)]
}
