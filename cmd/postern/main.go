// Command postern is an outbound-only SMTP smart relay: applications submit
// over authenticated SMTP, and Postern delivers no weaker than the
// recipient's domain or the operator demands.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/postern/postern/internal/admin"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/auth"
)

// Build information, set at link time (the Dockerfile does):
// -ldflags "-X main.buildVersion=v1.2.3 -X main.buildCommit=abc123 -X main.buildDate=2026-11-29T08:00:00Z".
// Without them, what the Go toolchain stamped (go build in a git checkout
// records the commit; go run does not).
var buildVersion, buildCommit, buildDate = "", "", ""

// buildInfo is what "postern version" prints.
type buildInfo struct {
	Version, Commit, Date, Go string
	CommitTime                string // from the toolchain's stamp
	Modified                  bool
}

func currentBuild() buildInfo {
	b := buildInfo{Version: version(), Commit: buildCommit, Date: buildDate}
	if bi, ok := debug.ReadBuildInfo(); ok {
		b.Go = bi.GoVersion
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && b.Commit == "":
				b.Commit = s.Value
			case s.Key == "vcs.time" && buildCommit == "":
				b.CommitTime = s.Value
			case s.Key == "vcs.modified" && buildCommit == "":
				b.Modified = s.Value == "true"
			}
		}
	}
	return b
}

func (b buildInfo) write(w io.Writer) {
	commit, date := b.Commit, b.Date
	if commit == "" {
		commit = "unknown (built without version control information, as go run does)"
	} else {
		if b.CommitTime != "" {
			commit += " of " + b.CommitTime
		}
		if b.Modified {
			commit += " (with uncommitted changes)"
		}
	}
	if date == "" {
		date = "unknown"
	}
	fmt.Fprintf(w, "postern %s\ncommit:  %s\nbuilt:   %s\ngo:      %s\n", b.Version, commit, date, b.Go)
}

