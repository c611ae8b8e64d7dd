package main

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/postern/postern/internal/admin"
	"github.com/postern/postern/internal/lab"
	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
	"github.com/postern/postern/relay/tlsrpt"
)

// outcome is what became of one destination's message.
type outcome struct {
	record    *audit.Record    // final: delivered, bounced, expired
	recipient *queue.Recipient // still queued, tried at least once
	failures  []string         // the TLS report's result types for the domain (RFC 8460 4.3)
	notice    *audit.Record    // a bounce's failure notice to the sender, once delivered
}

// settle waits until every destination's message is final or has been
// tried, and nothing in the queue (a bounce notice) is still untried.
func (d *demo) settle(ctx context.Context, timeout time.Duration) (map[string]outcome, error) {
	deadline := time.Now().Add(timeout)
	for {
		got, untried, err := d.outcomes()
		if err != nil {
			return nil, err
		}
		if len(got) == len(lab.Destinations()) && untried == 0 && reported(got) {
			fmt.Fprintf(d.out, "\nDelivery settled in %s.\n", time.Since(d.start).Round(100*time.Millisecond))
			return got, nil
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(d.out, "\nDelivery did not settle within %s; this is where it stands.\n", timeout)
			return got, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// reported says whether every failed attempt is in the TLS report data,
// which is written just after the attempt's outcome.
func reported(got map[string]outcome) bool {
	for _, o := range got {
		if o.recipient != nil && len(o.failures) == 0 {
			return false
		}
	}
	return true
}

// outcomes reads, through the admin socket as the CLI would, what became
// of each destination's message.
func (d *demo) outcomes() (map[string]outcome, int, error) {
	ops, err := openOperations(d.cfg)
	if err != nil {
		return nil, 0, err
	}
	defer ops.Close()
	got := map[string]outcome{}
	records, err := ops.Audit(audit.Filter{Since: d.start.Add(-time.Minute)})
	if err != nil {
		return nil, 0, err
	}
	for i, r := range records {
		got[queue.Domain(r.Recipient)] = outcome{record: &records[i]}
	}
	msgs, err := ops.QueueList(queue.Filter{})
	if err != nil {
		return nil, 0, err
	}
	untried := 0
	for _, m := range msgs {
		for i, r := range m.Recipients {
			if r.State.Final() {
				continue
			}
			if r.Attempts == 0 {
				untried++
				continue
			}
			if _, ok := got[queue.Domain(r.Addr)]; !ok {
				got[queue.Domain(r.Addr)] = outcome{recipient: &m.Recipients[i]}
			}
		}
	}
	if notice, ok := got[lab.SenderDomain]; ok {
		// The failure notice of a bounce, to the sender.
		for domain, o := range got {
			if o.record != nil && o.record.Result != audit.Delivered {
				o.notice = notice.record
				got[domain] = o
			}
		}
		delete(got, lab.SenderDomain)
	}
	if err := d.addFailures(ops, got); err != nil {
		return nil, 0, err
	}
	return got, untried, nil
}

// addFailures adds to each waiting destination what its TLS report will
// say about the failed attempts: "postern tlsrpt show" reads the same, by
// UTC day.
func (d *demo) addFailures(ops admin.Operations, got map[string]outcome) error {
	for _, day := range []time.Time{tlsrpt.Day(d.start), tlsrpt.Day(time.Now())} {
		reports, err := ops.TLSReports(day)
		if err != nil {
			return err
		}
		for domain, results := range reports {
			o, ok := got[domain]
			if !ok || o.recipient == nil {
				continue
			}
			for _, pr := range results {
				for _, f := range pr.FailureDetails {
					if !slices.Contains(o.failures, f.ResultType) {
						o.failures = append(o.failures, f.ResultType)
					}
				}
			}
			got[domain] = o
		}
		if tlsrpt.Day(d.start).Equal(tlsrpt.Day(time.Now())) {
			break
		}
	}
	return nil
}

// report prints, per destination, the policy check, the outcome and
// whether it is what the policy demands; then the audit table.
func (d *demo) report(ids map[string]string, got map[string]outcome) (bool, error) {
	res, _, err := d.cfg.resolver(errorsOnly())
	if err != nil {
		return false, err
	}
	// Without the state database (the daemon holds it): policies are
	// fetched afresh, exactly as "postern policy check" does.
	engine, _, err := d.cfg.tlsPolicy(res, nil, errorsOnly())
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	good := true
	for _, dest := range lab.Destinations() {
		fmt.Fprintf(d.out, "\n== %s (queue ID %s)\n", dest.Domain, orDash(ids[dest.Domain]))
		fmt.Fprintf(d.out, "   publishes: %s\n   demands:   %s\n   postern policy check %s:\n", dest.Publishes, dest.Demands, dest.Domain)
		r := engine.Check(ctx, dest.Domain, d.cfg.Delivery.Port)
		printReport(&indent{w: d.out, prefix: "     "}, r, d.cfg.Delivery.Port, false)
		text, ok := judge(dest.Expect, got[dest.Domain])
		verdict := "as its policy demands"
		if !ok {
			verdict, good = "NOT AS ITS POLICY DEMANDS", false
		}
		fmt.Fprintf(d.out, "   outcome: %s\n   => %s\n", text, verdict)
	}
	ops, err := openOperations(d.cfg)
	if err != nil {
		return false, err
	}
	defer ops.Close()
	records, err := ops.Audit(audit.Filter{})
	if err != nil {
		return false, err
	}
	fmt.Fprintf(d.out, "\nThe audit trail (postern audit):\n")
	if err := printAudit(d.out, records, "table"); err != nil {
		return false, err
	}
	fmt.Fprintf(d.out, "(the delivery to demo@%s is the bounce's failure notice, back to the sender; the mail still queued has no record yet)\n", lab.SenderDomain)
	if good {
		fmt.Fprintf(d.out, "\nEvery destination got what its policy demands.\n")
	}
	return good, nil
}

// judge says what happened to a destination's message and whether it is
// what its policy demands, from typed fields only.
func judge(want lab.Expect, o outcome) (string, bool) {
	switch {
	case o.record != nil:
		r := o.record
		switch r.Result {
		case audit.Delivered:
			how := "unverified"
			if r.Verified {
				how = "verified by " + r.VerifiedBy
			}
			tlsText := "without TLS"
			if r.TLSVersion != "" {
				tlsText = "over " + r.TLSVersion
			}
			text := fmt.Sprintf("delivered %s, %s, to %s [%s], policy %s; %q", tlsText, how, r.MX, r.IP, orDash(r.PolicyMode), r.Reply)
			ok := want.Result == "delivered" && r.Verified == (want.VerifiedBy != "") && r.VerifiedBy == want.VerifiedBy && r.TLSVersion != ""
			return text, ok
		default:
			told := "its failure notice to the sender is not delivered yet"
			if o.notice != nil {
				told = fmt.Sprintf("its failure notice was delivered to %s at %s", o.notice.Recipient, o.notice.MX)
			}
			text := fmt.Sprintf("%s: %q; %s", r.Result, r.Reply, told)
			return text, want.Result == "bounced" && r.Result == audit.Bounced && statusOf(r.Reply) == want.Status
		}
	case o.recipient != nil:
		r := o.recipient
		text := fmt.Sprintf("waiting in the queue (%d attempt(s), next %s; TLS report result: %s): %s", r.Attempts,
			r.Due.Local().Format(time.TimeOnly), orDash(strings.Join(o.failures, ", ")), r.LastReply)
		return text, want.Result == "waiting" && strings.HasPrefix(r.LastStatus, want.Status) && slices.Contains(o.failures, want.Failure)
	}
	return "nothing yet: not tried", false
}

// statusOf is the enhanced status code (RFC 3463) in an audit record's
// reply ("550 5.1.10 …", or "5.1.10 …" for a bounce decided here): the
// record keeps the reply as text, not its parts.
func statusOf(reply string) string {
	for _, f := range strings.Fields(reply) {
		if enhancedCode.MatchString(f) {
			return f
		}
	}
	return ""
}

var enhancedCode = regexp.MustCompile(`^[245]\.[0-9]{1,3}\.[0-9]{1,3}$`)

// indent prefixes every line written through it.
type indent struct {
	w      io.Writer
	prefix string
	mid    bool // inside a line
}

func (in *indent) Write(p []byte) (int, error) {
	var b strings.Builder
	for _, c := range string(p) {
		if !in.mid {
			b.WriteString(in.prefix)
		}
		b.WriteRune(c)
		in.mid = c != '\n'
	}
	if _, err := io.WriteString(in.w, b.String()); err != nil {
		return 0, err
	}
	return len(p), nil
}
