package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/postern/postern/internal/admin"
	"github.com/postern/postern/queue"
)

// The queue hand-over: "postern queue export DIR" on a node being retired,
// "postern queue import DIR" on the node that takes its mail over (see
// queue/export.go for the format and what a crash can do). Both work
// through the admin socket when the daemon runs, and on the files when
// it does not, like every queue command.

const exportHelp = `Write every queued message of this node (envelope, each recipient's state,
attempts and last reply, DSN parameters, arrival time, body) into DIR, with a
SHA-256 of every file (manifest.json, SHA256SUMS), for "postern queue import"
on another node. This is how a node is emptied when it cannot be drained
(see "Emptying a node" in docs/operations.md).

Exported messages are held here from the moment the export starts (state
"exported"): they are not delivered from this node as well as from the new
one. Delivery attempts already in flight are waited for (--wait); if one is
still running then, nothing is exported. DIR is written under a temporary
name, fsynced, and renamed to DIR once complete: an export cut off by a crash
never looks complete, and its messages are still here (export again).

With --remove, the exported messages are deleted from this queue once DIR is
complete and durable (each only if it did not change meanwhile). Without it
they stay here, held: delete them once imported (postern queue list --state
exported lists them), or give them back to delivery with "postern queue
release ID".

DIR follows the rules of "postern backup DIR": it must not exist or be an
empty directory of the service user that nobody else can write in, below
directories of root or the service user (/var/backups/postern under the
systemd unit). Messages that arrive during the export are not in it: stop
submissions to this node first.`

const importHelp = `Add the messages of an export made by "postern queue export" on another
node to this node's queue, with their recipients' states, attempts, retry
times, arrival times and DSN parameters: delivery goes on where it stopped,
and expiry and delay warnings count from the original arrival.

Every file is checked against its SHA-256 before anything is imported: a
damaged export is refused whole, unless --skip-bad imports the intact
messages and lists the others (which stay on the old node). A message keeps
its queue ID unless this queue already uses it. Each import is recorded with
the message, in one transaction: importing the same export again, or again
after a crash, or a second export of the same messages, adds each message
once.

DIR and every file in it must belong to root or the service user and be
writable by nobody else (after copying an export from another machine:
chown -R postern: DIR); under the systemd unit, put it below
/var/backups/postern, where the service can read it.`

var _ admin.Handover = (*local)(nil)

// daemonRuns: this local is the daemon's own (it alone can wake delivery).
func (l *local) daemonRuns() bool { return l.kick != nil }

func (l *local) QueueExport(req admin.ExportRequest) (res admin.ExportResult, err error) {
	res.Dir = req.Dir
	bd, err := openBackupDir(admin.BackupTarget{Dir: req.Dir, Parent: req.Parent}, "export")
	if err != nil {
		return res, err
	}
	published := false
	defer func() {
		if err != nil && !published {
			if cerr := bd.cleanup(); cerr != nil {
				err = fmt.Errorf("%w (and removing what it wrote: %v)", err, cerr)
			}
		}
		bd.root.Close()
	}()
	opts := queue.ExportOptions{
		Remove: req.Remove,
		Wait:   req.Wait,
		// Without the daemon this process holds the database: the leases
		// in it are of a process that is gone.
		LeasesVoid: !l.daemonRuns(),
		Source:     req.Source,
		Publish: func() error {
			if err := bd.publish(); err != nil {
				return err
			}
			published = true
			return nil
		},
	}
	res.ExportReport, err = l.q.Export(bd.root, opts)
	l.wake() // messages given back to delivery (a refused export, a lost body)
	return res, err
}

func (l *local) QueueImport(req admin.ImportRequest) (res admin.ImportResult, err error) {
	res.Dir = req.Dir
	root, err := openImportDir(req)
	if err != nil {
		return res, err
	}
	defer root.Close()
	res.ImportReport, err = l.q.Import(root, queue.ImportOptions{SkipBad: req.SkipBad, CheckFile: checkImportFile})
	l.wake()
	return res, err
}

