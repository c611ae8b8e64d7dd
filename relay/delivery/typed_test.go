package delivery

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
	"github.com/postern/postern/resolver"
	"github.com/postern/postern/tlspolicy"
)

// Decisions read typed fields, never the text of a reply or an error: in
// each case below the text says one thing and the fields another, and the
// fields win.

// addrResolver answers every address question alike.
type addrResolver struct {
	ans resolver.AddrAnswer
	err error
}

func (addrResolver) LookupMX(context.Context, string) (resolver.MXAnswer, error) {
	return resolver.MXAnswer{}, nil
}

func (r addrResolver) LookupAddrs(context.Context, string) (resolver.AddrAnswer, error) {
	return r.ans, r.err
}

// testAttempt is an attempt at one recipient of dest.test, whose message
// arrived age ago.
func testAttempt(res resolver.Resolver, age time.Duration) *attempt {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	e := New(Config{MaxQueueLifetime: 24 * time.Hour, Retry: []time.Duration{time.Minute}},
		Deps{Resolver: res, Log: slog.New(slog.DiscardHandler), Clock: func() time.Time { return now },
			Jitter: func(d time.Duration) time.Duration { return d }})
	m := queue.Message{ID: "q1", Envelope: queue.Envelope{From: "app@bounces.test", Arrival: now.Add(-age),
		Recipients: []queue.Recipient{{Addr: "a@dest.test"}}}}
	return &attempt{e: e, m: m, domain: "dest.test", idxs: []int{0}, now: now}
}

// A failed address lookup is reported to the domain's TLS reports as
// dnssec-invalid when the answer was bogus, and as validation-failure
// otherwise, whatever words the error uses (RFC 8460 4.3.2).
func TestAddressFailureResultIsTyped(t *testing.T) {
	for _, tc := range []struct {
		name string
		res  addrResolver
		want string
	}{
		{"an error that mentions DNSSEC", addrResolver{err: errors.New("A mx.dest.test: temporary DNS failure: upstream drops DNSSEC records")}, "validation-failure"},
		{"a bogus answer", addrResolver{ans: resolver.AddrAnswer{Security: resolver.Bogus, Reason: "signature expired"}}, "dnssec-invalid"},
		{"no address", addrResolver{ans: resolver.AddrAnswer{Security: resolver.Secure}}, "validation-failure"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := testAttempt(tc.res, time.Hour)
			_, f := a.addresses(context.Background(), Hop{Host: "mx.dest.test", Port: 25}, tlspolicy.Decision{})
			if f == nil || len(a.seen) != 1 || a.seen[0].Result != tc.want {
				t.Fatalf("failure %v, reported %+v; want one attempt with result %s", f, a.seen, tc.want)
			}
		})
	}
}

// A recipient's outcome carries its enhanced status as a field, and the
// audit trail calls a failure "expired" only when the queue lifetime ran
// out, whatever the reply says.
func TestOutcomeStatusAndExpiryAreTyped(t *testing.T) {
	for _, tc := range []struct {
		name       string
		age        time.Duration
		f          *Failure
		wantResult queue.Result
		wantStatus string
		wantAudit  string // "" for no audit record
	}{
		{"delivered", time.Hour, nil, queue.ResultDelivered, "2.0.0", audit.Delivered},
		{"refused for good", time.Hour, &Failure{Code: 550, Enhanced: "5.1.1", Text: "no such user"}, queue.ResultFailed, "5.1.1", audit.Bounced},
		{"deferred", time.Hour, &Failure{Temporary: true, Code: 451, Enhanced: "4.3.0", Text: "try later"}, queue.ResultDeferred, "4.3.0", ""},
		{"deferred past the queue lifetime", 25 * time.Hour, &Failure{Temporary: true, Code: 451, Enhanced: "4.3.0", Text: "try later"}, queue.ResultFailed, "4.4.7", audit.Expired},
		{"a permanent failure whose text starts as an expiry does", time.Hour, &Failure{Enhanced: "4.4.7", Text: "refused for good"}, queue.ResultFailed, "4.4.7", audit.Bounced},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := testAttempt(addrResolver{}, tc.age)
			o := a.record(0, tc.f, "mx.dest.test", netip.AddrPort{}, TLSInfo{}, "")
			if o.Result != tc.wantResult || o.Status != tc.wantStatus {
				t.Fatalf("outcome %v %q (%s); want %v %q", o.Result, o.Status, o.Reply, tc.wantResult, tc.wantStatus)
			}
			got := ""
			for _, j := range o.Journal {
				if r, ok, _ := audit.Decode(j); ok {
					got = r.Result
				}
			}
			if got != tc.wantAudit {
				t.Fatalf("audit result %q; want %q", got, tc.wantAudit)
			}
		})
	}
}

// A bounce states the status recorded with the failure; a failure given
// without one (the operator's queue bounce) states the generic 5.0.0.
func TestFailureReportStatusIsRecorded(t *testing.T) {
	a := testAttempt(addrResolver{}, time.Hour)
	m := queue.Message{Envelope: queue.Envelope{From: "app@bounces.test", Recipients: []queue.Recipient{
		{Addr: "a@dest.test", State: queue.Failed, LastReply: "550 5.1.1 no such user", LastStatus: "5.1.1"},
		{Addr: "b@dest.test", State: queue.Failed, LastReply: "returned by the operator (was 4.2.2 mailbox full)"},
		{Addr: "c@dest.test", State: queue.Delivered, LastReply: "250 2.0.0 accepted", LastStatus: "2.0.0"},
	}}}
	rcpts := a.e.failureReport(m)
	if len(rcpts) != 2 || rcpts[0].Status != "5.1.1" || rcpts[1].Status != "5.0.0" {
		t.Fatalf("report %+v; want 5.1.1 for a@ and 5.0.0 for b@", rcpts)
	}
}
