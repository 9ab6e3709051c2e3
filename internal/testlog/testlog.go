// Package testlog gives tests a slog.Logger whose output goes to t.Log,
// so it shows only for failing tests (or with -v), and which goes quiet
// once the test has finished instead of panicking.
package testlog

import (
	"bytes"
	"log/slog"
	"sync"
	"testing"
)

// New returns a debug-level logger writing to t.Log.
func New(t testing.TB) *slog.Logger {
	w := &writer{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type writer struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(bytes.TrimRight(p, "\n")))
	}
	return len(p), nil
}