// openImportDir opens DIR after checking that nobody but root and this
// user can have put anything in it or change it: an export is mail that
// this node will send.
func openImportDir(req admin.ImportRequest) (*os.Root, error) {
	if !filepath.IsAbs(req.Dir) || filepath.Clean(req.Dir) != req.Dir || req.Dir == "/" {
		return nil, fmt.Errorf("import: %q is not a clean absolute directory", req.Dir)
	}
	if req.Self != nil {
		fi, err := os.Stat(req.Dir)
		if err != nil || admin.IDOf(fi) != *req.Self {
			return nil, fmt.Errorf("import: %s is not the same directory for postern as for you (postern has a file system "+
				"view of its own: under the systemd unit /tmp and /var/tmp are private to the service and /home and /root "+
				"are hidden from it); move the export below /var/backups/postern", req.Dir)
		}
	}
	if err := checkSafePath(req.Dir); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	root, err := os.OpenRoot(req.Dir)
	if err == nil {
		err = sameDir(req.Dir, root)
	}
	if err != nil {
		if root != nil {
			root.Close()
		}
		return nil, fmt.Errorf("import: %w%s", err, unreadableHint(err))
	}
	return root, nil
}

// checkImportFile: a file or directory of an export belongs to root or
// this user and nobody else can write to it.
func checkImportFile(name string, fi fs.FileInfo) error {
	uid := fi.Sys().(*syscall.Stat_t).Uid
	me := uint32(os.Geteuid())
	switch {
	case uid != 0 && uid != me:
		return fmt.Errorf("%s belongs to %s: only root's or %s's files are imported, as someone else could have written "+
			"mail into them (after copying an export, give it to the service user: chown -R %s: DIR)", name, userName(uid), userName(me), lookupName(me))
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%s is writable by others (mode %04o): someone else could have written mail into it", name, fi.Mode().Perm())
	}
	return nil
}

func unreadableHint(err error) string {
	if errors.Is(err, fs.ErrPermission) {
		return " (postern's user may not read it: give it the export, chown -R postern: DIR)"
	}
	return ""
}

// handoverCommands are "queue export" and "queue import".
func handoverCommands(load func() (*Config, error)) []*cobra.Command {
	var remove bool
	var wait time.Duration
	export := &cobra.Command{
		Use:   "export DIR",
		Short: "Write every queued message, checksummed, into DIR (new or empty) to move it to another node; they are held here",
		Long:  exportHelp,
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			dir, err := filepath.Abs(args[0]) // the daemon has its own working directory
			if err != nil {
				return err
			}
			cfg, err := load()
			if err != nil {
				return err
			}
			return withOps(func() (*Config, error) { return cfg, nil }, func(ops admin.Operations) error {
				h, ok := ops.(admin.Handover)
				if !ok {
					return errors.New("queue export is not available here")
				}
				res, err := h.QueueExport(admin.ExportRequest{Dir: dir, Remove: remove, Wait: wait, Source: cfg.Hostname})
				if err != nil {
					return err
				}
				printExport(c.OutOrStdout(), res, remove)
				return nil
			})
		},
	}
	export.Flags().BoolVar(&remove, "remove", false, "delete the exported messages from this queue once the export is complete and durable")
	export.Flags().DurationVar(&wait, "wait", 5*time.Minute, "how long to wait for delivery attempts in flight to end")
	var skipBad bool
	imp := &cobra.Command{
		Use:   "import DIR",
		Short: "Add the messages of an export from another node to this queue; each is added once, however often it is imported",
		Long:  importHelp,
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			dir, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			return withOps(load, func(ops admin.Operations) error {
				h, ok := ops.(admin.Handover)
				if !ok {
					return errors.New("queue import is not available here")
				}
				res, err := h.QueueImport(admin.ImportRequest{Dir: dir, SkipBad: skipBad})
				if err != nil {
					return err
				}
				printImport(c.OutOrStdout(), res)
				if len(res.Bad) > 0 && res.Removed {
					return fmt.Errorf("%d messages were left out, and this export is their only copy (it was made with --remove): "+
						"copy their files again from the original export directory and import it again (what was imported is not added twice)", len(res.Bad))
				}
				if len(res.Bad) > 0 {
					return fmt.Errorf("%d messages were left out: they are still on the old node (postern queue list --state exported there); "+
						"export them again, or copy the export again", len(res.Bad))
				}
				return nil
			})
		},
	}
	imp.Flags().BoolVar(&skipBad, "skip-bad", false, "import the intact messages of a damaged export and list the others (default: refuse it whole)")
	return []*cobra.Command{export, imp}
}

