package attest

import (
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
)

func TestJoinTokenWorksOnceUnderARace(t *testing.T) {
	j, err := NewJoinTokens(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := j.Create("demo/api-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	results := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() { defer wg.Done(); results <- j.Redeem(tok, "demo/api-1") }()
	}
	wg.Wait()
	close(results)
	ok, used := 0, 0
	for err := range results {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrTokenUsed):
			used++
		default:
			t.Errorf("unexpected error %v", err)
		}
	}
	if ok != 1 || used != 15 {
		t.Errorf("%d redeemed, %d refused as used; want 1 and 15", ok, used)
	}
}

func TestTokenDirectoryHoldsNoUsableToken(t *testing.T) {
	dir := t.TempDir()
	j, _ := NewJoinTokens(dir, nil)
	tok, _ := j.Create("demo/api-1", 0)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, _ := os.ReadFile(dir + "/" + e.Name())
		if strings.Contains(string(b), tok) || strings.Contains(e.Name(), tok) {
			t.Fatalf("%s reveals the token", e.Name())
		}
	}
}
