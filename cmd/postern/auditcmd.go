package main

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/postern/postern/internal/admin"
	"github.com/postern/postern/relay/audit"
)

// auditCommand answers an auditor: how did every message to this domain
// leave, and was any of it unverified?
func auditCommand(load func() (*Config, error)) *cobra.Command {
	var f audit.Filter
	var since, until, format string
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show the delivery evidence: how each recipient's mail left, over what TLS, verified how",
		Long: "Prints one record per recipient delivered, bounced or expired: time, queue ID, Message-ID,\n" +
			"sender, recipient, MX, IP, TLS version and cipher, the peer certificate's SHA-256, the TLS\n" +
			"policy and how the peer was authenticated (DANE-EE, DANE-TA, PKIX), and the remote reply.\n" +
			"Times are RFC 3339, a date (2026-11-01), or a duration back from now (24h).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			now := time.Now()
			if f.Since, err = parseWhen(since, now); err != nil {
				return &exitError{code: 2, err: fmt.Errorf("--since: %w", err)}
			}
			if f.Until, err = parseWhen(until, now); err != nil {
				return &exitError{code: 2, err: fmt.Errorf("--until: %w", err)}
			}
			if format != "table" && format != "json" && format != "csv" {
				return &exitError{code: 2, err: fmt.Errorf("--format %q: use table, json or csv", format)}
			}
			return withOps(load, func(ops admin.Operations) error {
				records, err := ops.Audit(f)
				if err != nil {
					return err
				}
				return printAudit(cmd.OutOrStdout(), records, format)
			})
		},
	}
	cmd.Flags().StringVar(&f.RcptDomain, "rcpt-domain", "", "only recipients in this domain")
	cmd.Flags().StringVar(&f.MessageID, "message-id", "", "only this message: its Message-ID header or its queue ID")
	cmd.Flags().StringVar(&since, "since", "", "from this time")
	cmd.Flags().StringVar(&until, "until", "", "up to this time")
	cmd.Flags().StringVar(&format, "format", "table", "table, json or csv")
	return cmd
}

// parseWhen reads an RFC 3339 time, a date, or a duration before now.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q is neither a time (2026-11-01T10:00:00Z), a date nor a duration (24h)", s)
}

var auditColumns = []string{"time", "queue_id", "message_id", "sender", "recipient", "result", "mx", "ip",
	"tls_version", "tls_cipher", "peer_cert_sha256", "policy_source", "policy_mode", "verified", "verified_by", "reply"}

func auditRow(r audit.Record) []string {
	return []string{r.Time.UTC().Format(time.RFC3339), r.QueueID, r.MessageID, r.Sender, r.Recipient, r.Result, r.MX, r.IP,
		r.TLSVersion, r.TLSCipher, r.PeerCertSHA256, r.PolicySource, r.PolicyMode, strconv.FormatBool(r.Verified), r.VerifiedBy, r.Reply}
}

func printAudit(out io.Writer, records []audit.Record, format string) error {
	switch format {
	case "json":
		enc := json.NewEncoder(out)
		for _, r := range records {
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
		return nil
	case "csv":
		w := csv.NewWriter(out)
		w.Write(auditColumns)
		for _, r := range records {
			w.Write(auditRow(r))
		}
		w.Flush()
		return w.Error()
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TIME\tRECIPIENT\tRESULT\tMX\tTLS\tPOLICY\tVERIFIED\tQUEUE ID")
	verified, unverified, failed := 0, 0, 0
	for _, r := range records {
		tlsText := "none"
		if r.TLSVersion != "" {
			tlsText = r.TLSVersion
		}
		by := "no"
		if r.Verified {
			by = r.VerifiedBy
		}
		switch {
		case r.Result != audit.Delivered:
			failed++
		case r.Verified:
			verified++
		default:
			unverified++
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Time.UTC().Format(time.DateTime), r.Recipient, r.Result,
			orDash(r.MX), tlsText, orDash(r.PolicyMode), by, r.QueueID)
	}
	w.Flush()
	fmt.Fprintf(out, "%d records: %d delivered verified, %d delivered unverified, %d bounced or expired\n",
		len(records), verified, unverified, failed)
	return nil
}

func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