func printExport(out io.Writer, res admin.ExportResult, remove bool) {
	fmt.Fprintf(out, "exported %d messages (%d bytes of bodies, %d of them spool files) to %s\n", res.Messages, res.Bytes, res.Spooled, res.Dir)
	fmt.Fprintf(out, "export %s: manifest.json and SHA256SUMS list every file's SHA-256 (check a copy with: cd %s && sha256sum -c SHA256SUMS)\n",
		res.ExportID, res.Dir)
	if len(res.BodyGone) > 0 {
		fmt.Fprintf(out, "%d messages left out, their body lost (damaged storage): they stay here, and their senders are told:\n  %s\n",
			len(res.BodyGone), strings.Join(res.BodyGone, "\n  "))
	}
	if len(res.Released) > 0 {
		fmt.Fprintf(out, "WARNING: %d exported messages were released here during the export (queue release): they are in the export\n"+
			"and back in delivery here, so both nodes will send them: delete them here (postern queue delete ID), or on the node that imports the export:\n  %s\n",
			len(res.Released), strings.Join(res.Released, "\n  "))
	}
	if remove {
		fmt.Fprintf(out, "removed the %d exported messages from this queue\n", res.Removed)
		if len(res.Changed) > 0 {
			fmt.Fprintf(out, "%d exported messages changed here during the export and were kept, held (state exported): "+
				"delete them once imported, or release them:\n  %s\n", len(res.Changed), strings.Join(res.Changed, "\n  "))
		}
		return
	}
	if res.Messages > 0 {
		fmt.Fprintf(out, "the %d exported messages stay in this queue, held (state exported) so that they are not delivered from here as well;\n"+
			"once imported on the new node, delete them here (postern queue list --state exported), or give one back to delivery\n"+
			"here with: postern queue release ID\n", res.Messages)
	}
}

func printImport(out io.Writer, res admin.ImportResult) {
	from := "export " + res.ExportID
	if res.Source != "" {
		from += " of " + res.Source
	}
	fmt.Fprintf(out, "imported %d of the %d messages of %s (%s)\n", res.Imported, res.Messages, res.Dir, from)
	if res.Already > 0 {
		fmt.Fprintf(out, "%d were imported before and were not added again\n", res.Already)
	}
	if len(res.Renamed) > 0 {
		fmt.Fprintf(out, "%d had an ID this queue already uses, and got a new one:\n", len(res.Renamed))
		olds := make([]string, 0, len(res.Renamed))
		for old := range res.Renamed {
			olds = append(olds, old)
		}
		sort.Strings(olds)
		for _, old := range olds {
			fmt.Fprintf(out, "  %s is now %s\n", old, res.Renamed[old])
		}
	}
	if len(res.StillHere) > 0 {
		fmt.Fprintf(out, "%d messages are still in this queue, held for the export they came from (this is the node that exported them):\n"+
			"they were not imported again; give them back to delivery here with: postern queue release %s\n",
			len(res.StillHere), strings.Join(res.StillHere, " "))
	}
	if len(res.Bad) > 0 {
		fmt.Fprintf(out, "%d messages LEFT OUT (they fail their checks; not imported):\n", len(res.Bad))
		for _, b := range res.Bad {
			fmt.Fprintf(out, "  %s: %s\n", b.ID, b.Reason)
		}
	}
}
