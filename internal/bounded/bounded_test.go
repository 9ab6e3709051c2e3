package bounded

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestQuoteAndText(t *testing.T) {
	for _, tc := range []struct {
		name, in    string
		max         int
		quote, text string
	}{
		{"plain", "demo/frontend-1", Name, `"demo/frontend-1"`, `demo/frontend-1`},
		{"empty", "", Name, `""`, ``},
		{"terminal escape", "ok\x1b[31mRED\x1b[0m", Name, `"ok\x1b[31mRED\x1b[0m"`, `ok\x1b[31mRED\x1b[0m`},
		{"newlines and tabs", "a\nb\tc\r", Name, `"a\nb\tc\r"`, `a\nb\tc\r`},
		{"quotes and backslashes", `say "hi" \n`, Name, `"say \"hi\" \\n"`, `say "hi" \\n`},
		{"bidi override", "admin\u202egpj.exe", Name, `"admin\u202egpj.exe"`, `admin\u202egpj.exe`},
		{"C1 control", "a\u009bb", Name, `"a\u009bb"`, `a\u009bb`},
		{"invalid UTF-8", "a\xffb", Name, `"a\xffb"`, `a\xffb`},
		{"printable non-ASCII kept", "café ✓", Name, `"café ✓"`, `café ✓`},
		{"cut", "abcdefghij", 4, `"abcd" (+6 bytes cut)`, `abcd (+6 bytes cut)`},
		{"cut on an escape, never inside it", "ab\x1bcd", 4, `"ab" (+3 bytes cut)`, `ab (+3 bytes cut)`},
		{"cut on a rune, never inside it", "aé", 2, `"a" (+2 bytes cut)`, `a (+2 bytes cut)`},
		{"zero budget", "abc", 0, `"" (+3 bytes cut)`, ` (+3 bytes cut)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Quote(tc.in, tc.max); got != tc.quote {
				t.Errorf("Quote(%q, %d) = %s, want %s", tc.in, tc.max, got, tc.quote)
			}
			if got := Text(tc.in, tc.max); got != tc.text {
				t.Errorf("Text(%q, %d) = %s, want %s", tc.in, tc.max, got, tc.text)
			}
		})
	}
}

// TestOutputIsBoundedAndPrintable: whatever comes in, what goes out is
// at most the budget plus Overhead, and holds no control character.
func TestOutputIsBoundedAndPrintable(t *testing.T) {
	huge := strings.Repeat("\x1b[2J\u202e\xff\"\\x", 1<<18) // about 3 MiB
	for _, max := range []int{0, 1, 5, Name, Message} {
		for _, f := range []func(string, int) string{Quote, Text} {
			out := f(huge, max)
			if len(out) > max+Overhead {
				t.Errorf("budget %d: %d bytes out", max, len(out))
			}
			if !utf8.ValidString(out) {
				t.Errorf("budget %d: invalid UTF-8 out", max)
			}
			for _, r := range out {
				if !unicode.IsPrint(r) {
					t.Fatalf("budget %d: non-printable %U in %q", max, r, out)
				}
			}
			if !strings.HasSuffix(out, " bytes cut)") {
				t.Errorf("budget %d: no marker in %q", max, out)
			}
		}
	}
}

func FuzzQuote(f *testing.F) {
	for _, s := range []string{"", "demo/api-1", "\x1b]0;title\x07", "\xff\xfe", strings.Repeat("é", 300)} {
		f.Add(s, 16)
	}
	f.Fuzz(func(t *testing.T, s string, max int) {
		max = max & 0xfff
		for _, out := range []string{Quote(s, max), Text(s, max)} {
			if len(out) > max+Overhead {
				t.Fatalf("%d bytes out for a budget of %d", len(out), max)
			}
			for _, r := range out {
				if !unicode.IsPrint(r) {
					t.Fatalf("non-printable %U in %q", r, out)
				}
			}
		}
		if len(s) <= max && !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || r == '\\' || r == '"' }) && utf8.ValidString(s) {
			if got := Text(s, max); got != s {
				t.Fatalf("Text changed a printable string that fits: %q -> %q", s, got)
			}
		}
	})
}
