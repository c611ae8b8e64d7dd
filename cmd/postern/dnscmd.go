package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/spf13/cobra"

	"github.com/postern/postern/resolver"
)

// dnsCommand looks names up the way delivery does, through the configured
// upstreams and trust anchors, and shows how each answer was validated.
func dnsCommand(load func() (*Config, error)) *cobra.Command {
	cmd := &cobra.Command{Use: "dns", Short: "Ask DNS as delivery does, with DNSSEC validation"}
	var asJSON bool
	lookup := &cobra.Command{
		Use:   "lookup NAME [TYPE]",
		Short: "Print the records, their DNSSEC status and the chain of trust (exit 4 when bogus)",
		Long: "Resolves NAME (type A when TYPE is absent) through dns.servers and validates it from the\n" +
			"configured trust anchors, like delv: the records, secure/insecure/bogus/indeterminate, why,\n" +
			"and each key, DS and denial proof on the way. Exit status 4 when the answer is bogus.",
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			qtype := dns.TypeA
			if len(args) == 2 {
				t, ok := dns.StringToType[strings.ToUpper(args[1])]
				if !ok {
					return &exitError{code: 2, err: fmt.Errorf("unknown record type %q", args[1])}
				}
				qtype = t
			}
			res, err := cliResolver(load)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			a, err := res.Lookup(ctx, args[0], qtype)
			if err != nil {
				return err
			}
			if asJSON {
				printAnswerJSON(cmd, a)
			} else {
				printAnswer(cmd, a)
			}
			if a.Security == resolver.Bogus {
				return &exitError{code: 4, err: fmt.Errorf("%s %s is bogus: %s", a.Name, dns.TypeToString[qtype], a.Reason)}
			}
			return nil
		},
	}
	lookup.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	probe := &cobra.Command{
		Use:   "probe",
		Short: "Check that the upstream resolvers pass DNSSEC records over UDP and TCP (exit 4 when not)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := cliResolver(load)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// The same sustained diagnosis as the daemon's: probes in a row
			// until they can tell.
			h := res.Diagnose(ctx)
			switch {
			case h.Broken:
				return &exitError{code: 4, err: fmt.Errorf("upstream breaks DNSSEC: %s", h.Problem)}
			case h.Unreachable() != "":
				return &exitError{code: 4, err: fmt.Errorf("upstream did not answer the DNSSEC probe (unreachable, which says nothing about DNSSEC): %s", h.Unreachable())}
			case h.Suspect():
				return &exitError{code: 4, err: fmt.Errorf("upstream answered without DNSSEC records, though not in %d probes in a row: %+v", resolver.BrokenAfterProbes, h.Findings)}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "upstream passes DNSSEC records over UDP and TCP (dnssec: %s)\n", res.Mode())
			return nil
		},
	}
	cmd.AddCommand(lookup, probe)
	return cmd
}

func cliResolver(load func() (*Config, error)) (*resolver.Client, error) {
	cfg, err := load()
	if err != nil {
		return nil, err
	}
	res, _, err := cfg.resolver(errorsOnly())
	return res, err
}

// errorsOnly is the logger of one-shot commands: their output is the answer.
func errorsOnly() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

func printAnswer(cmd *cobra.Command, a resolver.Answer) {
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, ";; %s %s: %s", a.Name, dns.TypeToString[a.Type], a.Security)
	if a.NXDomain {
		fmt.Fprint(out, ", no such name (NXDOMAIN)")
	} else if len(a.Records) == 0 {
		fmt.Fprint(out, ", no records of this type (NODATA)")
	}
	fmt.Fprintf(out, ", ttl %s\n", a.TTL)
	if a.Reason != "" {
		fmt.Fprintf(out, ";; why: %s\n", a.Reason)
	}
	for _, alias := range a.Aliases {
		fmt.Fprintf(out, ";; via alias %s\n", alias)
	}
	for _, rr := range a.Records {
		fmt.Fprintln(out, rr.String())
	}
	if len(a.Proof) > 0 {
		fmt.Fprintln(out, ";; chain of trust:")
		for _, step := range a.Proof {
			fmt.Fprintf(out, ";;   %s\n", step)
		}
	}
}

func printAnswerJSON(cmd *cobra.Command, a resolver.Answer) {
	records := []string{}
	for _, rr := range a.Records {
		records = append(records, rr.String())
	}
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetIndent("", "  ")
	enc.Encode(map[string]any{
		"name": a.Name, "type": dns.TypeToString[a.Type], "security": a.Security.String(), "reason": a.Reason,
		"nxdomain": a.NXDomain, "ttl_seconds": int(a.TTL.Seconds()), "aliases": a.Aliases, "records": records, "proof": a.Proof,
	})
}
