package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/postern/postern/internal/admin"
	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/quota"
)

func (c *Config) sendingLimits() quota.Limits {
	l := c.Submission.Limits
	return quota.Limits{MessagesPerHour: l.MessagesPerHour, RecipientsPerHour: l.RecipientsPerHour}
}

// defaultLimits are the daemon's limits in force, or the configuration's.
func (l *local) defaultLimits() quota.Limits {
	if l.limits != nil {
		return l.limits()
	}
	if l.cfg != nil {
		return l.cfg.sendingLimits()
	}
	return quota.Limits{}
}

func (l *local) UserShow(name string) (admin.UserReport, error) {
	if err := auth.ValidateName(name); err != nil {
		return admin.UserReport{}, err
	}
	users, err := l.listUsers()
	if err != nil {
		return admin.UserReport{Name: name}, err
	}
	name = credentialName(users, name)
	rep := admin.UserReport{Name: name}
	lim := l.defaultLimits()
	for _, u := range users {
		if u.Name == name {
			rep.Source = u.Source
			if u.MessagesPerHour != nil {
				lim.MessagesPerHour = *u.MessagesPerHour
			}
			if u.RecipientsPerHour != nil {
				lim.RecipientsPerHour = *u.RecipientsPerHour
			}
			break // the first source that knows the name decides
		}
	}
	rep.MessagesLimit, rep.RecipientsLimit = lim.MessagesPerHour, lim.RecipientsPerHour
	rep.SuspendedSince, rep.Suspended = l.quota.Suspended(name)
	rep.Messages, rep.Recipients = l.quota.Used(name)
	rep.Minutes = l.quota.Minutes(name)
	return rep, nil
}

func (l *local) UserSuspend(name string, on bool) error {
	if err := auth.ValidateName(name); err != nil {
		return err
	}
	users, err := l.listUsers()
	if err != nil {
		return err
	}
	return l.quota.Suspend(credentialName(users, name), on)
}

// credentialName is the name the limits and the suspension of the
// credential called name count under: a local user's as written; else a
// directory user's, which AUTH folds to lower case (auth.Verifier), so
// that "Alice" copied from the directory's display reaches alice.
func credentialName(local []auth.User, name string) string {
	for _, u := range local {
		if u.Name == name {
			return name
		}
	}
	return strings.ToLower(name)
}

func (l *local) UserLimit(name, which string, n *int) error {
	return l.users.SetSendingLimit(name, which, n)
}

// userVolumeCommands are "user suspend|resume|show|limit".
func userVolumeCommands(load func() (*Config, error)) []*cobra.Command {
	suspend := func(on bool) func(*cobra.Command, []string) error {
		return func(c *cobra.Command, args []string) error {
			return withOps(load, func(ops admin.Operations) error {
				if err := ops.UserSuspend(args[0], on); err != nil {
					return err
				}
				rep, err := ops.UserShow(args[0])
				if err != nil {
					return err
				}
				if on {
					fmt.Fprintf(c.OutOrStdout(), "user %s suspended: its MAIL, RCPT and DATA get 450 4.7.1 from now on, in open sessions too, until 'postern user resume %s'\n", args[0], args[0])
				} else {
					fmt.Fprintf(c.OutOrStdout(), "user %s may send again\n", args[0])
				}
				if rep.Source == "" {
					fmt.Fprintf(c.OutOrStdout(), "note: neither the users file nor the store knows %s; the suspension applies if the directory does\n", args[0])
				}
				return nil
			})
		}
	}
	var asJSON bool
	show := &cobra.Command{
		Use:   "show NAME",
		Short: "A user's source, sending limits, suspension and volume over the last hour",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return withOps(load, func(ops admin.Operations) error {
				rep, err := ops.UserShow(args[0])
				if err != nil {
					return err
				}
				if asJSON {
					return json.NewEncoder(c.OutOrStdout()).Encode(rep)
				}
				return printUserReport(c.OutOrStdout(), rep)
			})
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	limit := &cobra.Command{
		Use:   "limit NAME messages_per_hour|recipients_per_hour N|default",
		Short: "Set a store user's own hourly sending limit (0: unlimited; default: submission.limits)",
		Long: `Sets one of a built-in store user's own sending limits. N is a count per
hour, 0 is unlimited, and "default" returns the user to submission.limits.
Users of the users file carry theirs in the file (messages_per_hour=N).`,
		Args: cobra.ExactArgs(3),
		RunE: func(c *cobra.Command, args []string) error {
			var n *int
			if args[2] != "default" {
				v, err := strconv.Atoi(args[2])
				if err != nil || v < 0 {
					return &exitError{code: 2, err: fmt.Errorf("say a count (0: unlimited) or default, not %q", args[2])}
				}
				n = &v
			}
			if args[1] != auth.LimitMessages && args[1] != auth.LimitRecipients {
				return &exitError{code: 2, err: fmt.Errorf("say %s or %s, not %q", auth.LimitMessages, auth.LimitRecipients, args[1])}
			}
			return withOps(load, func(ops admin.Operations) error { return ops.UserLimit(args[0], args[1], n) })
		},
	}
	return []*cobra.Command{
		{Use: "suspend NAME", Short: "Stop a credential from sending, at once and also on a running daemon (450 4.7.1 at MAIL, RCPT and DATA)",
			Args: cobra.ExactArgs(1), RunE: suspend(true)},
		{Use: "resume NAME", Short: "Let a suspended credential send again", Args: cobra.ExactArgs(1), RunE: suspend(false)},
		show, limit,
	}
}

func printUserReport(w io.Writer, rep admin.UserReport) error {
	perHour := func(n int) string {
		if n == 0 {
			return "unlimited"
		}
		return strconv.Itoa(n) + " per hour"
	}
	source := rep.Source
	if source == "" {
		source = "not in the users file or the store (a directory user, or unknown)"
	}
	suspended := "no"
	if rep.Suspended {
		suspended = "yes, since " + rep.SuspendedSince.Local().Format(time.DateTime)
	}
	fmt.Fprintf(w, "user:        %s\nsource:      %s\nsuspended:   %s\n", rep.Name, source, suspended)
	fmt.Fprintf(w, "last hour:   %d messages (limit %s), %d recipients (limit %s)\n",
		rep.Messages, perHour(rep.MessagesLimit), rep.Recipients, perHour(rep.RecipientsLimit))
	if len(rep.Minutes) == 0 {
		return nil
	}
	fmt.Fprintln(w, "by minute, minutes with mail only (counts are saved once a minute; a crash may lose the last):")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  MINUTE\tMESSAGES\tRECIPIENTS")
	for _, m := range rep.Minutes {
		fmt.Fprintf(tw, "  %s\t%d\t%d\n", m.Start.Local().Format("15:04"), m.Messages, m.Recipients)
	}
	return tw.Flush()
}
