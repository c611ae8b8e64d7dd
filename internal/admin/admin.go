// Package admin is Postern's administration API: the operations the queue,
// user, policy, audit and TLS report commands perform (Operations), the
// JSON-over-HTTP mux that serves them on the daemon's admin socket
// (Handler), and the client that performs them through it (Client). The
// command line uses a Client when a daemon runs, and the daemon's own
// implementation on the open databases when none does; both behave alike.
package admin

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/quota"
	"github.com/postern/postern/relay/tlsrpt"
)

// ErrConfig is what every configuration error is (errors.Is): the CLI
// exits 2 for it, and the admin socket tells it from other failures.
var ErrConfig = errors.New("bad configuration")

// MaxRequestBody bounds every request body the mux reads; the largest
// legitimate one is a user with its sender patterns.
const MaxRequestBody = 64 << 10

// Operations is what the queue and user commands do. It is served over the
// admin socket by a running daemon (bbolt admits one process), and done
// directly on the databases when no daemon runs.
type Operations interface {
	QueueList(f queue.Filter) ([]queue.Message, error)
	QueueShow(id string) (queue.Message, error)
	QueueAction(action, id string) error
	QueueFlush() (int, error)
	Backup(t BackupTarget) (BackupReport, error)
	Reload() (string, error)
	UserAdd(name, password string, allowFrom []string) error
	UserList() ([]auth.User, error)
	UserDelete(name string) error
	UserPasswd(name, password string) error
	UserRequireTLS(name string, on bool) error
	UserAnyHeaderFrom(name string, on bool) error
	UserSuspend(name string, on bool) error
	UserShow(name string) (UserReport, error)
	UserLimit(name, which string, n *int) error
	PolicyForget(domain string) error
	PolicyCheck(domain string, port int) (PolicyReport, error)
	Audit(f audit.Filter) ([]audit.Record, error)
	TLSReports(day time.Time) (map[string][]tlsrpt.PolicyResult, error)
	TLSReportSend(day time.Time) ([]ReportOutcome, error)
	Close() error
}

// Handover is what local and remote do for the two commands.
type Handover interface {
	QueueExport(req ExportRequest) (ExportResult, error)
	QueueImport(req ImportRequest) (ImportResult, error)
}

// BackupReport is what "postern backup" made.
type BackupReport struct {
	Dir string `json:"dir"`
	queue.BackupReport
}

// ReportOutcome is a tlsrpt.Outcome that travels as JSON.
type ReportOutcome struct {
	Domain string `json:"domain"`
	URI    string `json:"uri,omitempty"`
	Error  string `json:"error,omitempty"`
}

// UserReport is "postern user show": a credential's source, limits,
// suspension and volume over the last hour.
type UserReport struct {
	Name string `json:"name"`
	// Source is where the name is found locally ("file", "store"), or ""
	// when neither knows it (a directory user, or a typo).
	Source         string    `json:"source"`
	Suspended      bool      `json:"suspended"`
	SuspendedSince time.Time `json:"suspended_since,omitzero"`
	// The last hour's volume, and the limits in force (0: unlimited).
	Messages        int            `json:"messages_last_hour"`
	Recipients      int            `json:"recipients_last_hour"`
	MessagesLimit   int            `json:"messages_per_hour"`
	RecipientsLimit int            `json:"recipients_per_hour"`
	Minutes         []quota.Minute `json:"minutes"`
}

// PolicyReport is "policy check" as the daemon answers it.
type PolicyReport struct {
	Text        string `json:"text"`
	Deliverable bool   `json:"deliverable"`
}

// ExportRequest asks for "queue export".
type ExportRequest struct {
	Dir    string        `json:"dir"`
	Parent *FileID       `json:"parent,omitempty"` // DIR's parent as the asker sees it
	Remove bool          `json:"remove,omitempty"`
	Wait   time.Duration `json:"wait"`
	Source string        `json:"source,omitempty"` // this node's name, for the manifest
}

type ExportResult struct {
	Dir string `json:"dir"`
	queue.ExportReport
}

// ImportRequest asks for "queue import".
type ImportRequest struct {
	Dir     string  `json:"dir"`
	Self    *FileID `json:"self,omitempty"` // DIR as the asker sees it
	SkipBad bool    `json:"skip_bad,omitempty"`
}

type ImportResult struct {
	Dir string `json:"dir"`
	queue.ImportReport
}

// FileID names a directory across processes: the same device and inode
// means both sides see the same directory.
type FileID struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

func IDOf(fi fs.FileInfo) FileID {
	st := fi.Sys().(*syscall.Stat_t)
	return FileID{Dev: uint64(st.Dev), Ino: st.Ino}
}

// BackupTarget is where a backup goes. Parent, when set, is DIR's parent
// directory as the one asking for the backup sees it: the daemon refuses
// to write where the operator would not find the backup.
type BackupTarget struct {
	Dir    string  `json:"dir"`
	Parent *FileID `json:"parent,omitempty"`
}

// TargetFor describes dir as this process sees it.
func TargetFor(dir string) (BackupTarget, error) {
	fi, err := os.Stat(filepath.Dir(dir))
	if err != nil {
		return BackupTarget{}, fmt.Errorf("backup: the parent of %s: %w", dir, err)
	}
	id := IDOf(fi)
	return BackupTarget{Dir: dir, Parent: &id}, nil
}

type UserRequest struct {
	Name      string   `json:"name"`
	Password  string   `json:"password"`
	AllowFrom []string `json:"allow_from,omitempty"`
}
