package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/internal/admin"
	"github.com/postern/postern/relay/delivery"
	"github.com/postern/postern/resolver"
	"github.com/postern/postern/tlspolicy"
)

// policyCommand shows what the TLS policy engine decides for a domain.
func policyCommand(load func() (*Config, error)) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Explain the outbound TLS policy for a domain"}
	var port int
	var connect bool
	check := &cobra.Command{
		Use:   "check DOMAIN",
		Short: "Show the MX set, DANE, MTA-STS and local policy, and the decision per MX (exit 4 when undeliverable)",
		Long: "Looks the domain up as delivery does (through dns.servers, validating DNSSEC) and prints\n" +
			"the MX set with its DNSSEC status, the TLSA records of each MX and whether they are usable,\n" +
			"the MTA-STS record and policy (and what is cached), the local tls.policies entry, and the\n" +
			"decision for each MX with its reason. With --connect it also connects to each MX (as\n" +
			"posttls-finger does) and reports STARTTLS, protocol, cipher, chain and whether DANE or PKIX\n" +
			"verification passes. Exit status 4 when no MX may be used (or, with --connect, reached) under the policy.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := load()
			if err != nil {
				return err
			}
			if port == 0 {
				port = cfg.Delivery.Port
			}
			// A running daemon answers with its own engine: its MTA-STS
			// cache and downgrade memory, which it holds in state.db.
			if daemonRuns(cfg) {
				rep, err := admin.NewClient(cfg.socketPath()).PolicyCheck(args[0], port)
				if err != nil {
					return err
				}
				fmt.Fprint(cmd.OutOrStdout(), rep.Text)
				if !rep.Deliverable {
					return &exitError{code: exitCheckFail, err: fmt.Errorf("%s cannot be delivered under its TLS policy", args[0])}
				}
				if !connect {
					return nil
				}
			}
			quiet := errorsOnly()
			res, _, err := cfg.resolver(quiet)
			if err != nil {
				return err
			}
			// The MTA-STS cache lives in state.db, which a running daemon
			// holds; then the policy is fetched afresh and not stored. So
			// it is when this runs as another user than data_dir's owner,
			// who would make a state.db the daemon cannot open.
			var db *bolt.DB
			if checkDataDirOwner(cfg.DataDir) == nil && os.MkdirAll(cfg.DataDir, 0o700) == nil {
				db, _ = bolt.Open(cfg.statePath(), 0o600, &bolt.Options{Timeout: 200 * time.Millisecond})
			}
			if db != nil {
				defer db.Close()
			}
			engine, _, err := cfg.tlsPolicy(res, db, quiet)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			r := engine.Check(ctx, args[0], port)
			if !daemonRuns(cfg) { // else the daemon's report is printed; this one is for --connect
				printReport(cmd.OutOrStdout(), r, port, db == nil)
				printMemory(cmd.OutOrStdout(), engine, r.Domain, cfg.TLS.DowngradeMemory, db != nil)
			}
			// A routed domain's mail never goes to its MX set: say where it
			// goes, and under which decision, as delivery would.
			route, routed := delivery.RouteFor(cfg.deliveryConfig().Routes, r.Domain)
			if routed {
				fmt.Fprintf(cmd.OutOrStdout(), "  route %s: delivery goes to %s port %d, not to the MX hosts above\n", route.Match, route.Host, route.Port)
				d, own := delivery.OwnRouteDecision(route, nil)
				var refused error
				if !own {
					d, refused = engine.Decide(ctx, tlspolicy.Request{Domain: r.Domain, MXHost: route.Host, Port: route.Port, Route: true})
				}
				if refused != nil {
					fmt.Fprintf(cmd.OutOrStdout(), "    decision: do not use: %v\n", refused)
					return &exitError{code: 4, err: fmt.Errorf("%s cannot be delivered under its TLS policy", r.Domain)}
				}
				fmt.Fprintf(cmd.OutOrStdout(), "    decision: %s (%s)\n", d.Describe(), d.Reason)
			}
			if !routed && !r.Deliverable() {
				return &exitError{code: 4, err: fmt.Errorf("%s cannot be delivered under its TLS policy", r.Domain)}
			}
			if connect && !routed && !probeHosts(ctx, cmd.OutOrStdout(), cfg.Hostname, r, port) {
				return &exitError{code: 4, err: fmt.Errorf("no MX of %s could be reached under its TLS policy", r.Domain)}
			}
			return nil
		},
	}
	check.Flags().IntVar(&port, "port", 0, "SMTP port of the MX hosts (default delivery.port)")
	check.Flags().BoolVar(&connect, "connect", false, "also connect to each MX and report its TLS")
	forget := &cobra.Command{
		Use:   "forget DOMAIN",
		Short: "Clear the downgrade memory of a domain (after a genuine change of its TLS)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withOps(load, func(ops admin.Operations) error {
				if err := ops.PolicyForget(args[0]); err != nil {
					return &exitError{code: 3, err: err}
				}
				fmt.Fprintf(cmd.OutOrStdout(), "forgot the TLS history of %s\n", args[0])
				return nil
			})
		},
	}
	cmd.AddCommand(check, forget)
	return cmd
}

