package authz

import (
	"fmt"
	"strings"
)

// The sidecar's inbound connection manager has normalize_path and
// merge_slashes on, and path_with_escaped_slashes_action REJECT_REQUEST.
// NormalizePath reproduces what Envoy 1.40 then does to a request path
// before the RBAC filter sees it, step by step, as observed on the real
// Envoy (the end-to-end test test/e2e TestExplainAgreesWithEnvoyOnPaths
// compares the two over a generated corpus):
//
//  1. The HTTP/1 codec accepts only visible ASCII in the request target,
//     which must begin with "/"; anything else is answered with 400.
//  2. A fragment ("#") is answered with 400.
//  3. The query (from the first "?") is set aside: it is never
//     normalized, and the RBAC filter's path does not include it.
//  4. A percent-encoded slash or backslash ("%2F", "%5C", any case) is
//     answered with 400.
//  5. A segment (between literal "/") that begins with "..;" becomes "..",
//     and one that begins with ".;" becomes ".": the rest of the segment
//     is dropped. Only literal dots count here.
//  6. Envoy's copy of Chromium's URL path canonicalizer runs: "\" becomes
//     "/"; "." and ".." segments, literal or encoded as "%2E", are
//     resolved (never above the root); encoded letters, digits and "-._~"
//     are decoded; other escapes are kept as written, invalid ones too;
//     some characters are escaped ("\"<>^`{|}" and the like); an encoded
//     NUL ("%00") is answered with 400.
//  7. Repeated slashes are merged. (The path "//", which the canonicalizer
//     can also produce from "/a/..//", stays "//": Envoy's merge keeps one
//     leading and one trailing slash.)

// PathRejectedError says why the sidecar answers a request with 400
// before authorization sees it.
type PathRejectedError struct {
	Reason string
}

func (e *PathRejectedError) Error() string { return e.Reason }

func rejected(format string, args ...any) error {
	return &PathRejectedError{Reason: fmt.Sprintf(format, args...)}
}

// NormalizePath returns the path the sidecar's RBAC filter matches for a
// request whose target (path and query, as the client sends it) is raw,
// or a *PathRejectedError when the sidecar answers 400 before
// authorization. "" (no path: TCP) stays "". The query is not part of the
// result.
func NormalizePath(raw string) (string, error) {
	if raw == "" {
		return "", nil
	}
	if raw[0] != '/' {
		return "", rejected("a request path must begin with /")
	}
	for i := 0; i < len(raw); i++ {
		if c := raw[i]; c <= ' ' || c >= 0x7f {
			return "", rejected("the path has a byte the HTTP codec refuses (0x%02x: a space, a control character or non-ASCII)", c)
		}
	}
	if strings.Contains(raw, "#") {
		return "", rejected("the path has a fragment (#), which the sidecar refuses")
	}
	p := raw
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	if lower := strings.ToLower(p); strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c") {
		return "", rejected("the path has an encoded slash or backslash (%%2F, %%5C), which the sidecar refuses: one proxy and one app could read it two ways")
	}
	p = dropDotParams(p)
	p, ok := canonicalize(p)
	if !ok {
		return "", rejected("the path has an encoded NUL (%%00), which the sidecar refuses")
	}
	return mergeSlashes(p), nil
}

// dropDotParams is step 5: "/a/..;x/b" becomes "/a/../b".
func dropDotParams(p string) string {
	if !strings.Contains(p, ".;") {
		return p
	}
	segs := strings.Split(p, "/")
	for i, s := range segs {
		switch {
		case strings.HasPrefix(s, "..;"):
			segs[i] = ".."
		case strings.HasPrefix(s, ".;"):
			segs[i] = "."
		}
	}
	return strings.Join(segs, "/")
}

// mergeSlashes is step 7, the way Envoy does it: the non-empty segments
// joined, with the leading and trailing slash kept.
func mergeSlashes(p string) string {
	if !strings.Contains(p, "//") {
		return p
	}
	var b strings.Builder
	b.WriteByte('/')
	first := true
	for _, s := range strings.Split(p, "/") {
		if s == "" {
			continue
		}
		if !first {
			b.WriteByte('/')
		}
		b.WriteString(s)
		first = false
	}
	if strings.HasSuffix(p, "/") {
		b.WriteByte('/')
	}
	return b.String()
}

// What the canonicalizer does with each byte, unescaped in the input
// (pathPass, pathEscape) and after decoding an escape (pathUnescape:
// decode it; anything else: keep the escape as written).
const (
	pathPass = iota
	pathEscape
	pathUnescape
	pathInvalid
)

