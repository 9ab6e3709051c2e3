package bounded

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Budgets, in bytes of escaped text, for what clients send.
const (
	// Name is for identifiers: node IDs, workload names, SPIFFE IDs,
	// type URLs, resource names, versions. Every valid one fits.
	Name = 256
	// Message is for free text: error messages, such as the detail of
	// an Envoy NACK.
	Message = 2048
	// Overhead is the most that Quote adds to a budget: the quotes and
	// the marker of a cut.
	Overhead = 40
)

// Quote returns s as a double-quoted Go string literal of at most max
// bytes between the quotes. When s does not fit, the literal holds as
// much of s as fits, whole runes only, and is followed by a marker such
// as ` (+3145700 bytes cut)`. The result is never longer than
// max+Overhead bytes and holds only printable runes.
func Quote(s string, max int) string {
	var b strings.Builder
	b.WriteByte('"')
	cut := write(&b, s, max, true)
	b.WriteByte('"')
	marker(&b, cut)
	return b.String()
}

// Text is Quote without the quotes, for prose such as an error message:
// double quotes stay as they are, everything else is escaped as by
// Quote. The result is never longer than max+Overhead bytes.
func Text(s string, max int) string {
	var b strings.Builder
	cut := write(&b, s, max, false)
	marker(&b, cut)
	return b.String()
}

// write appends the escaped form of s to b, at most max bytes of it, and
// returns how many bytes of s did not fit.
func write(b *strings.Builder, s string, max int, quoted bool) int {
	written := 0
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		var piece string
		switch {
		case r == utf8.RuneError && size == 1:
			piece = `\x` + hex2(s[i])
		case r == '"' && !quoted:
			piece = `"`
		case r == '\\':
			piece = `\\`
		case r != '"' && r < utf8.RuneSelf && strconv.IsPrint(r):
			piece = s[i : i+size] // the common case, without allocating
		default:
			q := strconv.Quote(s[i : i+size])
			piece = q[1 : len(q)-1]
		}
		if written+len(piece) > max {
			return len(s) - i
		}
		b.WriteString(piece)
		written += len(piece)
		i += size
	}
	return 0
}

func marker(b *strings.Builder, cut int) {
	if cut > 0 {
		b.WriteString(" (+")
		b.WriteString(strconv.Itoa(cut))
		b.WriteString(" bytes cut)")
	}
}

func hex2(c byte) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[c>>4], digits[c&0xf]})
}
