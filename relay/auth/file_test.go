package auth

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func testHashes(t *testing.T) (argon, bcryptHash string) {
	t.Helper()
	argon, err := HashPassword("app-secret")
	if err != nil {
		t.Fatal(err)
	}
	b, err := bcrypt.GenerateFromPassword([]byte("legacy-secret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return argon, string(b)
}

func TestParseUsersFile(t *testing.T) {
	argon, bc := testHashes(t)
	text := "# written by Ansible\n\n" +
		"app " + argon + " allow_from=*@example.org,billing@example.com messages_per_hour=500 recipients_per_hour=0\n" +
		"   # indented comment\n" +
		"legacy " + bc + " require_tls any_header_from\n"
	users, err := ParseUsers(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	app, legacy := users["app"], users["legacy"]
	if len(users) != 2 || app.Source != SourceFile || len(app.AllowFrom) != 2 || app.AllowFrom[1] != "billing@example.com" ||
		app.MessagesPerHour == nil || *app.MessagesPerHour != 500 || app.RecipientsPerHour == nil || *app.RecipientsPerHour != 0 ||
		app.RequireTLS || !legacy.RequireTLS || !legacy.AnyHeaderFrom || legacy.MessagesPerHour != nil {
		t.Fatalf("parsed %+v", users)
	}

	// Each bad line is named by its number.
	for _, tc := range []struct{ text, want string }{
		{"app\n", "line 1: want NAME HASH"},
		{"# c\napp plaintext\n", "line 2: user app: hash is neither argon2id"},
		{"app " + argon + "\n\napp " + bc + "\n", "line 3: user app appears twice"},
		{"app " + argon + " allow_from=[\n", "line 1: user app: sender pattern \"[\""},
		{"app " + argon + " allow_from=a@b,\n", "line 1: user app: sender pattern \"\""},
		{"app " + argon + " messages_per_hour=-1\n", "line 1: user app: \"-1\" is not a count"},
		{"app " + argon + " recipients_per_hour=many\n", "line 1: user app: \"many\" is not a count"},
		{"app " + argon + " require_tls=yes\n", "line 1: user app: unknown option \"require_tls=yes\""},
		{"app " + argon + " quota=5\n", "line 1: user app: unknown option"},
		{"app " + argon + " require_tls require_tls\n", "line 1: user app: require_tls given twice"},
		{"bad/name " + argon + "\n", "line 1: user name \"bad/name\""},
		{"app $argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5\n", "line 1: user app: hash is neither"},
		{"app $2b$04$short\n", "line 1: user app: bcrypt hash"},
	} {
		_, err := ParseUsers(strings.NewReader(tc.text))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.text, err, tc.want)
		}
	}
}

// TestUsersFileReloadKeepsOldUsersOnError: a file that fails to parse
// changes nothing; a good one replaces the users at once.
func TestUsersFileReloadKeepsOldUsersOnError(t *testing.T) {
	argon, bc := testHashes(t)
	path := filepath.Join(t.TempDir(), "users")
	os.WriteFile(path, []byte("app "+argon+"\n"), 0o600)
	f, err := LoadUsersFile(path)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path, []byte("app "+argon+"\nlegacy "+bc+" require_tls=1\n"), 0o600)
	if _, err := f.Reload(); err == nil || !strings.Contains(err.Error(), "users file "+path+": line 2") {
		t.Fatalf("bad reload: %v", err)
	}
	if _, ok := f.Get("app"); !ok {
		t.Fatal("a failed reload dropped the users in force")
	}
	os.WriteFile(path, []byte("legacy "+bc+"\n"), 0o600)
	if n, err := f.Reload(); err != nil || n != 1 {
		t.Fatalf("good reload: %d %v", n, err)
	}
	if _, ok := f.Get("app"); ok {
		t.Fatal("a user removed from the file still exists")
	}
	if _, err := LoadUsersFile(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("a missing users file loads")
	}
}

