package auth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// argon2id parameters: the OWASP recommendation for argon2id (19 MiB, two
// passes, one lane), about 20 ms here. Parameters are stored with each hash,
// so raising them later does not invalidate existing ones.
const (
	argonMemory  = 19 * 1024
	argonTime    = 2
	argonThreads = 1
	argonKeyLen  = 32
)

var b64 = base64.RawStdEncoding

// HashPassword returns an argon2id hash in the PHC string format.
func HashPassword(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, argonMemory, argonTime, argonThreads, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

var errMalformedHash = errors.New("malformed password hash")

// checkPassword compares in constant time. bcrypt hashes are accepted too, so
// users can be imported from systems that use them.
func checkPassword(hash, password string) (bool, error) {
	if strings.HasPrefix(hash, "$2") {
		err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(password))
		if errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
			return false, nil
		}
		return err == nil, err
	}
	p, err := parseArgon2id(hash)
	if err != nil {
		return false, err
	}
	got := argon2.IDKey([]byte(password), p.salt, p.passes, p.memory, p.threads, uint32(len(p.key)))
	return subtle.ConstantTimeCompare(got, p.key) == 1, nil
}

type argon2idHash struct {
	memory, passes uint32
	threads        uint8
	salt, key      []byte
}

// parseArgon2id reads a PHC string: $argon2id$v=19$m=…,t=…,p=…$salt$key.
func parseArgon2id(hash string) (argon2idHash, error) {
	var p argon2idHash
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return p, errMalformedHash
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return p, errMalformedHash
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.memory, &p.passes, &p.threads); err != nil {
		return p, errMalformedHash
	}
	// A hash from elsewhere must not make each login allocate gigabytes
	// or spin for minutes: the hash semaphore bounds how many run, not
	// what each costs.
	if p.memory < 8 || p.memory > 1<<20 || p.passes < 1 || p.passes > 64 || p.threads < 1 {
		return p, fmt.Errorf("%w: parameters m=%d,t=%d,p=%d out of range (m up to 1048576 KiB, t up to 64)",
			errMalformedHash, p.memory, p.passes, p.threads)
	}
	// The work is memory × passes: each bound alone still let m=1 GiB
	// with t=64 through, over a minute of CPU per wrong password, which
	// no one can interrupt, in one of a handful of hash slots.
	if uint64(p.memory)*uint64(p.passes) > maxArgon2Work {
		return p, fmt.Errorf("%w: parameters m=%d,t=%d cost more than m×t = %d KiB (4 GiB × 1 pass, about 5 s a login)",
			errMalformedHash, p.memory, p.passes, uint64(maxArgon2Work))
	}
	var err1, err2 error
	p.salt, err1 = b64.DecodeString(parts[4])
	p.key, err2 = b64.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(p.key) < 16 || len(p.salt) < 8 {
		return p, errMalformedHash
	}
	return p, nil
}

// The costliest hashes accepted: a comparison runs to its end in a hash
// slot whatever the client does, so one user's hash must not be able to
// hold the slots that every login waits for. Both are about 5 s here;
// bcrypt takes up to 31 (2^31 rounds, a day and a half), argon2id's
// parameters go as high as the memory. libsodium's "sensitive" argon2id
// (1 GiB, t=4) and bcrypt 16 are the most that real systems store.
const (
	maxBcryptCost = 16
	maxArgon2Work = 4 << 20 // KiB × passes
)

// bcryptCost checks a bcrypt hash's form and returns its cost.
func bcryptCost(hash string) (int, error) {
	cost, err := bcrypt.Cost([]byte(hash))
	if err != nil {
		return 0, fmt.Errorf("bcrypt hash: %w", err)
	}
	if cost > maxBcryptCost {
		return 0, fmt.Errorf("bcrypt hash: cost %d is over %d (each login would take %s or more)",
			cost, maxBcryptCost, time.Duration(1<<(cost-maxBcryptCost))*4*time.Second)
	}
	return cost, nil
}
