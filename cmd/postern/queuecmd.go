package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/postern/postern/internal/admin"
	"github.com/postern/postern/queue"
)

// completeQueueIDs offers the queued messages' IDs (with their sender)
// to shell completion.
func completeQueueIDs(load func() (*Config, error), max int) cobra.CompletionFunc {
	return func(_ *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if max > 0 && len(args) >= max {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		withOps(load, func(ops admin.Operations) error {
			msgs, err := ops.QueueList(queue.Filter{})
			for _, m := range msgs {
				out = append(out, cobra.CompletionWithDesc(m.ID, orNull(m.From)+", "+m.State()))
			}
			return err
		})
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

func queueCommand(load func() (*Config, error)) *cobra.Command {
	cmd := &cobra.Command{Use: "queue", Short: "Inspect and act on the queue"}
	var f queue.Filter
	var asJSON bool
	var olderThan, newerThan time.Duration
	list := &cobra.Command{
		Use:   "list",
		Short: "List queued messages",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			switch f.State {
			case "", "active", "deferred", "held", "exported":
			default:
				return &exitError{code: 2, err: fmt.Errorf("--state %q: use active, deferred, held or exported", f.State)}
			}
			if olderThan > 0 {
				f.ArrivedBefore = time.Now().Add(-olderThan)
			}
			if newerThan > 0 {
				f.ArrivedAfter = time.Now().Add(-newerThan)
			}
			return withOps(load, func(ops admin.Operations) error {
				msgs, err := ops.QueueList(f)
				if err != nil {
					return err
				}
				if asJSON {
					return json.NewEncoder(c.OutOrStdout()).Encode(newMessageViews(msgs))
				}
				if len(msgs) == 0 {
					if ft := filterText(f); ft != "" {
						fmt.Fprintln(c.OutOrStdout(), "no messages"+ft)
					} else {
						fmt.Fprintln(c.OutOrStdout(), "the queue is empty")
					}
					return nil
				}
				w := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "ID\tARRIVED\tSIZE\tSENDER\tPENDING/RCPTS\tSTATE\tLAST REPLY")
				gone := 0
				for _, m := range msgs {
					pending, last := 0, ""
					for _, r := range m.Recipients {
						if !r.State.Final() {
							pending++
							if r.LastReply != "" {
								last = r.LastReply
							}
						}
					}
					state := m.State()
					if m.BodyGone {
						state, gone = state+",body-gone", gone+1
					}
					fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%d/%d\t%s\t%s\n", m.ID, m.Arrival.Local().Format(time.DateTime), m.Size,
						orNull(m.From), pending, len(m.Recipients), state, truncate(last, 80))
				}
				if err := w.Flush(); err != nil {
					return err
				}
				fmt.Fprintf(c.OutOrStdout(), "%s%s\n", plural(len(msgs), "message"), filterText(f))
				if gone > 0 {
					fmt.Fprintf(c.OutOrStdout(), "%d of them have lost their body (damaged storage): they cannot be delivered, and their senders are told so; see docs/operations.md\n", gone)
				}
				return nil
			})
		},
	}
	list.Flags().StringVar(&f.RcptDomain, "domain", "", "only messages with a recipient in this domain")
	list.Flags().StringVar(&f.Sender, "sender", "", "only messages from this sender")
	list.Flags().StringVar(&f.State, "state", "", "active, deferred, held or exported")
	list.Flags().DurationVar(&olderThan, "older-than", 0, "only messages that arrived longer ago than this (e.g. 4h)")
	list.Flags().DurationVar(&newerThan, "newer-than", 0, "only messages that arrived within this (e.g. 10m)")
	list.Flags().BoolVar(&asJSON, "json", false, "JSON output")

	var showJSON bool
	show := &cobra.Command{
		Use:               "show ID",
		Short:             "Show a message's envelope and each recipient's status",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeQueueIDs(load, 1),
		RunE: func(c *cobra.Command, args []string) error {
			return withOps(load, func(ops admin.Operations) error {
				m, err := ops.QueueShow(args[0])
				if err != nil {
					return &exitError{code: 3, err: err}
				}
				if showJSON {
					return json.NewEncoder(c.OutOrStdout()).Encode(newMessageView(m))
				}
				out := c.OutOrStdout()
				fmt.Fprintf(out, "id:          %s\nstate:       %s\nfrom:        %s\nuser:        %s (%s)\narrived:     %s (%s ago)\nsize:        %d\nmessage-id:  %s\nrequiretls:  %v\n",
					m.ID, m.State(), orNull(m.From), m.AuthUser, m.ClientIP, m.Arrival.Local().Format(time.RFC3339),
					time.Since(m.Arrival).Round(time.Second), m.Size, orDash(m.MessageID), m.RequireTLS)
				if m.BodyGone {
					fmt.Fprintf(out, "body:        GONE (damaged storage): it cannot be delivered; its sender's notice will say so (see docs/operations.md)\n")
				}
				w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "\nRECIPIENT\tSTATE\tATTEMPTS\tLAST TRY\tNEXT\tSERVER\tLAST REPLY")
				for _, r := range m.Recipients {
					next, lastTry := "-", "-"
					if !r.State.Final() {
						next = r.Due.Local().Format(time.DateTime)
					}
					if !r.LastAttempt.IsZero() {
						lastTry = r.LastAttempt.Local().Format(time.DateTime)
					}
					fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.Addr, recipientState(r.State), r.Attempts, lastTry, next, orDash(r.LastHost), r.LastReply)
				}
				return w.Flush()
			})
		},
	}
	show.Flags().BoolVar(&showJSON, "json", false, "JSON output")
	cmd.AddCommand(list, show, salvageCommand(load))
	cmd.AddCommand(handoverCommands(load)...)
	for _, a := range []struct{ name, short string }{
		{"hold", "Stop delivery attempts for a message until released"},
		{"release", "Let a held message be delivered again"},
		{"delete", "Delete a message without notifying its sender"},
		{"retry", "Make a message's pending recipients due now"},
		{"bounce", "Fail a message's pending recipients now and send its sender the failure notice"},
	} {
		cmd.AddCommand(&cobra.Command{
			Use:               a.name + " ID...",
			Short:             a.short,
			Args:              cobra.MinimumNArgs(1),
			ValidArgsFunction: completeQueueIDs(load, 0),
			RunE: func(c *cobra.Command, ids []string) error {
				return withOps(load, func(ops admin.Operations) error {
					var failed error
					for _, id := range ids {
						if err := ops.QueueAction(a.name, id); err != nil {
							// Said here, per ID; main does not say it again.
							failed = &exitError{code: exitUnknown, err: err, reported: true}
							msg := err.Error()
							if !strings.Contains(msg, id) {
								msg = id + ": " + msg
							}
							fmt.Fprintln(c.ErrOrStderr(), "postern:", msg)
							continue
						}
						fmt.Fprintf(c.OutOrStdout(), "%s: %s done\n", id, a.name)
					}
					return failed
				})
			},
		})
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "flush",
		Short: "Make every deferred message due now (postqueue -f)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return withOps(load, func(ops admin.Operations) error {
				n, err := ops.QueueFlush()
				if err != nil {
					return err
				}
				fmt.Fprintf(c.OutOrStdout(), "%d deferred messages due now\n", n)
				return nil
			})
		},
	})
	return cmd
}

