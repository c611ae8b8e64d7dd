package tlsrpt

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/dkim"
)

// Config is the reporter's identity and schedule (the tlsrpt section).
type Config struct {
	OrganizationName string
	ContactInfo      string // an address or URL people can write to
	Submitter        string // the host name that submits the reports
	From             string // envelope and header sender of mailed reports
	SendHour         int    // UTC hour after which yesterday's reports go out
	Roots            *x509.CertPool
	// AllowNetworks are internal address ranges (loopback, private,
	// link-local, unique-local) that an https: rua may still reach: for a
	// lab. Elsewhere a report is never posted inside.
	AllowNetworks []netip.Prefix
}

// Deps are the reporter's collaborators.
type Deps struct {
	Queue     *queue.Queue
	LookupTXT func(ctx context.Context, name string) ([]string, error)
	DKIM      *dkim.Signer
	DB        *bbolt.DB // which reports went out (bucket "tlsrpt-sent")
	Clock     func() time.Time
	Log       *slog.Logger
	Kick      func() // wakes delivery after a report is queued
	// LookupAddrs resolves the host of an https: rua, through Postern's
	// own resolver like everything delivery depends on.
	LookupAddrs func(ctx context.Context, host string) ([]netip.Addr, error)
}

// Reporter sends each day's reports once.
type Reporter struct {
	cfg  Config
	d    Deps
	http *http.Client
}

var sentBucket = []byte("tlsrpt-sent")

// NewReporter returns a reporter; it creates its bucket in DB.
func NewReporter(cfg Config, d Deps) (*Reporter, error) {
	if d.Clock == nil {
		d.Clock = time.Now
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Kick == nil {
		d.Kick = func() {}
	}
	if err := d.DB.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(sentBucket)
		return err
	}); err != nil {
		return nil, fmt.Errorf("tlsrpt: %w", err)
	}
	r := &Reporter{cfg: cfg, d: d}
	r.http = &http.Client{
		Timeout:       time.Minute,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: cfg.Roots, MinVersion: tls.VersionTLS12},
			Proxy: nil, DisableKeepAlives: true, DialContext: r.dial},
	}
	return r, nil
}

// dial connects to a report URL's host only at addresses that are not
// inside: a rua is the recipient domain's to choose, and must not turn the
// relay into a way to reach its own network (the admin listener, metadata
// services, an internal HTTP API). The check is on the addresses actually
// dialled, so a name that resolves differently later (DNS rebinding)
// gains nothing.
func (r *Reporter) dial(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("port %q: %w", port, err)
	}
	addrs, err := r.reportAddrs(ctx, host)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	var lastErr error
	for _, a := range addrs {
		c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(a, uint16(p)).String())
		if err == nil {
			return c, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func (r *Reporter) reportAddrs(ctx context.Context, host string) ([]netip.Addr, error) {
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		addrs = []netip.Addr{a}
	} else {
		if r.d.LookupAddrs == nil {
			return nil, fmt.Errorf("no resolver to look up %s", host)
		}
		if addrs, err = r.d.LookupAddrs(ctx, host); err != nil {
			return nil, fmt.Errorf("address lookup for %s: %w", host, err)
		}
	}
	var ok []netip.Addr
	var refused []string
	for _, a := range addrs {
		a = a.Unmap()
		if why := internalAddr(a); why != "" && !r.allowed(a) {
			refused = append(refused, a.String()+" ("+why+")")
			continue
		}
		ok = append(ok, a)
	}
	if len(ok) == 0 {
		return nil, &insideError{fmt.Sprintf("%s has no address a report may be sent to: %s; tlsrpt.allow_networks admits internal ranges for a lab", host, strings.Join(refused, ", "))}
	}
	return ok, nil
}

