// Package tlsrpt implements SMTP TLS Reporting (RFC 8460): what each
// delivery attempt saw of the recipient domain's TLS policy is journalled
// with the attempt's outcome, aggregated per policy domain and UTC day,
// and turned into the JSON report the domain asks for in its
// _smtp._tls TXT record.
package tlsrpt

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/postern/postern/internal/mailname"
	"github.com/postern/postern/queue"
)

// Kind is the first byte of an attempt in the queue journal.
const Kind = 'T'

// Attempt is what one connection attempt under a recipient domain's TLS
// policy saw: a success, or a failure with its RFC 8460 result type.
type Attempt struct {
	PolicyDomain  string   `json:"d"`
	PolicyType    string   `json:"pt"` // tlsa, sts, no-policy-found
	PolicyStrings []string `json:"ps,omitempty"`
	MXHost        string   `json:"mx"`
	ReceivingIP   string   `json:"ip,omitempty"`
	Result        string   `json:"r,omitempty"` // "" for a successful session
	Info          string   `json:"i,omitempty"`
}

// DecodeAttempt reads a journal entry; ok is false for entries of other
// kinds, and for an attempt that does not decode (err says why).
func DecodeAttempt(entry []byte) (a Attempt, ok bool, err error) {
	if len(entry) == 0 || entry[0] != Kind {
		return a, false, nil
	}
	if err := json.Unmarshal(entry[1:], &a); err != nil {
		return a, false, err
	}
	return a, true, nil
}

// Encode is the attempt as stored in the journal.
func (a Attempt) Encode() []byte {
	b, _ := json.Marshal(a)
	return append([]byte{Kind}, b...)
}

// Journal is where attempts are read from: the queue.
type Journal interface {
	ReadJournal(from, to time.Time, fn func(queue.JournalEntry) bool) error
}

// Report is the RFC 8460 section 4.4 report for one policy domain and day.
type Report struct {
	OrganizationName string         `json:"organization-name"`
	DateRange        DateRange      `json:"date-range"`
	ContactInfo      string         `json:"contact-info"`
	ReportID         string         `json:"report-id"`
	Policies         []PolicyResult `json:"policies"`
}

// DateRange is the UTC day covered.
type DateRange struct {
	Start time.Time `json:"start-datetime"`
	End   time.Time `json:"end-datetime"`
}

// PolicyResult is one policy's sessions.
type PolicyResult struct {
	Policy         Policy          `json:"policy"`
	Summary        Summary         `json:"summary"`
	FailureDetails []FailureDetail `json:"failure-details,omitempty"`
}

// Policy describes the policy applied (RFC 8460 4.4 policy).
type Policy struct {
	Type   string   `json:"policy-type"`
	String []string `json:"policy-string,omitempty"`
	Domain string   `json:"policy-domain"`
	MXHost []string `json:"mx-host,omitempty"`
}

// Summary counts sessions.
type Summary struct {
	Successful int `json:"total-successful-session-count"`
	Failed     int `json:"total-failure-session-count"`
}

// FailureDetail groups failed sessions alike.
type FailureDetail struct {
	ResultType          string `json:"result-type"`
	ReceivingMXHostname string `json:"receiving-mx-hostname,omitempty"`
	ReceivingIP         string `json:"receiving-ip,omitempty"`
	FailedSessionCount  int    `json:"failed-session-count"`
	AdditionalInfo      string `json:"additional-information,omitempty"`
}