// filterText says which filters a listing had, so that "empty" is not
// read as "the whole queue is empty".
func filterText(f queue.Filter) string {
	var parts []string
	if f.State != "" {
		parts = append(parts, "state "+f.State)
	}
	if f.RcptDomain != "" {
		parts = append(parts, "domain "+f.RcptDomain)
	}
	if f.Sender != "" {
		parts = append(parts, "sender "+f.Sender)
	}
	if !f.ArrivedBefore.IsZero() {
		parts = append(parts, "arrived before "+f.ArrivedBefore.Local().Format(time.DateTime))
	}
	if !f.ArrivedAfter.IsZero() {
		parts = append(parts, "arrived after "+f.ArrivedAfter.Local().Format(time.DateTime))
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func orNull(from string) string {
	if from == "" {
		return "<>"
	}
	return from
}

// salvageCommand rebuilds a damaged queue.db from what can still be read.
func salvageCommand(load func() (*Config, error)) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "salvage",
		Short: "With Postern stopped, copy every readable message of a damaged queue.db into a new one; the damaged file is kept",
		Long: "Reads what can still be read of data_dir/queue.db (every message, body and journal entry outside the\n" +
			"damaged pages), writes it to a new queue.db, and keeps the damaged file beside it as queue.db.damaged-TIME.\n" +
			"Messages whose envelope was lost are listed (their senders are not told: tell them), and their spool\n" +
			"files moved to spool.lost-TIME. See \"A damaged queue database\" in docs/operations.md.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := load()
			if err != nil {
				return err
			}
			// It writes a new queue.db: as data_dir's owner only, or the
			// service could not open it.
			if err := checkDataDirOwner(cfg.DataDir); err != nil {
				return err
			}
			rep, err := queue.Salvage(cfg.queuePath(), queue.Options{})
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(c.OutOrStdout()).Encode(rep)
			}
			out := c.OutOrStdout()
			fmt.Fprintf(out, "salvaged %d messages and %d journal entries into %s\n", rep.Messages, rep.Journal, cfg.queuePath())
			fmt.Fprintf(out, "the damaged file is kept as %s (%d damaged places met)\n", rep.Damaged, rep.Unreadable)
			if len(rep.BodiesLost) > 0 {
				fmt.Fprintf(out, "%d messages kept without their body (their senders will be told the content was lost):\n  %s\n",
					len(rep.BodiesLost), strings.Join(rep.BodiesLost, "\n  "))
			}
			if len(rep.Lost) > 0 {
				fmt.Fprintf(out, "%d messages LOST (their envelope could not be read; nobody is told):\n  %s\n",
					len(rep.Lost), strings.Join(rep.Lost, "\n  "))
				if rep.LostSpoolDir != "" {
					fmt.Fprintf(out, "the spool files of lost messages are in %s\n", rep.LostSpoolDir)
				}
			} else {
				fmt.Fprintln(out, "no message was lost")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	return cmd
}
