package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// manCommand writes a man page per command, made from the commands
// themselves, so that they never disagree with --help.
func manCommand(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:   "man DIR",
		Short: "Write the man pages (postern.1, postern-queue-list.1, …) into DIR",
		Long: "Writes a man page for every command into DIR, made from the commands' own help.\n" +
			"Install them with: postern man /usr/local/share/man/man1 (then man postern-queue).",
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			root.DisableAutoGenTag = true // no date: the same binary writes the same pages
			header := &doc.GenManHeader{Title: "POSTERN", Section: "1", Source: "Postern " + version(), Manual: "Postern manual"}
			if err := doc.GenManTree(root, header, args[0]); err != nil {
				return fmt.Errorf("man pages: %w", err)
			}
			fmt.Fprintf(c.OutOrStdout(), "man pages written to %s\n", args[0])
			return nil
		},
	}
}