// daemonRuns reports whether the daemon answers on its admin socket.
func daemonRuns(cfg *Config) bool {
	c, err := net.DialTimeout("unix", cfg.socketPath(), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// checkPolicy runs "policy check" on an engine, for the daemon.
func checkPolicy(ctx context.Context, engine *tlspolicy.Engine, domain string, port int, memoryMode string) admin.PolicyReport {
	r := engine.Check(ctx, domain, port)
	var b strings.Builder
	printReport(&b, r, port, false)
	printMemory(&b, engine, r.Domain, memoryMode, true)
	return admin.PolicyReport{Text: b.String(), Deliverable: r.Deliverable()}
}

func printMemory(out io.Writer, engine *tlspolicy.Engine, domain, mode string, haveDB bool) {
	if m, ok := engine.Memory(domain); ok {
		fmt.Fprintf(out, "  downgrade memory (%s): %s TLS since %s, last %s\n", mode, m.Best,
			m.First.UTC().Format(time.RFC3339), m.Last.UTC().Format(time.RFC3339))
	} else if haveDB {
		fmt.Fprintf(out, "  downgrade memory (%s): nothing remembered\n", mode)
	}
}

func printReport(out io.Writer, r tlspolicy.Report, port int, noCache bool) {
	fmt.Fprintf(out, "domain %s\n", r.Domain)
	switch {
	case r.MXErr != nil:
		fmt.Fprintf(out, "  MX: lookup failed: %v\n", r.MXErr)
	case r.MX.Security == resolver.Bogus:
		fmt.Fprintf(out, "  MX: bogus (DNSSEC validation failed): %s\n", r.MX.Reason)
	case r.MX.NXDomain:
		fmt.Fprintf(out, "  MX: the domain does not exist (%s)\n", r.MX.Security)
	default:
		var hosts []string
		for _, mx := range r.MX.Records {
			hosts = append(hosts, fmt.Sprintf("%d %s", mx.Preference, orNull(mx.Host)))
		}
		if len(hosts) == 0 {
			hosts = []string{"none: the domain itself is the implicit MX"}
		}
		fmt.Fprintf(out, "  MX (%s): %s\n", r.MX.Security, strings.Join(hosts, ", "))
		if r.MX.Reason != "" {
			fmt.Fprintf(out, "    why: %s\n", r.MX.Reason)
		}
	}
	switch {
	case r.STSErr != nil:
		fmt.Fprintf(out, "  MTA-STS record: lookup failed: %v\n", r.STSErr)
	case len(r.STSRecords) == 0:
		fmt.Fprintf(out, "  MTA-STS record: none\n")
	default:
		fmt.Fprintf(out, "  MTA-STS record: %s\n", strings.Join(r.STSRecords, " | "))
	}
	if r.STSPolicy != nil {
		fmt.Fprintf(out, "  MTA-STS policy: %s\n", strings.Join(r.STSPolicy.Strings(), "; "))
	}
	if r.STSFailure != "" {
		fmt.Fprintf(out, "  MTA-STS fetch failed: %s\n", r.STSFailure)
	}
	switch {
	case noCache:
		fmt.Fprintf(out, "  MTA-STS cache: not readable (state.db belongs to another user); fetched afresh\n")
	case r.STSCached != nil:
		fmt.Fprintf(out, "  MTA-STS cache: id %s, fetched %s, expires %s\n", r.STSCached.ID,
			r.STSCached.Fetched.UTC().Format(time.RFC3339), r.STSCached.Expires.UTC().Format(time.RFC3339))
	}
	switch {
	case r.Local != nil:
		l := r.Local
		fmt.Fprintf(out, "  local policy: %s %s", l.Domain, l.Mode)
		if l.Override {
			fmt.Fprint(out, " (override)")
		}
		if !l.Until.IsZero() {
			fmt.Fprintf(out, " until %s", l.Until.UTC().Format(time.RFC3339))
		}
		fmt.Fprintln(out)
	case r.Lapsed != nil:
		fmt.Fprintf(out, "  local policy: %s %s lapsed at %s\n", r.Lapsed.Domain, r.Lapsed.Mode, r.Lapsed.Until.UTC().Format(time.RFC3339))
	default:
		fmt.Fprintf(out, "  local policy: none (tls.default applies)\n")
	}
	for _, h := range r.Hosts {
		fmt.Fprintf(out, "  mx %s\n", h.Host)
		if h.AddrErr != nil {
			fmt.Fprintf(out, "    addresses: lookup failed: %v\n", h.AddrErr)
		} else {
			fmt.Fprintf(out, "    addresses (%s): %v\n", h.Addrs.Security, h.Addrs.Addrs)
		}
		base := h.Host
		if h.TLSABase != "" {
			base = h.TLSABase
		}
		switch {
		case h.TLSAErr != nil:
			fmt.Fprintf(out, "    TLSA _%d._tcp.%s: lookup failed: %v\n", port, base, h.TLSAErr)
		case len(h.TLSA.Records) == 0:
			fmt.Fprintf(out, "    TLSA _%d._tcp.%s (%s): none\n", port, base, h.TLSA.Security)
		default:
			fmt.Fprintf(out, "    TLSA _%d._tcp.%s (%s): %d records, %d usable\n", port, base, h.TLSA.Security, len(h.TLSA.Records), h.Usable)
		}
		if h.Refused != nil {
			fmt.Fprintf(out, "    decision: do not use: %v\n", h.Refused)
			continue
		}
		fmt.Fprintf(out, "    decision: %s (%s)\n", h.Decision.Describe(), h.Decision.Reason)
	}
}

// probeHosts connects to the addresses of each usable MX under its
// decision; it reports whether any session could be had.
func probeHosts(ctx context.Context, out io.Writer, hostname string, r tlspolicy.Report, port int) bool {
	ok := false
	for _, h := range r.Hosts {
		if h.Refused != nil {
			continue
		}
		fmt.Fprintf(out, "  connect %s (%s)\n", h.Host, h.Decision.Describe())
		for i, a := range h.Addrs.Addrs {
			if i == 2 {
				break
			}
			addr := netip.AddrPortFrom(a, uint16(port))
			info, err := delivery.Probe(ctx, hostname, h.Host, addr, h.Decision, 20*time.Second)
			if err != nil {
				fmt.Fprintf(out, "    %s: %v\n", addr, err)
				continue
			}
			ok = true
			if info.Version == "" {
				fmt.Fprintf(out, "    %s: no TLS (STARTTLS not offered, and the policy allows plaintext)\n", addr)
				continue
			}
			auth := "not authenticated"
			switch {
			case info.Auth != "":
				auth = "authenticated by " + info.Auth
			case info.PassivePKIX:
				auth = "not required, but the certificate passes PKIX"
			case info.VerifyFailure != "":
				auth = "not authenticated: " + info.VerifyFailure
			}
			fmt.Fprintf(out, "    %s: STARTTLS, %s, %s, %s\n", addr, info.Version, info.Cipher, auth)
			for _, c := range info.Chain {
				fmt.Fprintf(out, "      certificate %q issued by %q, valid until %s, names %v\n", c.Subject.CommonName,
					c.Issuer.CommonName, c.NotAfter.UTC().Format(time.DateOnly), c.DNSNames)
			}
		}
	}
	return ok
}
