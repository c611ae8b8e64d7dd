package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/postern/postern/relay/dkim"
)

// dkimCommand makes signing keys.
func dkimCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "dkim", Short: "DKIM signing keys"}
	var algorithm, out string
	var bits int
	keygen := &cobra.Command{
		Use:   "keygen DOMAIN SELECTOR",
		Short: "Write a new signing key and print the DNS TXT record to publish",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			domain, selector := args[0], args[1]
			if out == "" {
				out = fmt.Sprintf("%s.%s.pem", selector, domain)
			}
			pemKey, record, err := dkim.Generate(domain, selector, algorithm, bits)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			// O_EXCL: never overwrite a key that may be in use.
			f, err := os.OpenFile(out, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			if _, err := f.Write(pemKey); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			abs, _ := filepath.Abs(out)
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "; private key written to %s (mode 0600)\n", abs)
			fmt.Fprintf(w, "; publish this record, then add the key to dkim.keys:\n")
			fmt.Fprintf(w, ";   - {domain: %s, selector: %s, key_file: %s}\n", domain, selector, abs)
			fmt.Fprintln(w, record)
			return nil
		},
	}
	keygen.Flags().StringVar(&algorithm, "algorithm", "rsa", "rsa or ed25519")
	keygen.Flags().IntVar(&bits, "bits", 2048, "RSA key size")
	keygen.Flags().StringVar(&out, "out", "", "key file to write (default SELECTOR.DOMAIN.pem; never overwritten)")
	cmd.AddCommand(keygen)
	return cmd
}
