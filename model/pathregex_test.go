package model

import (
	"regexp"
	"strings"
	"testing"
)

func TestParsePathPattern(t *testing.T) {
	for _, tc := range []struct {
		in   string
		kind PathKind
		val  string
		err  string
	}{
		{in: "/admin", kind: PathExact, val: "/admin"},
		{in: "/", kind: PathExact, val: "/"},
		{in: "/v1/*", kind: PathPrefix, val: "/v1/"},
		{in: "/v1*", kind: PathPrefix, val: "/v1"},
		{in: "/*", kind: PathPrefix, val: "/"},
		{in: "/beta/**", kind: PathGlob, val: "/beta/**"},
		{in: "/**", kind: PathGlob, val: "/**"},
		{in: "/users/*/profile", kind: PathGlob, val: "/users/*/profile"},
		{in: "/a;b", kind: PathExact, val: "/a;b"},
		{in: "/...;x", kind: PathExact, val: "/...;x"},
		{in: "admin", err: "must start with /"},
		{in: "/a?b", err: "without query or fragment"},
		{in: "/%61", err: "write the path decoded"},
		{in: "/a/../b", err: `a ".." segment`},
		{in: "//a", err: `has "//"`},
		{in: "/a*b/c", err: "a whole segment"},
		{in: "/;x/admin", err: `the segment ";x", only path parameters`},
		{in: "/a b", err: `has " ", which no request path has`},
		{in: "/caf\xc3\xa9", err: `has "\xc3"`},
		{in: "/a\\b", err: `has "\\"`},
		{in: "/a{b}", err: `has "{"`},
		{in: "/a\x00", err: `has "\x00"`},
		{in: "/a/.;/b", err: `the segment ".;"`},
		{in: "/a/..;x", err: `the segment "..;x"`},
	} {
		got, err := ParsePathPattern(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParsePathPattern(%q) = %+v, %v; want an error with %q", tc.in, got, err, tc.err)
		case tc.err == "" && (err != nil || got.Kind != tc.kind || got.Value != tc.val):
			t.Errorf("ParsePathPattern(%q) = %+v, %v; want kind %d %q", tc.in, got, err, tc.kind, tc.val)
		}
	}
}

// TestPathRegex: the expressions, and what they match (the matching
// semantics are tested through the compiled tables in authz).
func TestPathRegex(t *testing.T) {
	const p = `(?:(?:;|%3[bB])[^/]*)?`
	for _, tc := range []struct {
		pattern    string
		ignoreCase bool
		params     bool
		want       string
		size       int
		match      []string
		noMatch    []string
	}{
		{"/admin", false, true, `/admin` + p, 18, []string{"/admin", "/admin;x", "/admin%3Bx"}, []string{"/admin/", "/adminx"}},
		{"/", false, true, `/`, 5, []string{"/"}, []string{"/a", "/;x"}},
		{"/admin/*", true, true, `(?i)/admin` + p + `/.*`, 21, []string{"/ADMIN/", "/admin;x/y"}, []string{"/admin"}},
		{"/v1*", false, true, `/v1.*`, 9, []string{"/v1", "/v10/x"}, []string{"/v"}},
		{"/beta/**", false, true, `/beta` + p + `(?:/.*)?`, 22, []string{"/beta", "/beta/", "/beta/x/y", "/beta;x"}, []string{"/betax"}},
		{"/beta/**", false, false, `/beta(?:/.*)?`, 14, []string{"/beta", "/beta/x"}, []string{"/beta;x", "/betax"}},
		{"/files/**/private", false, false, `/files(?:/.*)?/private`, 23, []string{"/files/private", "/files/a/b/private"}, []string{"/files/privatex", "/filesprivate"}},
		{"/**", false, false, `(?:/.*)?`, 9, []string{"/", "/a/b"}, nil},
		{"/**/x", false, false, `(?:/.*)?/x`, 11, []string{"/x", "/a/x"}, []string{"/ax"}},
		{"/users/*/profile", false, false, `/users/[^/]+/profile`, 22, []string{"/users/1/profile"}, []string{"/users//profile", "/users/1/2/profile"}},
		{"/a.b", false, false, `/a\.b`, 8, []string{"/a.b"}, []string{"/axb"}},
	} {
		pp, err := ParsePathPattern(tc.pattern)
		if err != nil {
			t.Fatal(err)
		}
		got := pp.Regex(tc.ignoreCase, tc.params)
		if got.Expr != tc.want || got.Size != tc.size {
			t.Errorf("%s (params %v): %s size %d, want %s size %d", tc.pattern, tc.params, got.Expr, got.Size, tc.want, tc.size)
			continue
		}
		re := regexp.MustCompile("^(?:" + got.Expr + ")$")
		for _, s := range tc.match {
			if !re.MatchString(s) {
				t.Errorf("%s does not match %s", tc.pattern, s)
			}
		}
		for _, s := range tc.noMatch {
			if re.MatchString(s) {
				t.Errorf("%s matches %s", tc.pattern, s)
			}
		}
	}
}

// TestPathRegexBudget: a path whose expression Envoy would refuse is a
// validation error naming the field, for a DENY (widened) path and an
// ALLOW glob; an exact or prefix ALLOW path never becomes an expression.
func TestPathRegexBudget(t *testing.T) {
	long := "/" + strings.Repeat("segment/", 8) + "end"
	policy := func(action Action, path string) *AccessPolicy {
		return &AccessPolicy{Namespace: "shop", Name: "p", Spec: AccessPolicySpec{
			Selector: AccessSelector{Service: "api"}, Action: action,
			Rules: []AccessRule{{From: []Source{{Namespaces: []string{"*"}}}, To: []Operation{{Paths: []string{path}}}}},
		}}
	}
	for _, tc := range []struct {
		action Action
		path   string
		err    bool
	}{
		{ActionDeny, long, true},
		{ActionAllow, long, false},
		{ActionAllow, long + "/*", false},
		{ActionAllow, long + "/*/x", false},
		{ActionAllow, long + "/abcdefghijklm/*/x", true},
		{ActionDeny, "/api/v1/users/admin", false},
		{ActionDeny, "/" + strings.Repeat("x", 77), false},
		{ActionDeny, "/" + strings.Repeat("x", 78), true},
	} {
		err := policy(tc.action, tc.path).Validate("spec", "cluster.local")
		if (err != nil) != tc.err {
			t.Errorf("%s %s: %v, want error %v", tc.action, tc.path, err, tc.err)
		}
		if err != nil && !strings.Contains(err.Error(), "spec.rules[0].to[0].paths[0]: ") || err != nil && !strings.Contains(err.Error(), "too long for the sidecar") {
			t.Errorf("%s %s: %v", tc.action, tc.path, err)
		}
	}
}
