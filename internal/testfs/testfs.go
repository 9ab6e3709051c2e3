// Package testfs writes files the way editors and ConfigMap updates do,
// for tests of file watchers.
package testfs

import (
	"os"
	"testing"
)

// ReplaceFile writes body to a temporary file beside path and renames it
// over path, so a reader never sees the file half written.
func ReplaceFile(path, body string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Replace is ReplaceFile that fails the test on error.
func Replace(t testing.TB, path, body string) {
	t.Helper()
	if err := ReplaceFile(path, body); err != nil {
		t.Fatal(err)
	}
}