// Day is the UTC day that holds t.
func Day(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// Aggregate reads the attempts journalled during day (UTC) and returns
// them per policy domain, policies and failures in a stable order.
func Aggregate(j Journal, day time.Time) (map[string][]PolicyResult, error) {
	start := Day(day)
	type policyKey struct{ domain, ptype, strings string }
	type failKey struct{ result, mx, ip, info string }
	results := map[policyKey]*PolicyResult{}
	failures := map[policyKey]map[failKey]int{}
	var bad error
	err := j.ReadJournal(start, start.Add(24*time.Hour), func(e queue.JournalEntry) bool {
		a, ok, err := DecodeAttempt(e.Data)
		if err != nil {
			bad = fmt.Errorf("journal entry of %s: %w", e.Time.Format(time.RFC3339), err)
		}
		if !ok {
			return true
		}
		k := policyKey{mailname.Normalize(a.PolicyDomain), a.PolicyType, strings.Join(a.PolicyStrings, "\n")}
		r := results[k]
		if r == nil {
			r = &PolicyResult{Policy: Policy{Type: a.PolicyType, String: a.PolicyStrings, Domain: k.domain}}
			if a.PolicyType == "sts" {
				r.Policy.MXHost = stsMXPatterns(a.PolicyStrings)
			}
			results[k] = r
			failures[k] = map[failKey]int{}
		}
		if a.Result == "" {
			r.Summary.Successful++
			return true
		}
		r.Summary.Failed++
		failures[k][failKey{a.Result, a.MXHost, a.ReceivingIP, a.Info}]++
		return true
	})
	if err != nil {
		return nil, err
	}
	out := map[string][]PolicyResult{}
	keys := make([]policyKey, 0, len(results))
	for k := range results {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		return a.domain+"\x00"+a.ptype+"\x00"+a.strings < b.domain+"\x00"+b.ptype+"\x00"+b.strings
	})
	for _, k := range keys {
		r := results[k]
		for f, n := range failures[k] {
			r.FailureDetails = append(r.FailureDetails, FailureDetail{ResultType: f.result, ReceivingMXHostname: f.mx,
				ReceivingIP: f.ip, FailedSessionCount: n, AdditionalInfo: f.info})
		}
		sort.Slice(r.FailureDetails, func(i, j int) bool {
			a, b := r.FailureDetails[i], r.FailureDetails[j]
			return a.ResultType+a.ReceivingMXHostname+a.ReceivingIP+a.AdditionalInfo < b.ResultType+b.ReceivingMXHostname+b.ReceivingIP+b.AdditionalInfo
		})
		out[k.domain] = append(out[k.domain], *r)
	}
	return out, bad
}

func stsMXPatterns(policy []string) []string {
	var out []string
	for _, l := range policy {
		if mx, ok := strings.CutPrefix(l, "mx: "); ok {
			out = append(out, mx)
		}
	}
	return out
}

// NewReport assembles the report of domain for day; the report ID names
// the day, the domain and the submitter, with a random part so that a
// report sent again (tlsrpt send) is told apart.
func NewReport(organization, contact, submitter, domain string, day time.Time, policies []PolicyResult) Report {
	start := Day(day)
	var nonce [4]byte
	rand.Read(nonce[:])
	return Report{
		OrganizationName: organization,
		DateRange:        DateRange{Start: start, End: start.Add(24*time.Hour - time.Second)},
		ContactInfo:      contact,
		ReportID:         fmt.Sprintf("%s.%s.%x@%s", start.Format("20060102"), domain, nonce, submitter),
		Policies:         policies,
	}
}

// ParseRecord reads an _smtp._tls TXT record (RFC 8460 3): "v=TLSRPTv1;"
// first, then rua= with one or more comma-separated mailto: or https: URIs.
func ParseRecord(txt string) ([]*url.URL, error) {
	fields := strings.Split(txt, ";")
	if strings.TrimSpace(fields[0]) != "v=TLSRPTv1" {
		return nil, errors.New("does not begin with v=TLSRPTv1")
	}
	var out []*url.URL
	seen := false
	for _, f := range fields[1:] {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("field %q has no value", f)
		}
		if strings.TrimSpace(k) != "rua" {
			continue // extensions are ignored
		}
		if seen {
			return nil, errors.New("rua given twice")
		}
		seen = true
		for _, raw := range strings.Split(v, ",") {
			u, err := url.Parse(strings.TrimSpace(raw))
			if err != nil {
				return nil, fmt.Errorf("rua %q: %w", raw, err)
			}
			switch u.Scheme {
			case "mailto":
				if _, err := mail.ParseAddress(u.Opaque); err != nil || u.Opaque == "" {
					return nil, fmt.Errorf("rua %q is not a mail address", raw)
				}
			case "https":
				if u.Host == "" {
					return nil, fmt.Errorf("rua %q has no host", raw)
				}
			default:
				return nil, fmt.Errorf("rua %q: only mailto: and https: are defined", raw)
			}
			out = append(out, u)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no rua")
	}
	return out, nil
}

// FindRecord picks the report addresses from a domain's TXT records at
// _smtp._tls: exactly one v=TLSRPTv1 record must be there.
func FindRecord(txts []string) ([]*url.URL, error) {
	var found []string
	for _, t := range txts {
		if strings.HasPrefix(t, "v=TLSRPTv1") {
			found = append(found, t)
		}
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("%d v=TLSRPTv1 records", len(found))
	}
	return ParseRecord(found[0])
}
