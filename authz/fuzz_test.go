package authz

import (
	"strings"
	"testing"

	"github.com/bulwarkmesh/bulwark/model"
)

// FuzzPathMatch: for any pattern and any request path, normalization
// leaves nothing it should have removed, and a DENY's widening never
// narrows: whatever the pattern matches as an ALLOW it matches as a DENY.
// (That Envoy normalizes and matches the same way is the end-to-end test
// TestExplainAgreesWithEnvoyOnPaths, with the real Envoy.)
func FuzzPathMatch(f *testing.F) {
	for _, s := range [][2]string{
		{"/admin", "/;/admin"}, {"/admin/*", "/admin;x/y"}, {"/beta/**", "/beta"}, {"/files/**/private", "/files/private"},
		{"/users/*/profile", "/users/;/profile"}, {"/public/*", "/public/%2e%2e;/admin"}, {"/a", "/x/..\\a"},
		{"/a", "/hello/..;/a"}, {"/a", "/a%%30%30"}, {"/**", "//"}, {"/a", "/%zz"}, {"/v1*", "/v1%3bx"},
		{"/adm\xe7\x00", "/;/admin"}, // a pattern the regular expression compiler refused
	} {
		f.Add(s[0], s[1], false)
	}
	f.Fuzz(func(t *testing.T, pattern, path string, ignoreCase bool) {
		norm, err := NormalizePath(path)
		if err == nil && path != "" {
			checkNormalized(t, path, norm)
		}
		pp, perr := model.ParsePathPattern(pattern)
		if perr != nil || err != nil {
			return
		}
		allow := Op{Paths: []PathMatch{compilePath(pp, ignoreCase, false)}}
		deny := Op{Paths: []PathMatch{compilePath(pp, ignoreCase, true)}, Deny: true}
		req := Request{Path: norm}
		if allow.matches(req) && !deny.matches(req) {
			t.Fatalf("%q (ignoreCase %v) matches %q (from %q) as an ALLOW, not as a DENY", pattern, ignoreCase, norm, path)
		}
	})
}

func checkNormalized(t *testing.T, raw, norm string) {
	t.Helper()
	lower := strings.ToLower(norm)
	switch {
	case !strings.HasPrefix(norm, "/"):
		t.Fatalf("%q normalized to %q: not a path", raw, norm)
	case strings.ContainsAny(norm, "?#\\"):
		t.Fatalf("%q normalized to %q: a query, fragment or backslash is left", raw, norm)
	case strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c") || strings.Contains(lower, "%00"):
		t.Fatalf("%q normalized to %q: the sidecar refuses that", raw, norm)
	case strings.Contains(norm, "//") && norm != "//":
		t.Fatalf("%q normalized to %q: slashes not merged", raw, norm)
	}
	for _, seg := range strings.Split(norm, "/") {
		if seg == "." || seg == ".." {
			t.Fatalf("%q normalized to %q: a dot segment is left", raw, norm)
		}
	}
}
