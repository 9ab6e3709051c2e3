package authz

import "testing"

func TestResolvePeer(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     string
		err      string
	}{
		{"unauthenticated", "unauthenticated", "", ""},
		{"none is unauthenticated too", "none", "", ""},
		{"a SPIFFE ID as it is", "spiffe://other.org/anything", "spiffe://other.org/anything", ""},
		{"namespace/serviceaccount", "demo/frontend", "spiffe://cluster.local/ns/demo/sa/frontend", ""},
		{"a bare name", "frontend", "", "want a SPIFFE ID, namespace/serviceaccount or unauthenticated"},
		{"an empty service account", "demo/", "", "path cannot contain empty segments"},
		{"too many slashes", "a/b/c", "", "path segment characters are limited to letters, numbers, dots, dashes, and underscores"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ResolvePeer(tc.in, "cluster.local")
			switch {
			case tc.err != "":
				if err == nil || err.Error() != tc.err {
					t.Errorf("ResolvePeer(%q) = %q, %v; want error %q", tc.in, got, err, tc.err)
				}
			case err != nil:
				t.Errorf("ResolvePeer(%q): %v", tc.in, err)
			case got != tc.want:
				t.Errorf("ResolvePeer(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}