func version() string {
	if buildVersion != "" {
		return buildVersion
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

// exitError carries an exit status chosen by a command.
type exitError struct {
	code int
	err  error
	// reported: the command has already printed the error.
	reported bool
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// Exit statuses, as the README's table gives them.
const (
	exitOK        = 0
	exitError1    = 1 // an error: the daemon or a database could not be reached
	exitUsage     = 2 // bad usage or configuration
	exitUnknown   = 3 // a named message or user is unknown, or an action on it could not be done
	exitCheckFail = 4 // a check found the destination undeliverable or DNS bogus
)

func main() {
	err := rootCommand().Execute()
	if err == nil {
		return
	}
	code := exitCode(err)
	var ee *exitError
	if !errors.As(err, &ee) || !ee.reported {
		fmt.Fprintln(os.Stderr, "postern:", err)
	}
	os.Exit(code)
}

// exitCode chooses the exit status for err: the one a command chose, or
// one read from what the error is.
func exitCode(err error) int {
	var ee *exitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, errConfig):
		return exitUsage
	case errors.Is(err, queue.ErrNotFound), errors.Is(err, auth.ErrNoSuchUser):
		return exitUnknown
	}
	return exitError1
}

// usageErrors makes every command of the tree exit 2 on bad usage (a flag
// that does not parse, a wrong number of arguments, an unknown subcommand),
// and makes command groups refuse an unknown subcommand instead of
// printing their help and exiting 0.
func usageErrors(root *cobra.Command) {
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &exitError{code: exitUsage, err: fmt.Errorf("%s: %w (see %s --help)", c.CommandPath(), err, c.CommandPath())}
	})
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
			c.Args = unknownSubcommand
			c.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
		}
		if args := c.Args; args != nil {
			c.Args = func(c *cobra.Command, a []string) error {
				if err := args(c, a); err != nil {
					return &exitError{code: exitUsage, err: fmt.Errorf("%s: %w", c.CommandPath(), err)}
				}
				return nil
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// unknownSubcommand refuses any argument to a command group, suggesting
// the subcommands it may have meant.
func unknownSubcommand(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	err := fmt.Errorf("unknown command %q for %q", args[0], c.CommandPath())
	if s := c.SuggestionsFor(args[0]); len(s) > 0 {
		err = fmt.Errorf("%w; did you mean %s?", err, strings.Join(s, " or "))
	}
	return err
}

func rootCommand() *cobra.Command {
	var configFile string
	root := &cobra.Command{
		Use:   "postern",
		Short: "Outbound-only SMTP smart relay that delivers over TLS as strong as the destination demands",
		Long: "Postern is an outbound-only SMTP smart relay that delivers over TLS as strong as the destination demands.\n\n" +
			"Exit statuses: 0 done; 1 an error (the daemon or a database could not be reached); 2 bad usage or\n" +
			"configuration; 3 a named message or user is unknown, or an action on it could not be done; 4 a check\n" +
			"found the destination undeliverable or DNS bogus.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVarP(&configFile, "config", "c", "", "configuration file (YAML); default: built-in defaults and POSTERN_* environment")
	load := func() (*Config, error) { return loadConfig(configFile) }

	var cpuProfile string
	serveCmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the relay",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := load()
			if err != nil {
				return err
			}
			if cpuProfile != "" {
				// For measuring (bench/run.sh): the profile covers the whole run.
				f, err := os.Create(cpuProfile)
				if err != nil {
					return err
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer func() { pprof.StopCPUProfile(); f.Close() }()
			}
			return serve(cfg, newLogger(cfg.Log, os.Stderr))
		},
	}
	serveCmd.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the run to this file")
	root.AddCommand(serveCmd)
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version and build information",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			currentBuild().write(cmd.OutOrStdout())
		},
	})
	configCmd := &cobra.Command{Use: "config", Short: "Configuration tools"}
	configCmd.AddCommand(&cobra.Command{
		Use:   "check",
		Short: "Validate the configuration and exit non-zero naming each bad key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := load()
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "configuration %s is valid (hostname %s, data_dir %s)\n", cfg.file, cfg.Hostname, cfg.DataDir)
			return nil
		},
	})
	root.AddCommand(&cobra.Command{
		Use:   "backup DIR",
		Short: "Copy a consistent snapshot of data_dir (queue, spool, users and state) into DIR, new or empty, while Postern runs",
		Long:  backupHelp,
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			dir, err := filepath.Abs(args[0]) // the daemon has its own working directory
			if err != nil {
				return err
			}
			return withOps(load, func(ops admin.Operations) error {
				rep, err := ops.Backup(admin.BackupTarget{Dir: dir})
				if err != nil {
					return err
				}
				fmt.Fprintf(c.OutOrStdout(), "backup in %s: %d messages (%d spool files); %d finished during the copy and left out\n",
					rep.Dir, rep.Messages, rep.Spooled, rep.Gone)
				return nil
			})
		},
	})
	root.AddCommand(&cobra.Command{
		Use:   "reload",
		Short: "Make the running daemon re-read its configuration (as SIGHUP does) and say what changed",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return withOps(load, func(ops admin.Operations) error {
				summary, err := ops.Reload()
				if err != nil {
					return err
				}
				fmt.Fprintln(c.OutOrStdout(), summary)
				return nil
			})
		},
	})
	root.AddCommand(configCmd, userCommand(load), queueCommand(load), dnsCommand(load), policyCommand(load), auditCommand(load), dkimCommand(), tlsrptCommand(load),
		healthCommand(load), demoCommand())
	root.AddCommand(manCommand(root))
	// "postern completion bash|zsh|fish" is cobra's, added by Execute.
	usageErrors(root)
	return root
}

func withOps(load func() (*Config, error), f func(admin.Operations) error) error {
	cfg, err := load()
	if err != nil {
		return err
	}
	ops, err := openOperations(cfg)
	if err != nil {
		return err
	}
	defer ops.Close()
	return f(ops)
}

