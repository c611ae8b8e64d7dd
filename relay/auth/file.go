package auth

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Where a user comes from (User.Source). Sources are consulted in this
// order, and the first that knows a name decides: a name in the users file
// shadows the same name in the built-in store, and both shadow the
// directory.
const (
	SourceFile  = "file"
	SourceStore = "store"
	SourceLDAP  = "ldap"
)

// maxUsersFile bounds what a users file may hold; configuration
// management writes thousands of lines, not gigabytes.
const maxUsersFile = 16 << 20

// FileUsers are the users of a users file (submission.auth.users_file),
// one a line:
//
//	NAME HASH [allow_from=GLOB,GLOB] [require_tls] [any_header_from] [messages_per_hour=N] [recipients_per_hour=N]
//
// HASH is argon2id in the PHC format ("postern user hash" prints one) or
// bcrypt ($2a$, $2b$, $2y$). Blank lines and lines starting with # are
// ignored. Reload replaces the users only when the whole file parses, so
// a half-written file or a typo never locks everyone out.
type FileUsers struct {
	path string

	mu    sync.RWMutex
	users map[string]User
}

// LoadUsersFile reads path; an error names the line at fault.
func LoadUsersFile(path string) (*FileUsers, error) {
	f := &FileUsers{path: path}
	if _, err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Path is the file the users come from.
func (f *FileUsers) Path() string { return f.path }

// Reload reads the file again and returns how many users it has. On any
// error the users already loaded stay in force.
func (f *FileUsers) Reload() (int, error) {
	users, err := ReadUsersFile(f.path)
	if err != nil {
		return 0, err
	}
	f.mu.Lock()
	f.users = users
	f.mu.Unlock()
	return len(users), nil
}

// ReadUsersFile parses the users file at path without installing it (a
// configuration check).
func ReadUsersFile(path string) (map[string]User, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("users file: %w", err)
	}
	defer fh.Close()
	users, err := ParseUsers(io.LimitReader(fh, maxUsersFile+1))
	if err != nil {
		return nil, fmt.Errorf("users file %s: %w", path, err)
	}
	return users, nil
}

// Get returns the user called name, if the file has one.
func (f *FileUsers) Get(name string) (User, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	u, ok := f.users[name]
	return u, ok
}

// List returns the file's users by name, without their hashes.
func (f *FileUsers) List() []User {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]User, 0, len(f.users))
	for _, u := range f.users {
		u.Hash = ""
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b User) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// ParseUsers reads users-file lines. The first bad line ends the parse
// with an error that names it (line numbers count from 1).
func ParseUsers(r io.Reader) (map[string]User, error) {
	users := map[string]User{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	n, size := 0, 0
	for sc.Scan() {
		n++
		size += len(sc.Bytes()) + 1
		if size > maxUsersFile {
			return nil, fmt.Errorf("larger than %d bytes", maxUsersFile)
		}
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		u, err := parseUserLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if _, dup := users[u.Name]; dup {
			return nil, fmt.Errorf("line %d: user %s appears twice", n, u.Name)
		}
		users[u.Name] = u
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("line %d: longer than 64 KiB", n+1)
		}
		return nil, err
	}
	return users, nil
}

func parseUserLine(line string) (User, error) {
	fields := strings.Fields(line)
	if len(fields) < 2 {
		return User{}, errors.New("want NAME HASH [options]")
	}
	u := User{Name: fields[0], Hash: fields[1], Source: SourceFile}
	if err := ValidateName(u.Name); err != nil {
		return User{}, err
	}
	if err := validateHash(u.Hash); err != nil {
		return User{}, fmt.Errorf("user %s: %w", u.Name, err)
	}
	seen := map[string]bool{}
	for _, opt := range fields[2:] {
		key, value, hasValue := strings.Cut(opt, "=")
		if seen[key] {
			return User{}, fmt.Errorf("user %s: %s given twice", u.Name, key)
		}
		seen[key] = true
		var err error
		switch {
		case key == "allow_from" && hasValue:
			u.AllowFrom = strings.Split(value, ",")
			err = ValidatePatterns(u.AllowFrom)
		case key == "require_tls" && !hasValue:
			u.RequireTLS = true
		case key == "any_header_from" && !hasValue:
			u.AnyHeaderFrom = true
		case key == "messages_per_hour" && hasValue:
			u.MessagesPerHour, err = perHour(value)
		case key == "recipients_per_hour" && hasValue:
			u.RecipientsPerHour, err = perHour(value)
		default:
			err = fmt.Errorf("unknown option %q (want allow_from=GLOB,GLOB, require_tls, any_header_from, messages_per_hour=N, recipients_per_hour=N)", opt)
		}
		if err != nil {
			return User{}, fmt.Errorf("user %s: %w", u.Name, err)
		}
	}
	return u, nil
}

// perHour parses a per-user limit: a count, 0 meaning unlimited.
func perHour(s string) (*int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("%q is not a count (0 means unlimited)", s)
	}
	return &n, nil
}

// validateHash accepts the hashes checkPassword can compare, and refuses
// anything else at load rather than at the user's first login.
func validateHash(hash string) error {
	if strings.HasPrefix(hash, "$2") {
		if _, err := bcryptCost(hash); err != nil {
			return err
		}
		return nil
	}
	if _, err := parseArgon2id(hash); err != nil {
		return fmt.Errorf("hash is neither argon2id ($argon2id$v=19$m=…) nor bcrypt ($2b$…): %w", err)
	}
	return nil
}
