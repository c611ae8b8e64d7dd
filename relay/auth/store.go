// Package auth holds the submission users: their credentials, the senders
// each may use, and the defences around checking them.
package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/net/idna"
)

var (
	ErrNoSuchUser = errors.New("no such user")
	ErrUserExists = errors.New("user already exists")
)

var bucketUsers = []byte("users")

// User is one submission credential.
type User struct {
	Name string `json:"name"`
	Hash string `json:"hash"`
	// AllowFrom lists the senders the user may use, as glob patterns
	// ("*@example.com"); empty means any sender. They bind the envelope
	// sender and every address of the header From and Sender fields.
	AllowFrom []string `json:"allow_from,omitempty"`
	// AnyHeaderFrom exempts the user's header From and Sender fields from
	// AllowFrom (a list manager, say, that sends on behalf of its
	// members). The envelope sender is still bound, and no DKIM key signs
	// for a From domain the patterns do not allow.
	AnyHeaderFrom bool `json:"any_header_from,omitempty"`
	// RequireTLS treats all of the user's mail as REQUIRETLS (RFC 8689):
	// verified TLS at every hop, or a bounce. For a compliance egress.
	RequireTLS bool `json:"require_tls,omitempty"`
	// MessagesPerHour and RecipientsPerHour are the user's own sending
	// limits; nil takes submission.limits, 0 is unlimited.
	MessagesPerHour   *int      `json:"messages_per_hour,omitempty"`
	RecipientsPerHour *int      `json:"recipients_per_hour,omitempty"`
	Created           time.Time `json:"created"`
	Updated           time.Time `json:"updated"`
	// Source says where the user comes from: SourceFile, SourceStore or
	// SourceLDAP. It is not stored.
	Source string `json:"source,omitempty"`
}

// MaySend reports whether the user may use the address from as a sender.
// The null sender is refused for users with restrictions: bounces are
// Postern's to send. Case does not matter, and an internationalised domain
// matches in either of its forms (U-label or A-label, RFC 5890), so that
// "*@xn--bcher-kva.example" also allows "a@bücher.example"; a domain that
// is not valid IDNA is matched only as written.
func (u User) MaySend(from string) bool {
	if len(u.AllowFrom) == 0 {
		return true
	}
	if from == "" {
		return false
	}
	forms := []string{strings.ToLower(from)}
	if at := strings.LastIndexByte(from, '@'); at >= 0 {
		if a, err := idna.Lookup.ToASCII(from[at+1:]); err == nil {
			forms = append(forms, strings.ToLower(from[:at+1]+a))
		}
	}
	for _, p := range u.AllowFrom {
		p = strings.ToLower(p)
		for _, f := range forms {
			if ok, _ := path.Match(p, f); ok {
				return true
			}
		}
	}
	return false
}

