package attest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzRedeem presents join tokens as an unauthenticated caller does:
// any token for any workload, beside a real token made for demo/api-1.
// The fuzzed token may be used as it is, or spliced onto the real one.
// Only the real token redeems, once, for its own workload; no error
// repeats the token; nothing is written outside the token directory.
func FuzzRedeem(f *testing.F) {
	for _, s := range []struct {
		mode            uint8
		token, workload string
	}{
		{0, "", "demo/api-1"},
		{1, "", "demo/api-1"},
		{1, "", "demo/frontend-1"},
		{2, "x", "demo/api-1"},
		{2, "\x00", "demo/api-1"},
		{0, TokenPrefix, "demo/api-1"},
		{0, TokenPrefix + "../../../etc/passwd", "demo/api-1"},
		{0, TokenPrefix + strings.Repeat("A", 100000), "demo/api-1"},
		{1, "", strings.Repeat("w", 100000)},
		{1, "", "demo/api-1\x1b[2J"},
		{3, "", "demo/api-1"},
	} {
		f.Add(s.mode, s.token, s.workload)
	}
	dir := f.TempDir()
	tokens := filepath.Join(dir, "tokens")
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	j, err := NewJoinTokens(tokens, func() time.Time { return now })
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, mode uint8, token, workload string) {
		real, err := j.Create("demo/api-1", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		base := filepath.Join(tokens, hashToken(real))
		defer os.Remove(base + ".json")
		defer os.Remove(base + ".used")
		switch mode % 4 {
		case 1:
			token = real
		case 2:
			token = real + token
		case 3:
			token = strings.ToUpper(real)
		}
		err = j.Redeem(token, workload)
		switch {
		case token == real && workload == "demo/api-1":
			if err != nil {
				t.Fatalf("the real token did not redeem: %v", err)
			}
			if err := j.Redeem(token, workload); !errors.Is(err, ErrTokenUsed) {
				t.Fatalf("the real token redeemed twice: %v", err)
			}
		case token == real:
			if !errors.Is(err, ErrTokenWorkload) {
				t.Fatalf("the real token, for %q: %v", workload, err)
			}
		case err == nil:
			t.Fatalf("token %q redeemed for %q", token, workload)
		}
		if err != nil && len(token) >= 8 && strings.Contains(err.Error(), token) {
			t.Fatalf("the error repeats the token: %v", err)
		}
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) != 1 {
			t.Fatalf("the parent of the token directory holds %v (%v)", entries, err)
		}
	})
}