// TestVerifyFileUsers: file users log in with argon2id and bcrypt hashes,
// through the hash slots like store users; the file shadows the store; an
// unknown name costs a hash as a known one does.
func TestVerifyFileUsers(t *testing.T) {
	argon, bc := testHashes(t)
	path := filepath.Join(t.TempDir(), "users")
	os.WriteFile(path, []byte("app "+argon+" allow_from=*@example.org\nlegacy "+bc+"\n"), 0o600)
	f, err := LoadUsersFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := newStore(t)
	s.Add("app", "store-password", nil)
	s.Add("stored", "stored-password", nil)
	v := NewVerifier(s, DefaultLimits, nil)
	v.SetFile(f)
	var hashes atomic.Int32
	v.checkPassword = func(hash, pw string) (bool, error) { hashes.Add(1); return checkPassword(hash, pw) }
	ctx := context.Background()
	for _, tc := range []struct {
		name, password, source string
		ok                     bool
	}{
		{"app", "app-secret", SourceFile, true},
		{"app", "store-password", "", false}, // shadowed
		{"legacy", "legacy-secret", SourceFile, true},
		{"stored", "stored-password", SourceStore, true},
		{"ghost", "anything", "", false},
	} {
		before := hashes.Load()
		u, _, err := v.Verify(ctx, "192.0.2.9", tc.name, tc.password)
		if tc.ok != (err == nil) || (tc.ok && u.Source != tc.source) {
			t.Errorf("%s/%s: user %+v, err %v", tc.name, tc.password, u, err)
		}
		if !tc.ok && !errors.Is(err, ErrBadCredentials) {
			t.Errorf("%s: %v, want bad credentials", tc.name, err)
		}
		if hashes.Load() != before+1 {
			t.Errorf("%s: %d hashes computed, want 1", tc.name, hashes.Load()-before)
		}
	}
	if u, _, _ := v.Verify(ctx, "192.0.2.9", "app", "app-secret"); !u.MaySend("a@example.org") || u.MaySend("a@example.com") {
		t.Errorf("file user's sender patterns not applied: %+v", u)
	}

	list, err := v.Users()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, u := range list {
		got = append(got, u.Name+":"+u.Source)
		if u.Hash != "" {
			t.Errorf("list shows %s's hash", u.Name)
		}
	}
	if want := "app:file legacy:file app:store (shadowed by file) stored:store"; strings.Join(got, " ") != want {
		t.Errorf("list: %s, want %s", strings.Join(got, " "), want)
	}
}

type recordingDirectory struct{ asked []string }

func (d *recordingDirectory) Authenticate(_ context.Context, name, _ string) (User, error) {
	d.asked = append(d.asked, name)
	return User{Name: name, AllowFrom: []string{name}}, nil
}
func (d *recordingDirectory) String() string { return "test directory" }

// TestDirectoryNamesKeepTheAlphabet: a name that could not be a local
// user's (it would go into Received headers and logs) never reaches the
// directory, and costs a hash like an unknown name.
func TestDirectoryNamesKeepTheAlphabet(t *testing.T) {
	v := NewVerifier(newStore(t), DefaultLimits, nil)
	dir := &recordingDirectory{}
	v.SetDirectory(dir)
	var hashes atomic.Int32
	v.checkPassword = func(hash, pw string) (bool, error) { hashes.Add(1); return checkPassword(hash, pw) }
	for _, name := range []string{"bob\r\nX-Injected: 1", "a b", "*", ""} {
		if _, _, err := v.Verify(context.Background(), "192.0.2.7", name, "pw"); !errors.Is(err, ErrBadCredentials) {
			t.Errorf("%q: %v", name, err)
		}
	}
	if len(dir.asked) != 0 || hashes.Load() != 4 {
		t.Errorf("directory asked for %q; %d hashes", dir.asked, hashes.Load())
	}
	if u, _, err := v.Verify(context.Background(), "192.0.2.7", "bob@example.org", "pw"); err != nil || u.Source != SourceLDAP {
		t.Errorf("a good name: %+v %v", u, err)
	}
}
