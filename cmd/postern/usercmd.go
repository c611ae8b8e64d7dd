package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/postern/postern/internal/admin"
	"github.com/postern/postern/relay/auth"
)

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
