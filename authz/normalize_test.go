package authz

import (
	"errors"
	"testing"
)

// TestNormalizePath: what Envoy 1.40's RBAC filter sees for each request
// path, with the sidecar's normalization options, as observed on the real
// Envoy ("400": it answers 400 before authorization). The end-to-end test
// TestExplainAgreesWithEnvoyOnPaths checks these and a generated corpus
// against the real Envoy.
func TestNormalizePath(t *testing.T) {
	const bad = "400"
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"/", "/"},
		{"/admin", "/admin"},
		{"/admin?x=1", "/admin"},
		{"/a/../admin", "/admin"},
		{"/./x/./y", "/x/y"},
		{"/../../etc", "/etc"},
		{"//admin", "/admin"},
		{"/admin/", "/admin/"},
		{"/a//", "/a/"},
		{"/%61dmin", "/admin"},
		{"/%41dmin", "/Admin"},
		{"/a%2D%2E%5F%7E", "/a-._~"},
		// Backslashes are slashes.
		{"/x/..\\admin", "/admin"},
		{"/x\\..\\admin", "/admin"},
		// Encoded dots are dots.
		{"/%2e%2e/admin", "/admin"},
		{"/a/.%2e/admin", "/admin"},
		{"/a/%2E./admin", "/admin"},
		{"/admin%2e", "/admin."},
		{"/admin/%2e", "/admin/"},
		{"/%2e%2e%2e/admin", "/.../admin"},
		// A literal dot segment with parameters is the dot segment.
		{"/hello/..;/admin", "/admin"},
		{"/.;/admin", "/admin"},
		{"/a/..;x/admin", "/admin"},
		{"/a/..;x;y/admin", "/admin"},
		{"/a/.;x/admin", "/a/admin"},
		{"/a/..;x\\b/admin", "/admin"},
		{"/a/..;%00/admin", "/admin"},
		{"/admin/b/..;", "/admin/"},
		{"/x/y/..;?q", "/x/"},
		{"/x/..;?/admin", "/"},
		// ...but not an encoded one, nor one after a backslash.
		{"/a/%2e%2e;/admin", "/a/..;/admin"},
		{"/a/.%2E;/admin", "/a/..;/admin"},
		{"/%2e;/admin", "/.;/admin"},
		{"/a\\..;\\admin", "/a/..;/admin"},
		{"/a/..%3b/admin", "/a/..%3b/admin"},
		{"/a/...;/admin", "/a/...;/admin"},
		// Parameters elsewhere stay.
		{"/;/admin", "/;/admin"},
		{"//;/admin", "/;/admin"},
		{"/%3b/admin", "/%3b/admin"},
		{"/%3B/admin", "/%3B/admin"},
		{"/admin;x", "/admin;x"},
		{"/a;x/../admin", "/admin"},
		{"/a/x;y/..;z/admin", "/a/admin"},
		// Escapes that are not decoded are kept as written, invalid ones
		// too, and some characters are escaped.
		{"/%zz", "/%zz"},
		{"/admin%", "/admin%"},
		{"/admin%2", "/admin%2"},
		{"/%2x", "/%2x"},
		{"/a%20b", "/a%20b"},
		{"/a%3a%40%21%2a%3d", "/a%3a%40%21%2a%3d"},
		{"/a%80%ff", "/a%80%ff"},
		{"/a\"b", "/a%22b"},
		{"/a<b", "/a%3Cb"},
		{"/a{b|c}", "/a%7Bb%7Cc%7D"},
		{"/a^b`", "/a%5Eb%60"},
		{"/a'b", "/a'b"},
		// A stray '%' never forms an escape with a decoded character.
		{"/a%%41", "/a%A"},
		{"/a%%30%30", "/a%2500"},
		{"/a%41%2541", "/aA%2541"},
		// Envoy's slash merging keeps "//" as it is.
		{"//", "//"},
		{"///", "//"},
		{"/.//", "//"},
		{"/a/..//", "//"},
		{"/a//../admin", "/a/admin"},
		// Rejected before authorization.
		{"/%2Fadmin", bad},
		{"/a%2fb", bad},
		{"/a%5Cb", bad},
		{"/a%5cb", bad},
		{"/a/..;%2f/admin", bad},
		{"/admin%00", bad},
		{"/a/b;%00", bad},
		{"/admin#x", bad},
		{"/admin?x#y", bad},
		{"\\admin", bad},
		{"admin", bad},
		{"*", bad},
		{"/a b", bad},
		{"/a\tb", bad},
		{"/a\x7fb", bad},
		{"/a\xc3\xa9", bad},
		// The query is never normalized or checked.
		{"/admin?x=%2f", "/admin"},
		{"/admin?x=%00", "/admin"},
	} {
		got, err := NormalizePath(tc.in)
		var rej *PathRejectedError
		switch {
		case err != nil && !errors.As(err, &rej):
			t.Errorf("NormalizePath(%q): %v is not a PathRejectedError", tc.in, err)
		case err != nil:
			got = bad
		}
		if got != tc.want {
			t.Errorf("NormalizePath(%q) = %q (%v), want %q", tc.in, got, err, tc.want)
		}
	}
}
