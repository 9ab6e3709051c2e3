// Package bounded makes a value that a client sent safe to log, store,
// return in an error or print: it is cut to a fixed budget of bytes, with
// a marker that says how much was cut, and every control character,
// non-printable rune (terminal escapes, bidirectional overrides) and
// invalid UTF-8 byte is written as a Go escape sequence.
//
// It must stay a leaf: it imports nothing of this module, so both the
// control plane and the sidecar can use it.
package bounded
