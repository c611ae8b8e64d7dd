package main

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/postern/postern/internal/admin"
	"github.com/postern/postern/relay/tlsrpt"
)

// tlsrptCommand shows and sends TLS reports (RFC 8460).
func tlsrptCommand(load func() (*Config, error)) *cobra.Command {
	cmd := &cobra.Command{Use: "tlsrpt", Short: "TLS reports (RFC 8460): what each destination's TLS policy met"}
	var dayText string
	var asJSON bool
	day := func(def time.Time) (time.Time, error) {
		if dayText == "" {
			return tlsrpt.Day(def), nil
		}
		d, err := time.Parse("2006-01-02", dayText)
		if err != nil {
			return time.Time{}, &exitError{code: 2, err: fmt.Errorf("--day %q: use 2006-01-02 (UTC)", dayText)}
		}
		return d, nil
	}
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the sessions per destination domain and policy for a UTC day (default today)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := day(time.Now())
			if err != nil {
				return err
			}
			return withOps(load, func(ops admin.Operations) error {
				agg, err := ops.TLSReports(d)
				if err != nil {
					return err
				}
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					return enc.Encode(agg)
				}
				domains := make([]string, 0, len(agg))
				for dom := range agg {
					domains = append(domains, dom)
				}
				sort.Strings(domains)
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintf(w, "DOMAIN\tPOLICY\tSUCCESSFUL\tFAILED\tFAILURES\n")
				for _, dom := range domains {
					for _, p := range agg[dom] {
						var failures []string
						for _, f := range p.FailureDetails {
							failures = append(failures, fmt.Sprintf("%s at %s: %d", f.ResultType, f.ReceivingMXHostname, f.FailedSessionCount))
						}
						fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\n", dom, p.Policy.Type, p.Summary.Successful, p.Summary.Failed, orDash(strings.Join(failures, "; ")))
					}
				}
				w.Flush()
				fmt.Fprintf(cmd.OutOrStdout(), "%s (UTC): %d domains\n", d.Format("2006-01-02"), len(domains))
				return nil
			})
		},
	}
	show.Flags().StringVar(&dayText, "day", "", "UTC day, 2006-01-02")
	show.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	send := &cobra.Command{
		Use:   "send",
		Short: "Send a UTC day's reports now (default yesterday); addresses already sent to are skipped",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := day(time.Now().Add(-24 * time.Hour))
			if err != nil {
				return err
			}
			return withOps(load, func(ops admin.Operations) error {
				out, err := ops.TLSReportSend(d)
				for _, o := range out {
					status := "sent"
					if o.Error != "" {
						status = "failed: " + o.Error
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s %s: %s\n", o.Domain, o.URI, status)
				}
				if len(out) == 0 && err == nil {
					fmt.Fprintf(cmd.OutOrStdout(), "nothing to send for %s\n", d.Format("2006-01-02"))
				}
				return err
			})
		},
	}
	send.Flags().StringVar(&dayText, "day", "", "UTC day, 2006-01-02")
	cmd.AddCommand(show, send)
	return cmd
}