// Names appear in Received headers and logs, so they are kept to a safe alphabet.
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@+=-]{0,127}$`)

// ValidateName says why name cannot be a user name, or nil.
func ValidateName(name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("user name %q: use 1-128 letters, digits and . _ @ + = - (starting with a letter or digit)", name)
	}
	return nil
}

// ValidatePatterns checks sender patterns for syntax.
func ValidatePatterns(patterns []string) error {
	for _, p := range patterns {
		if _, err := path.Match(p, ""); err != nil || p == "" || strings.ContainsAny(p, " \r\n") {
			return fmt.Errorf("sender pattern %q is not a valid glob", p)
		}
	}
	return nil
}

// Store keeps users in the state database.
type Store struct {
	db    *bolt.DB
	clock func() time.Time
}

// NewStore uses db, creating its bucket if needed.
func NewStore(db *bolt.DB, clock func() time.Time) (*Store, error) {
	if clock == nil {
		clock = time.Now
	}
	err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketUsers)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("user store: %w", err)
	}
	return &Store{db: db, clock: clock}, nil
}

// Add creates a user.
func (s *Store) Add(name, password string, allowFrom []string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if err := ValidatePatterns(allowFrom); err != nil {
		return err
	}
	if password == "" {
		return errors.New("empty password")
	}
	hash, err := HashPassword(password)
	if err != nil {
		return err
	}
	now := s.clock()
	u := User{Name: name, Hash: hash, AllowFrom: allowFrom, Created: now, Updated: now}
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketUsers).Get([]byte(name)) != nil {
			return fmt.Errorf("%s: %w", name, ErrUserExists)
		}
		return putUser(tx, u)
	})
}

// SetPassword replaces a user's password.
func (s *Store) SetPassword(name, password string) error {
	if password == "" {
		return errors.New("empty password")
	}
	hash, err := HashPassword(password)
	if err != nil {
		return err
	}
	return s.change(name, func(u *User) { u.Hash = hash })
}

// SetAllowFrom replaces a user's sender patterns.
func (s *Store) SetAllowFrom(name string, allowFrom []string) error {
	if err := ValidatePatterns(allowFrom); err != nil {
		return err
	}
	return s.change(name, func(u *User) { u.AllowFrom = allowFrom })
}

// SetRequireTLS marks (or unmarks) a user whose mail must all travel as REQUIRETLS.
func (s *Store) SetRequireTLS(name string, on bool) error {
	return s.change(name, func(u *User) { u.RequireTLS = on })
}

// SetAnyHeaderFrom exempts (or no longer exempts) a user's header From and
// Sender fields from its sender patterns.
func (s *Store) SetAnyHeaderFrom(name string, on bool) error {
	return s.change(name, func(u *User) { u.AnyHeaderFrom = on })
}

// The per-user sending limits SetSendingLimit changes.
const (
	LimitMessages   = "messages_per_hour"
	LimitRecipients = "recipients_per_hour"
)

// SetSendingLimit sets one of a user's own hourly limits (LimitMessages or
// LimitRecipients); nil returns it to the default (submission.limits), 0
// makes it unlimited.
func (s *Store) SetSendingLimit(name, which string, n *int) error {
	if n != nil && *n < 0 {
		return fmt.Errorf("%s %d: want a count, 0 for unlimited", which, *n)
	}
	switch which {
	case LimitMessages:
		return s.change(name, func(u *User) { u.MessagesPerHour = n })
	case LimitRecipients:
		return s.change(name, func(u *User) { u.RecipientsPerHour = n })
	}
	return fmt.Errorf("no limit called %q (want %s or %s)", which, LimitMessages, LimitRecipients)
}

func (s *Store) change(name string, f func(*User)) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		u, err := getUser(tx, name)
		if err != nil {
			return err
		}
		f(&u)
		u.Updated = s.clock()
		return putUser(tx, u)
	})
}

// Delete removes a user.
func (s *Store) Delete(name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketUsers).Get([]byte(name)) == nil {
			return fmt.Errorf("%s: %w", name, ErrNoSuchUser)
		}
		return tx.Bucket(bucketUsers).Delete([]byte(name))
	})
}

// Get returns one user.
func (s *Store) Get(name string) (User, error) {
	var u User
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		u, err = getUser(tx, name)
		return err
	})
	return u, err
}

// List returns all users, by name. Hashes are left out.
func (s *Store) List() ([]User, error) {
	var out []User
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUsers).ForEach(func(_, v []byte) error {
			var u User
			if err := json.Unmarshal(v, &u); err != nil {
				return err
			}
			u.Hash = ""
			u.Source = SourceStore
			out = append(out, u)
			return nil
		})
	})
	return out, err
}

func getUser(tx *bolt.Tx, name string) (User, error) {
	var u User
	v := tx.Bucket(bucketUsers).Get([]byte(name))
	if v == nil {
		return u, fmt.Errorf("%s: %w", name, ErrNoSuchUser)
	}
	if err := json.Unmarshal(v, &u); err != nil {
		return u, fmt.Errorf("decode user %s: %w", name, err)
	}
	u.Source = SourceStore
	return u, nil
}

func putUser(tx *bolt.Tx, u User) error {
	u.Source = ""
	v, err := json.Marshal(u)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketUsers).Put([]byte(u.Name), v)
}