func userCommand(load func() (*Config, error)) *cobra.Command {
	cmd := &cobra.Command{Use: "user", Short: "Manage submission users"}
	var allowFrom []string
	var fromStdin bool
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a user (password from a prompt or --password-stdin)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := auth.ValidateName(args[0]); err != nil {
				return err
			}
			if err := auth.ValidatePatterns(allowFrom); err != nil {
				return err
			}
			pw, err := readPassword(c.InOrStdin(), fromStdin)
			if err != nil {
				return err
			}
			return withOps(load, func(ops admin.Operations) error {
				if err := ops.UserAdd(args[0], pw, allowFrom); err != nil {
					return err
				}
				fmt.Fprintf(c.OutOrStdout(), "user %s added\n", args[0])
				return nil
			})
		},
	}
	add.Flags().StringArrayVar(&allowFrom, "allow-from", nil, "envelope sender the user may use, as a glob such as '*@example.com' (repeatable; default any)")
	add.Flags().BoolVar(&fromStdin, "password-stdin", false, "read the password from the first line of standard input")
	passwd := &cobra.Command{
		Use:               "passwd NAME",
		ValidArgsFunction: completeUsers(load),
		Short:             "Change a user's password",
		Args:              cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			pw, err := readPassword(c.InOrStdin(), fromStdin)
			if err != nil {
				return err
			}
			return withOps(load, func(ops admin.Operations) error { return ops.UserPasswd(args[0], pw) })
		},
	}
	passwd.Flags().BoolVar(&fromStdin, "password-stdin", false, "read the password from the first line of standard input")
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List users",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return withOps(load, func(ops admin.Operations) error {
				users, err := ops.UserList()
				if err != nil {
					return err
				}
				if asJSON {
					return json.NewEncoder(c.OutOrStdout()).Encode(newUserViews(users))
				}
				w := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
				// SOURCE comes last, so that scripts reading the columns before it keep working.
				fmt.Fprintln(w, "NAME\tALLOWED SENDERS\tHEADER FROM\tREQUIRETLS\tCREATED\tSOURCE")
				for _, u := range users {
					allowed := strings.Join(u.AllowFrom, ",")
					if allowed == "" {
						allowed = "(any)"
					}
					requireTLS := "no"
					if u.RequireTLS {
						requireTLS = "yes"
					}
					headerFrom := "checked"
					if u.AnyHeaderFrom {
						headerFrom = "any"
					}
					created := "-" // the users file keeps no dates
					if !u.Created.IsZero() {
						created = u.Created.Format(time.DateTime)
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", u.Name, allowed, headerFrom, requireTLS, created, u.Source)
				}
				if err := w.Flush(); err != nil {
					return err
				}
				return listDirectoryNote(c.OutOrStdout(), load)
			})
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	del := &cobra.Command{
		Use:               "delete NAME",
		ValidArgsFunction: completeUsers(load),
		Short:             "Delete a user",
		Args:              cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return withOps(load, func(ops admin.Operations) error { return ops.UserDelete(args[0]) })
		},
	}
	requireTLS := &cobra.Command{
		Use: "require-tls NAME on|off",
		ValidArgsFunction: func(c *cobra.Command, args []string, s string) ([]cobra.Completion, cobra.ShellCompDirective) {
			if len(args) == 1 {
				return []cobra.Completion{"on", "off"}, cobra.ShellCompDirectiveNoFileComp
			}
			return completeUsers(load)(c, args, s)
		},
		Short: "Treat all of a user's mail as REQUIRETLS: verified TLS at every hop, or a bounce",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			on := args[1] == "on"
			if !on && args[1] != "off" {
				return &exitError{code: 2, err: fmt.Errorf("say on or off, not %q", args[1])}
			}
			return withOps(load, func(ops admin.Operations) error { return ops.UserRequireTLS(args[0], on) })
		},
	}
	headerFrom := &cobra.Command{
		Use:   "header-from NAME check|any",
		Short: "Check a user's header From and Sender against its allowed senders (the default), or let it write any",
		Long: `With "check" (the default), every address in the header From and Sender fields
must match the user's --allow-from patterns, or the message is refused with
550 5.7.1. "any" exempts the user (a list manager sending on behalf of its
members, say); its envelope sender is still checked, and DKIM still signs only
for a From domain the patterns allow.`,
		Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			anyFrom := args[1] == "any"
			if !anyFrom && args[1] != "check" {
				return &exitError{code: 2, err: fmt.Errorf("say check or any, not %q", args[1])}
			}
			return withOps(load, func(ops admin.Operations) error { return ops.UserAnyHeaderFrom(args[0], anyFrom) })
		},
	}
	cmd.AddCommand(add, passwd, list, del, requireTLS, headerFrom, userHashCommand())
	cmd.AddCommand(userVolumeCommands(load)...)
	return cmd
}

// readPassword asks twice on a terminal, or reads one line from stdin.
func readPassword(in io.Reader, fromStdin bool) (string, error) {
	if fromStdin || !isTerminal(os.Stdin) {
		line, err := bufio.NewReader(in).ReadString('\n')
		if err != nil && !(errors.Is(err, io.EOF) && line != "") {
			return "", fmt.Errorf("read password from stdin: %w", err)
		}
		pw := strings.TrimRight(line, "\r\n")
		if pw == "" {
			return "", errors.New("empty password")
		}
		return pw, nil
	}
	fmt.Fprint(os.Stderr, "Password: ")
	a, err := term.ReadPassword(int(os.Stdin.Fd()))
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return "", err
	}
	fmt.Fprint(os.Stderr, "Again: ")
	b, err := term.ReadPassword(int(os.Stdin.Fd()))
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return "", err
	}
	if string(a) != string(b) {
		return "", errors.New("passwords differ")
	}
	if len(a) == 0 {
		return "", errors.New("empty password")
	}
	return string(a), nil
}

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

// completeUsers offers the user names to shell completion, for the first
// argument.
func completeUsers(load func() (*Config, error)) cobra.CompletionFunc {
	return func(_ *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		withOps(load, func(ops admin.Operations) error {
			users, err := ops.UserList()
			for _, u := range users {
				out = append(out, u.Name)
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

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
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
