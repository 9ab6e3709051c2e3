package attest

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Errors from redeeming a join token. They are deliberately distinct so
// operators can tell a typo from a replay from a stale token.
var (
	ErrTokenUnknown  = errors.New("unknown join token")
	ErrTokenUsed     = errors.New("join token was already used")
	ErrTokenExpired  = errors.New("join token expired")
	ErrTokenWorkload = errors.New("join token is bound to another workload")
)

// TokenPrefix starts every join token, so a leaked one is easy to find
// with a secret scanner.
const TokenPrefix = "bwjt_"

// DefaultTokenTTL is how long a join token stays redeemable.
const DefaultTokenTTL = time.Hour

// JoinTokens keeps join tokens in a directory: one file per token, named
// by the token's SHA-256, so the directory never holds a usable token.
// Redeeming renames the file, which only one caller can do: a token works
// once even when two agents race with it. Safe for concurrent use, also
// across processes sharing the directory.
type JoinTokens struct {
	dir string
	now func() time.Time
}

type tokenRecord struct {
	Workload  string    `json:"workload"`
	CreatedAt time.Time `json:"createdAt"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// NewJoinTokens uses dir (created if missing) with the given clock
// (time.Now if nil).
func NewJoinTokens(dir string, now func() time.Time) (*JoinTokens, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	return &JoinTokens{dir: dir, now: now}, nil
}

func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// Create makes a token for workload ("namespace/name") valid for ttl
// (DefaultTokenTTL if zero) and returns it. Only the returned string can
// redeem it.
func (j *JoinTokens) Create(workload string, ttl time.Duration) (string, error) {
	if ttl <= 0 {
		ttl = DefaultTokenTTL
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	token := TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	now := j.now()
	rec, err := json.Marshal(tokenRecord{Workload: workload, CreatedAt: now, ExpiresAt: now.Add(ttl)})
	if err != nil {
		return "", err
	}
	path := filepath.Join(j.dir, hashToken(token)+".json")
	if err := os.WriteFile(path, rec, 0o600); err != nil {
		return "", err
	}
	return token, nil
}

// Redeem uses up token for workload: it succeeds once, for an unexpired
// token bound to that workload. A token presented for another workload
// is used up too: whoever holds it has shown it to the wrong party.
func (j *JoinTokens) Redeem(token, workload string) error {
	if !strings.HasPrefix(token, TokenPrefix) {
		return ErrTokenUnknown
	}
	base := filepath.Join(j.dir, hashToken(token))
	data, err := os.ReadFile(base + ".json")
	if errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(base + ".used"); err == nil {
			return ErrTokenUsed
		}
		return ErrTokenUnknown
	}
	if err != nil {
		return fmt.Errorf("join tokens: %w", err)
	}
	// Claim it first: of two racing callers only one rename succeeds.
	if err := os.Rename(base+".json", base+".used"); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return ErrTokenUsed
		}
		return fmt.Errorf("join tokens: %w", err)
	}
	var rec tokenRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return fmt.Errorf("join tokens: corrupt record: %w", err)
	}
	if !j.now().Before(rec.ExpiresAt) {
		return fmt.Errorf("%w at %s", ErrTokenExpired, rec.ExpiresAt.Format(time.RFC3339))
	}
	if rec.Workload != workload {
		return ErrTokenWorkload
	}
	return nil
}
