package delivery

// What an attempt leaves behind: the outcome of each recipient with its
// evidence, the log line and the metrics of each try, and how a failure
// from the wire is read.

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
)

// transactionResult names what a finished transaction did for its
// recipients: delivered (all), partial, deferred or refused (none).
func transactionResult(results []*Failure) string {
	delivered, temporary := 0, 0
	for _, f := range results {
		switch {
		case f == nil:
			delivered++
		case f.Temporary:
			temporary++
		}
	}
	switch {
	case delivered == len(results):
		return "delivered"
	case delivered > 0:
		return "partial"
	case temporary > 0:
		return "deferred"
	}
	return "refused"
}

func summarize(results []*Failure) string {
	var parts []string
	for _, f := range results {
		if f == nil {
			parts = append(parts, "250 accepted")
		} else {
			parts = append(parts, f.Error())
		}
	}
	return strings.Join(parts, "; ")
}

// log writes one line per attempt (or step given up), and counts it.
func (a *attempt) log(host string, addr netip.AddrPort, t TLSInfo, reply, result string) {
	e, m := a.e, a.m
	rcpts := make([]string, len(a.idxs))
	for k, i := range a.idxs {
		rcpts[k] = m.Recipients[i].Addr
	}
	ip := ""
	if addr.IsValid() {
		ip = addr.Addr().String()
	}
	e.d.Log.Info("delivery attempt", "queue_id", m.ID, "rcpts", rcpts, "mx", host, "ip", ip, "source_ip", t.SourceIP,
		"tls_version", t.Version, "tls_cipher", t.Cipher, "verified", t.Verified, "tls_auth", t.Auth, "tls_policy", t.Policy, "tls_policy_type", t.PolicyType, "tls_verify_failure", t.VerifyFailure, "tls_result", t.ResultType, "reply", reply,
		"delay", e.d.Clock().Sub(m.Arrival).Round(time.Millisecond), "result", result)
	e.metrics.attempt(result, t)
}

// fail records f for every recipient of the attempt.
func (a *attempt) fail(f *Failure) []queue.Outcome {
	out := make([]queue.Outcome, len(a.idxs))
	for k, i := range a.idxs {
		out[k] = a.record(i, f, f.Host, netip.AddrPort{}, TLSInfo{}, "")
	}
	return out
}

// record turns recipient i's result into what the queue records: a
// temporary failure is retried with backoff until the queue lifetime runs
// out, then fails (RFC 5321 4.5.4.1). A final outcome carries its audit
// record, which the queue journals in the same transaction as the outcome.
func (a *attempt) record(i int, f *Failure, host string, addr netip.AddrPort, t TLSInfo, source string) queue.Outcome {
	e, m, now := a.e, a.m, a.now
	o := queue.Outcome{Recipient: i, Host: host}
	expired := false
	switch {
	case f == nil:
		o.Result, o.Reply, o.Status = queue.ResultDelivered, "250 2.0.0 accepted", "2.0.0"
	case !f.Temporary:
		o.Result, o.Reply, o.Status = queue.ResultFailed, f.Error(), f.Enhanced
	case now.Sub(m.Arrival) >= e.cfg.MaxQueueLifetime:
		expired = true
		o.Result, o.Status = queue.ResultFailed, "4.4.7"
		o.Reply = "4.4.7 message expired after " + e.cfg.MaxQueueLifetime.String() + " in the queue; last error: " + f.Error()
	default:
		o.Result, o.Reply, o.Status = queue.ResultDeferred, f.Error(), f.Enhanced
		o.RetryAt = now.Add(e.backoff(m.Recipients[i].Attempts))
	}
	if o.Result == queue.ResultDeferred {
		return o
	}
	r := audit.Record{Time: now, QueueID: m.ID, MessageID: m.MessageID, Sender: m.From, Recipient: m.Recipients[o.Recipient].Addr,
		Result: audit.Delivered, MX: o.Host, TLSVersion: t.Version, TLSCipher: t.Cipher, PolicySource: source,
		PolicyMode: t.Policy, Verified: t.Verified, VerifiedBy: t.Auth, Reply: o.Reply, PeerCertSHA256: t.PeerSHA256,
		TLSFallback: t.Fallback, SourceIP: t.SourceIP}
	if o.Result == queue.ResultFailed {
		r.Result = audit.Bounced
		if expired {
			r.Result = audit.Expired
		}
	}
	if addr.IsValid() {
		r.IP = addr.Addr().String()
	}
	o.Journal = append(o.Journal, r.Encode())
	e.metrics.finished(r.Result, source, t.Verified, now.Sub(m.Arrival).Seconds())
	return o
}

// wantedTLS makes a permanent refusal that asks for TLS (530, or the
// enhanced codes 5.7.0 "security", 5.7.10 "encryption needed", 5.7.11
// "encryption required", RFC 3463 and RFC 5248) temporary: it was earned
// by the cleartext fallback, not by the message.
func wantedTLS(f *Failure) {
	if f.Temporary {
		return
	}
	switch {
	case f.Code == 530, f.Enhanced == "5.7.0", f.Enhanced == "5.7.10", f.Enhanced == "5.7.11":
		// Postern's own deferral (4.7.0), quoting the server, so that
		// a delay notice never carries a permanent status.
		f.Text = fmt.Sprintf("the server answered %q in a cleartext session after STARTTLS failed; the next try uses STARTTLS again", f.Error())
		f.Temporary, f.Code, f.Enhanced = true, 0, "4.7.0"
	}
}

func asFailureOrNil(err error) *Failure {
	var f *Failure
	if errors.As(err, &f) {
		return f
	}
	return nil
}

func orNoPolicy(policyType string) string {
	if policyType == "" {
		return "no-policy-found"
	}
	return policyType
}
