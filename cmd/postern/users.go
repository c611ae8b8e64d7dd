package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/postern/postern/relay/auth"
)

// validateUsers checks the user sources and sending limits: the users
// file must parse (a bad line is named), so that neither a start nor a
// reload takes a broken one.
func (c *Config) validateUsers(bad badKey) {
	a := c.Submission.Auth
	if a.UsersFile != "" {
		if _, err := auth.ReadUsersFile(a.UsersFile); err != nil {
			bad("submission.auth.users_file", "%v", err)
		}
	}
	if l := c.Submission.Limits; l.MessagesPerHour < 0 || l.RecipientsPerHour < 0 {
		bad("submission.limits", "messages_per_hour and recipients_per_hour are counts (0 is unlimited), not negative")
	}
	c.parseLDAP(bad)
}

// usersFile loads submission.auth.users_file, or returns nil when none is
// set.
func (c *Config) usersFile() (*auth.FileUsers, error) {
	if c.Submission.Auth.UsersFile == "" {
		return nil, nil
	}
	f, err := auth.LoadUsersFile(c.Submission.Auth.UsersFile)
	if err != nil {
		return nil, fmt.Errorf("submission.auth.users_file: %w", err)
	}
	return f, nil
}

// userHashCommand prints a hash for a users-file line.
func userHashCommand() *cobra.Command {
	var fromStdin bool
	cmd := &cobra.Command{
		Use:   "hash",
		Short: "Read a password (prompt or --password-stdin) and print an argon2id hash for the users file",
		Long: `Prints the argon2id hash of a password, for a line of the users file
(submission.auth.users_file):

  NAME HASH [allow_from=GLOB,GLOB] [require_tls] [any_header_from] [messages_per_hour=N] [recipients_per_hour=N]

The password is not stored anywhere; each run uses a new random salt.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			pw, err := readPassword(c.InOrStdin(), fromStdin)
			if err != nil {
				return err
			}
			return printHash(c.OutOrStdout(), pw)
		},
	}
	cmd.Flags().BoolVar(&fromStdin, "password-stdin", false, "read the password from the first line of standard input")
	return cmd
}

func printHash(w io.Writer, password string) error {
	hash, err := auth.HashPassword(password)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, hash)
	return err
}

// listUsers lists the users of the users file and the built-in store: the
// daemon's sources as it runs them, or, without a daemon, the file the
// configuration names.
func (l *local) listUsers() ([]auth.User, error) {
	if l.verifier != nil {
		return l.verifier.Users()
	}
	var file *auth.FileUsers
	if l.cfg != nil {
		var err error
		if file, err = l.cfg.usersFile(); err != nil {
			return nil, err
		}
	}
	return auth.ListUsers(file, l.users)
}

// listDirectoryNote says, under "user list", that the directory's users
// are not listed: they are checked there, one login at a time.
func listDirectoryNote(w io.Writer, load func() (*Config, error)) error {
	cfg, err := load()
	if err != nil || cfg.Submission.Auth.LDAP.URL == "" {
		return nil
	}
	_, err = fmt.Fprintf(w, "and, after these, the users of the directory %s (source ldap; not listed)\n", cfg.Submission.Auth.LDAP.URL)
	return err
}

// applyUsers loads the users file that next names and puts it in force,
// returning a line for the reload's summary. Nothing changes on error.
func (r *reloader) applyUsers(next *Config) (string, error) {
	file, err := next.usersFile()
	if err != nil {
		return "", err
	}
	r.auth.SetFile(file)
	if file == nil {
		return "", nil
	}
	n := len(file.List())
	r.log.Info("reload: users file loaded", "file", file.Path(), "users", n)
	return fmt.Sprintf("users file: %d users from %s", n, file.Path()), nil
}

// parseLDAP checks submission.auth.ldap, naming the key at fault, and
// builds the directory it describes.
func (c *Config) parseLDAP(bad badKey) {
	c.set.directory = nil
	l := c.Submission.Auth.LDAP
	if l.URL == "" {
		return
	}
	if l.Timeout <= 0 {
		bad("submission.auth.ldap.timeout", "must be positive")
	}
	dir, err := c.buildDirectory()
	if err == nil {
		c.set.directory = dir
	} else {
		var se *auth.SettingError
		if errors.As(err, &se) {
			bad("submission.auth.ldap."+se.Setting, "%v", se.Err)
		} else {
			bad("submission.auth.ldap", "%v", err)
		}
	}
}

// directory is the LDAP directory of submission.auth.ldap that parse
// built, or nil when none is set.
func (c *Config) directory() auth.Directory {
	if c.set.directory == nil {
		return nil // not a nil *auth.LDAP in a non-nil interface
	}
	return c.set.directory
}

// buildDirectory builds the LDAP directory of submission.auth.ldap.
func (c *Config) buildDirectory() (*auth.LDAP, error) {
	l := c.Submission.Auth.LDAP
	var roots *x509.CertPool // nil: the system roots
	if l.CAFile != "" {
		b, err := readBounded(l.CAFile, 1<<20) // CA certificates, not a device that never ends
		if err != nil {
			return nil, &auth.SettingError{Setting: "ca_file", Err: err}
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(b) {
			return nil, &auth.SettingError{Setting: "ca_file", Err: fmt.Errorf("%s holds no PEM certificate", l.CAFile)}
		}
	}
	return auth.NewLDAP(auth.LDAPConfig{URL: l.URL, StartTLS: l.StartTLS, RootCAs: roots, BindDN: l.BindDN,
		BindPassword: l.BindPassword, Base: l.Base, Filter: l.Filter, SenderAttribute: l.SenderAttribute,
		SenderTemplate: l.SenderTemplate, Timeout: l.Timeout})
}

// applyDirectory puts next's directory in force when its settings changed
// (changed lists the keys a reload changes); loading built it.
func (r *reloader) applyDirectory(next *Config, changed []string) {
	if !slices.ContainsFunc(changed, func(k string) bool { return strings.HasPrefix(k, "submission.auth.ldap.") }) {
		return
	}
	dir := next.directory()
	if dir == nil {
		r.auth.SetDirectory(nil)
		r.log.Info("reload: directory off")
		return
	}
	r.auth.SetDirectory(dir)
	r.log.Info("reload: directory in force", "directory", dir.String())
}

// readBounded reads at most limit bytes of path, and fails on more.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return b, nil
}
