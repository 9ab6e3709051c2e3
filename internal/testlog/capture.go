package testlog

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
)

// Lines holds what a logger from Capture wrote. It is safe for
// concurrent use.
type Lines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *Lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// All returns every line written so far, without its newline.
func (l *Lines) All() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := strings.TrimSuffix(l.buf.String(), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// String returns everything written so far.
func (l *Lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Capture returns a debug-level text logger whose lines the test reads
// back from the returned Lines, to check what was logged and how.
func Capture() (*slog.Logger, *Lines) {
	lines := &Lines{}
	return slog.New(slog.NewTextHandler(lines, &slog.HandlerOptions{Level: slog.LevelDebug})), lines
}
