// Command postern is an outbound-only SMTP smart relay: applications submit
// over authenticated SMTP, and Postern delivers no weaker than the
// recipient's domain or the operator demands.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strings"

	"github.com/spf13/cobra"

	"github.com/postern/postern/internal/admin"
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
			log, level := newLogger(cfg.Log, os.Stderr)
			return serve(cfg, log, level)
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

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
