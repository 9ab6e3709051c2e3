package authz

import (
	"testing"

	"github.com/bulwarkmesh/bulwark/model"
)

// pathTable is one HTTP port of api: frontend may call anything but what
// the DENY paths name; other may call only the ALLOW paths.
func pathTable(deny, allow []string) *Table {
	ps := []*model.AccessPolicy{
		pol("front", model.ActionAllow, false, model.AccessSelector{Service: "api"},
			model.AccessRule{From: []model.Source{{ServiceAccounts: []string{"frontend"}}}},
			model.AccessRule{From: []model.Source{{ServiceAccounts: []string{"other"}}}, To: []model.Operation{{Paths: allow}}}),
		pol("deny", model.ActionDeny, false, model.AccessSelector{Service: "api"},
			model.AccessRule{From: []model.Source{{ServiceAccounts: []string{"frontend"}}}, To: []model.Operation{{Paths: deny}}}),
	}
	return Compile(model.Mesh{TrustDomain: td}, ps, api, 8080, model.ProtocolHTTP, model.MTLSStrict)
}

type pathCase struct {
	path  string
	allow bool
}

func checkPaths(t *testing.T, tbl *Table, peer string, cases []pathCase) {
	t.Helper()
	for _, tc := range cases {
		d := tbl.Evaluate(Request{Peer: peer, Method: "GET", Path: tc.path})
		if d.Allowed != tc.allow {
			t.Errorf("%s %s: allowed=%v (%s), want %v", peer, tc.path, d.Allowed, d.Reason, tc.allow)
		}
	}
}

// TestDenySeesPastPathParameters: servers that honour path parameters
// read "/;/admin", "/admin;x" and their "%3B" forms as "/admin", so a DENY
// of /admin matches them all, as it matches a path with a dot segment
// that carries parameters (which such a server resolves where no pattern
// can follow). An ALLOW is never widened and never matches those paths.
func TestDenySeesPastPathParameters(t *testing.T) {
	tbl := pathTable([]string{"/admin", "/internal/*"}, []string{"/public/*", "/users/*/profile"})
	checkPaths(t, tbl, frontend, []pathCase{
		{"/admin", false},
		{"/admin;x", false},
		{"/admin;jsessionid=1", false},
		{"/admin%3bx", false},
		{"/admin%3B", false},
		{"/;/admin", false},
		{"/;x/admin", false},
		{"//;/admin", false},
		{"/%3b/admin", false},
		{"/%3B/admin", false},
		{"/.;x/admin", false},   // Envoy: /admin
		{"/%2e;/admin", false},  // Envoy: /.;/admin
		{"/.%3b/admin", false},  // kept as it is
		{"/a/..;/admin", false}, // Envoy: /admin
		{"/a/%2e%2e;/admin", false},
		{"/a/..%3B/admin", false},
		{"/internal;x/metrics", false},
		{"/;/internal/metrics", false},
		{"/internal/x", false},
		// Not /admin to anyone.
		{"/administrator", true},
		{"/x/admin", true},
		{"/admin/", true},
		{"/admin%20", true},
		{"/adminx;y", true},
		{"/internal", true},
		{"/x;y/z", true},
	})
	checkPaths(t, tbl, other, []pathCase{
		{"/public/x", true},
		{"/public/", true},
		{"/public/a;b", true},
		{"/users/42/profile", true},
		{"/users/42;v=1/profile", true},
		// Read as another path by a server that drops parameters.
		{"/public/%2e%2e;/admin", false},
		{"/public/..%3b/admin", false},
		{"/public/;x", false},
		{"/public/;/admin", false},
		{"/users/;/profile", false},
		{"/users;x/42/profile", false},
		{"/public;x/y", false},
	})
}

// TestDoubleStarMatchesZeroSegments: "**" is zero or more segments, in a
// DENY as in an ALLOW.
func TestDoubleStarMatchesZeroSegments(t *testing.T) {
	tbl := pathTable([]string{"/beta/**", "/files/**/private", "/**/secret"}, []string{"/docs/**", "/a/**/b/**/c"})
	checkPaths(t, tbl, frontend, []pathCase{
		{"/beta", false},
		{"/beta/", false},
		{"/beta/x", false},
		{"/beta/x/y/", false},
		{"/beta;x", false},
		{"/files/private", false},
		{"/files/a/private", false},
		{"/files/a/b/c/private", false},
		{"/files;x/private;y", false},
		{"/secret", false},
		{"/a/b/secret", false},
		{"/betax", true},
		{"/alpha/beta", true},
		{"/files/privatex", true},
		{"/files/private/x", true},
		{"/files", true},
		{"/secrets", true},
	})
	checkPaths(t, tbl, other, []pathCase{
		{"/docs", true},
		{"/docs/", true},
		{"/docs/a/b", true},
		{"/a/b/c", true},
		{"/a/x/b/y/z/c", true},
		{"/docsx", false},
		{"/docs;x", false},
		{"/a/c", false},
		{"/a/b", false},
		{"/a/b/cx", false},
	})
}