func (r *Reporter) allowed(a netip.Addr) bool {
	for _, p := range r.cfg.AllowNetworks {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// insideError refuses a report address inside; trying again changes nothing.
type insideError struct{ msg string }

func (e *insideError) Error() string { return e.msg }

// sharedAddressSpace is 100.64.0.0/10 (RFC 6598), inside a carrier's network.
var sharedAddressSpace = netip.MustParsePrefix("100.64.0.0/10")

// Ranges that are not on the public internet beyond what netip names, and
// IPv6 forms that carry an IPv4 address a gateway or tunnel delivers to.
var (
	notPublic4 = []netip.Prefix{
		netip.MustParsePrefix("192.0.0.0/24"),  // IETF protocol assignments (RFC 6890)
		netip.MustParsePrefix("198.18.0.0/15"), // benchmarking (RFC 2544)
		netip.MustParsePrefix("240.0.0.0/4"),   // reserved, and the broadcast address
	}
	siteLocal      = netip.MustParsePrefix("fec0::/10")      // RFC 3879
	nat64LocalUse  = netip.MustParsePrefix("64:ff9b:1::/48") // RFC 8215: a network's own translator
	nat64WellKnown = netip.MustParsePrefix("64:ff9b::/96")   // RFC 6052 2.1
	ipv4Compatible = netip.MustParsePrefix("::/96")          // RFC 4291 2.5.5.1 (deprecated)
	sixToFour      = netip.MustParsePrefix("2002::/16")      // RFC 3056 2
)

// internalAddr names why a is not on the public internet, or "". An IPv6
// address that embeds an IPv4 one (NAT64, IPv4-compatible, 6to4) reaches
// that IPv4 address through a translator or relay, so it is judged by it.
func internalAddr(a netip.Addr) string {
	a = a.Unmap()
	if why := internalForm(a); why != "" {
		return why
	}
	var v4 netip.Addr
	b := a.As16()
	switch {
	case !a.Is6():
		return ""
	case nat64LocalUse.Contains(a):
		return "local-use NAT64"
	case siteLocal.Contains(a):
		return "site-local"
	case nat64WellKnown.Contains(a), ipv4Compatible.Contains(a):
		v4 = netip.AddrFrom4([4]byte(b[12:16]))
	case sixToFour.Contains(a):
		v4 = netip.AddrFrom4([4]byte(b[2:6]))
	default:
		return ""
	}
	if why := internalForm(v4); why != "" {
		return why + " (" + v4.String() + " inside " + a.String() + ")"
	}
	return ""
}

func internalForm(a netip.Addr) string {
	for _, p := range notPublic4 {
		if p.Contains(a) {
			return "reserved"
		}
	}
	switch {
	case a.IsLoopback():
		return "loopback"
	case a.IsPrivate():
		return "private" // 10/8, 172.16/12, 192.168/16, fc00::/7
	case a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast():
		return "link-local"
	case a.IsUnspecified(), a.Is4() && a.As4()[0] == 0:
		return "unspecified"
	case a.IsMulticast(), a.IsInterfaceLocalMulticast():
		return "multicast"
	case sharedAddressSpace.Contains(a):
		return "shared address space"
	}
	return ""
}

// Run sends yesterday's reports after SendHour (UTC), checking hourly.
func (r *Reporter) Run(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		now := r.d.Clock().UTC()
		day := Day(now).Add(-24 * time.Hour)
		// A day whose reports all went out is not aggregated again each hour.
		dayKey := []byte(day.Format("2006-01-02") + " done")
		if now.Hour() >= r.cfg.SendHour && !r.sent(dayKey) {
			if _, err := r.Send(ctx, day); err != nil {
				r.d.Log.Error("sending TLS reports failed; will retry within the hour", "err", err)
			} else {
				r.markSent(dayKey)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Outcome is what Send did for one report address.
type Outcome struct {
	Domain string
	URI    string
	Err    error
}

// Send delivers the reports of day to every domain that asks for them, and
// says what it did. A report already sent to an address is not sent again;
// one that failed is tried again at the next call.
func (r *Reporter) Send(ctx context.Context, day time.Time) ([]Outcome, error) {
	agg, err := Aggregate(r.d.Queue, day)
	if err != nil {
		return nil, err
	}
	domains := make([]string, 0, len(agg))
	for d := range agg {
		domains = append(domains, d)
	}
	sort.Strings(domains)
	var out []Outcome
	for _, domain := range domains {
		txts, err := r.d.LookupTXT(ctx, "_smtp._tls."+domain)
		if err != nil {
			out = append(out, Outcome{Domain: domain, Err: fmt.Errorf("_smtp._tls.%s: %w", domain, err)})
			continue
		}
		ruas, err := FindRecord(txts)
		if err != nil {
			continue // the domain asks for no reports
		}
		report := NewReport(r.cfg.OrganizationName, r.cfg.ContactInfo, r.cfg.Submitter, domain, day, agg[domain])
		body, err := json.Marshal(report)
		if err != nil {
			return out, err
		}
		gz := gzipped(body)
		for _, rua := range ruas {
			key := []byte(Day(day).Format("2006-01-02") + " " + domain + " " + rua.String())
			if r.sent(key) {
				continue
			}
			var err error
			switch rua.Scheme {
			case "mailto":
				err = r.mail(domain, rua.Opaque, report, gz)
			case "https":
				err = r.post(ctx, rua, gz)
			}
			if err == nil {
				r.markSent(key)
				r.d.Log.Info("TLS report sent", "domain", domain, "to", rua.String(), "report_id", report.ReportID)
			}
			out = append(out, Outcome{Domain: domain, URI: rua.String(), Err: err})
		}
	}
	var errs []error
	for _, o := range out {
		if o.Err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", o.Domain, o.URI, o.Err))
		}
	}
	return out, errors.Join(errs...)
}

func (r *Reporter) sent(key []byte) bool {
	var ok bool
	r.d.DB.View(func(tx *bbolt.Tx) error { ok = tx.Bucket(sentBucket).Get(key) != nil; return nil })
	return ok
}

func (r *Reporter) markSent(key []byte) {
	now := r.d.Clock().UTC().Format(time.RFC3339)
	if err := r.d.DB.Update(func(tx *bbolt.Tx) error { return tx.Bucket(sentBucket).Put(key, []byte(now)) }); err != nil {
		r.d.Log.Error("remembering a sent TLS report failed", "err", err)
	}
}

// PruneSent forgets the reports sent for days before the UTC day of cutoff
// (the daemon passes the audit retention's cutoff: the journal a report is
// made from is pruned at the same time, so a day forgotten here cannot be
// reported again). It says how many records it deleted.
func (r *Reporter) PruneSent(cutoff time.Time) (int, error) {
	end := []byte(Day(cutoff).Format("2006-01-02")) // keys start with their day
	n := 0
	err := r.d.DB.Update(func(tx *bbolt.Tx) error {
		n = 0
		b := tx.Bucket(sentBucket)
		var old [][]byte
		c := b.Cursor()
		for k, _ := c.First(); k != nil && bytes.Compare(k, end) < 0; k, _ = c.Next() {
			old = append(old, bytes.Clone(k))
		}
		for _, k := range old {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(old)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("tlsrpt: prune sent reports: %w", err)
	}
	return n, nil
}

func gzipped(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

// post delivers over HTTPS (RFC 8460 5.2), verified, three tries.
func (r *Reporter) post(ctx context.Context, u *url.URL, gz []byte) error {
	var err error
	for try := 0; try < 3; try++ {
		if try > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(try) * 2 * time.Second):
			}
		}
		var req *http.Request
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(gz))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/tlsrpt+gzip")
		var resp *http.Response
		resp, err = r.http.Do(req)
		var inside *insideError
		if errors.As(err, &inside) {
			return inside
		}
		if err != nil {
			continue
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			return nil
		}
		err = fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return err
}

// mail queues the report as RFC 8460 5.3 asks: multipart/report with
// report-type="tlsrpt", the gzipped JSON attached, TLS-Report-Domain and
// TLS-Report-Submitter headers, "TLS-Required: No", and a DKIM signature.
func (r *Reporter) mail(domain, to string, report Report, gz []byte) error {
	msg, err := r.message(domain, to, report, gz)
	if err != nil {
		return err
	}
	if keys := r.d.DKIM.Keys(queue.Domain(r.cfg.From)); len(keys) > 0 {
		sign, err := r.d.DKIM.Start(keys)
		if err != nil {
			return err
		}
		sign.Write(msg)
		sig, err := sign.Finish()
		if err != nil {
			return err
		}
		msg = append(sig, msg...)
	}
	env := queue.Envelope{From: r.cfg.From, TLSReport: true, TLSOptional: true, MessageID: messageID(msg),
		Recipients: []queue.Recipient{{Addr: to}}}
	if _, err := r.d.Queue.Enqueue("", env, bytes.NewReader(msg)); err != nil {
		return err
	}
	r.d.Kick()
	return nil
}

func (r *Reporter) message(domain, to string, report Report, gz []byte) ([]byte, error) {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	var b bytes.Buffer
	id := randomID()
	fmt.Fprintf(&b, "From: %s\r\n", r.cfg.From)
	fmt.Fprintf(&b, "To: %s\r\n", to)
	fmt.Fprintf(&b, "Date: %s\r\n", r.d.Clock().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Subject: Report Domain: %s Submitter: %s Report-ID: <%s>\r\n", domain, r.cfg.Submitter, report.ReportID)
	fmt.Fprintf(&b, "Message-ID: <%s@%s>\r\n", id, r.cfg.Submitter)
	fmt.Fprintf(&b, "TLS-Report-Domain: %s\r\n", domain)
	fmt.Fprintf(&b, "TLS-Report-Submitter: %s\r\n", r.cfg.Submitter)
	fmt.Fprintf(&b, "TLS-Required: No\r\n")
	fmt.Fprintf(&b, "MIME-Version: 1.0\r\n")
	fmt.Fprintf(&b, "Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"%s\"\r\n\r\n", mw.Boundary())
	text, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {`text/plain; charset="us-ascii"`}, "Content-Transfer-Encoding": {"7bit"}})
	fmt.Fprintf(text, "This is an aggregate TLS report from %s for %s, %s.\r\n", r.cfg.Submitter, domain, report.DateRange.Start.Format("2006-01-02"))
	name := fmt.Sprintf("%s!%s!%d!%d!%s.json.gz", r.cfg.Submitter, domain, report.DateRange.Start.Unix(), report.DateRange.End.Unix(), id[:8])
	att, _ := mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":              {"application/tlsrpt+gzip"},
		"Content-Transfer-Encoding": {"base64"},
		"Content-Disposition":       {`attachment; filename="` + name + `"`},
	})
	enc := base64.StdEncoding.EncodeToString(gz)
	for len(enc) > 76 {
		io.WriteString(att, enc[:76]+"\r\n")
		enc = enc[76:]
	}
	io.WriteString(att, enc+"\r\n")
	if err := mw.Close(); err != nil {
		return nil, err
	}
	b.Write(body.Bytes())
	return b.Bytes(), nil
}

func randomID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func messageID(msg []byte) string {
	for _, line := range strings.Split(string(msg), "\r\n") {
		if v, ok := strings.CutPrefix(line, "Message-ID: "); ok {
			return v
		}
		if line == "" {
			break
		}
	}
	return ""
}