var pathChar = func() (t [256]byte) {
	for c := 0; c < 256; c++ {
		switch {
		case c == 0:
			t[c] = pathInvalid
		case c < 0x20 || c >= 0x7f:
			t[c] = pathEscape
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '~':
			t[c] = pathUnescape
		case strings.IndexByte(" \"#%<>?\\^`{|}", byte(c)) >= 0:
			t[c] = pathEscape
		default: // !$&'()*+,./:;=@[]
			t[c] = pathPass
		}
	}
	return t
}()

// canonicalize is step 6. It reports false when the path has an encoded
// NUL; the output is then of no use.
func canonicalize(in string) (string, bool) {
	out := make([]byte, 0, len(in))
	ok := true
	lastBadPercent := -1 << 30 // where in out a '%' that began no valid escape is
	for i := 0; i < len(in); i++ {
		c := in[i]
		if n := dotAt(in, i); n > 0 {
			if len(out) > 0 && out[len(out)-1] == '/' {
				kind, consumed := afterDot(in, i+n)
				switch kind {
				case dotNotDir:
					out = append(out, '.')
				case dotUp:
					out = upToPreviousSlash(out)
				}
				if kind == dotNotDir {
					i += n - 1
				} else {
					i += n + consumed - 1
				}
			} else {
				out = append(out, '.')
				i += n - 1
			}
			continue
		}
		switch {
		case c == '\\':
			out = append(out, '/')
		case c == '%':
			v, valid := hexEscape(in, i)
			switch {
			case !valid:
				lastBadPercent = len(out)
				out = append(out, '%')
			case pathChar[v] == pathUnescape:
				i += 2
				out = append(out, v)
				if lastBadPercent >= len(out)-3 {
					out = nestedEscapes(in, i+1, lastBadPercent, out)
				}
			default:
				out = append(out, in[i:i+3]...)
				i += 2
				if pathChar[v] == pathInvalid {
					ok = false
				}
			}
		case pathChar[c] == pathInvalid:
			out = append(out, fmt.Sprintf("%%%02X", c)...)
			ok = false
		case pathChar[c] == pathEscape:
			out = append(out, fmt.Sprintf("%%%02X", c)...)
		default:
			out = append(out, c)
		}
	}
	return string(out), ok
}

// dotAt returns the length of a dot at in[i]: 1 for ".", 3 for "%2E" in
// either case, 0 for no dot.
func dotAt(in string, i int) int {
	switch {
	case in[i] == '.':
		return 1
	case in[i] == '%' && i+2 < len(in) && in[i+1] == '2' && (in[i+2] == 'e' || in[i+2] == 'E'):
		return 3
	}
	return 0
}

const (
	dotNotDir = iota
	dotCurrent
	dotUp
)

// afterDot classifies a dot that follows a slash by what comes after it
// at in[j:], and says how much of that it consumes.
func afterDot(in string, j int) (kind, consumed int) {
	if j == len(in) {
		return dotCurrent, 0
	}
	if in[j] == '/' || in[j] == '\\' {
		return dotCurrent, 1
	}
	if n := dotAt(in, j); n > 0 {
		k := j + n
		if k == len(in) {
			return dotUp, n
		}
		if in[k] == '/' || in[k] == '\\' {
			return dotUp, n + 1
		}
	}
	return dotNotDir, 0
}

// upToPreviousSlash drops the last segment of out, which ends with a
// slash, never going above the first slash.
func upToPreviousSlash(out []byte) []byte {
	i := len(out) - 1
	if i == 0 {
		return out
	}
	i--
	for i > 0 && out[i] != '/' {
		i--
	}
	return out[:i+1]
}

// hexEscape decodes the escape at in[i] ('%'), if it is a valid one.
func hexEscape(in string, i int) (byte, bool) {
	if i+2 >= len(in) {
		return 0, false
	}
	hi, ok1 := unhex(in[i+1])
	lo, ok2 := unhex(in[i+2])
	return hi<<4 | lo, ok1 && ok2
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// nestedEscapes keeps a decoded character from completing an escape
// with an earlier stray '%' ("%%30%30" must not become "%00"): if the
// '%' at bad and what follows it in out (plus the next input byte at
// in[next], when out has only one byte after the '%') now read as a valid
// escape, the '%' is written as "%25".
func nestedEscapes(in string, next, bad int, out []byte) []byte {
	length := len(out)
	last := out[length-1]
	appendNext := bad == length-2
	if appendNext {
		if next == len(in) {
			return out
		}
		out = append(out, in[next])
	}
	if _, valid := hexEscape(string(out), bad); valid {
		if !appendNext {
			out = append(out, out[bad+1])
		}
		out[bad+1], out[bad+2] = '2', '5'
		return append(out, last)
	}
	if appendNext {
		out = out[:length]
	}
	return out
}
