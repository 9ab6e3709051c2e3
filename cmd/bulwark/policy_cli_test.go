package main

import (
	"strings"
	"testing"
)

func TestPolicyCheck(t *testing.T) {
	code, out, errOut := runCLI(t, "policy", "check", exampleMesh)
	if code != 0 || !strings.Contains(out, "3 access policies valid, 0 warning(s)") {
		t.Errorf("exit %d\n%s%s", code, out, errOut)
	}
}

func TestPolicyExplain(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"--from", "demo/frontend", "--to", "api", "--path", "/v1/x"}, 0,
			[]string{"demo/api-1 (port 8080, mTLS STRICT): ALLOW by demo/api-from-frontend/0"}},
		{[]string{"--from", "demo/other", "--to", "demo/api", "--exit-code"}, 1,
			[]string{"DENY by ~default-deny", "demo/api-from-frontend selects this workload"}},
		{[]string{"--from", "spiffe://cluster.local/ns/demo/sa/frontend", "--to", "api.demo", "--path", "//a/../admin"}, 0,
			[]string{"(normalized: /admin)", "DENY by demo/no-admin/0"}},
		{[]string{"--from", "demo/frontend", "--to", "api", "--path", "/%2Fadmin"}, 0,
			[]string{"rejected with 400 before authorization: the path has an encoded slash"}},
		{[]string{"--from", "demo/frontend", "--to", "api", "--path", "/admin%00", "--exit-code"}, 1,
			[]string{"rejected with 400 before authorization: the path has an encoded NUL"}},
		{[]string{"--from", "demo/frontend", "--to", "api", "--path", "/x/..\\admin"}, 0,
			[]string{"(normalized: /admin)", "DENY by demo/no-admin/0"}},
		{[]string{"--from", "demo/frontend", "--to", "api", "--path", "/hello/..;/admin"}, 0,
			[]string{"(normalized: /admin)", "DENY by demo/no-admin/0"}},
		{[]string{"--from", "demo/frontend", "--to", "api", "--path", "/;/admin"}, 0,
			[]string{"DENY by demo/no-admin/0", "a segment that is only path parameters"}},
		{[]string{"--from", "demo/frontend", "--to", "api", "--path", "/%zz"}, 0,
			[]string{"ALLOW by demo/api-from-frontend/0"}},
		{[]string{"--from", "demo/api", "--to", "db"}, 0,
			[]string{"api -> db.demo:5432/tcp", "ALLOW by demo/db-from-api/0"}},
		{[]string{"--from", "unauthenticated", "--to", "db"}, 0,
			[]string{"(no certificate) -> db.demo:5432/tcp", "DENY by ~default-deny"}},
	} {
		code, out, errOut := runCLI(t, append([]string{"policy", "explain", "--mesh", exampleMesh}, tc.args...)...)
		if code != tc.code {
			t.Errorf("%v: exit %d, want %d\n%s%s", tc.args, code, tc.code, out, errOut)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: output lacks %q:\n%s", tc.args, w, out)
			}
		}
	}
}

func TestPolicyMatrix(t *testing.T) {
	code, out, _ := runCLI(t, "policy", "matrix", "--mesh", exampleMesh)
	if code != 0 {
		t.Fatal(out)
	}
	lines := strings.Split(out, "\n")
	row := func(caller string) []string {
		for _, l := range lines {
			if f := strings.Fields(l); len(f) > 0 && f[0] == caller {
				return f[1:]
			}
		}
		t.Fatalf("no row %s:\n%s", caller, out)
		return nil
	}
	// Columns: api, db, frontend, other.
	if got := row("demo/frontend"); got[0] != "PARTIAL" || got[1] != "DENY" {
		t.Errorf("frontend row %v: want PARTIAL to api (GET and POST only), DENY to db", got)
	}
	if got := row("demo/api"); got[0] != "DENY" || got[1] != "ALLOW" {
		t.Errorf("api row %v: want DENY to api, ALLOW to db", got)
	}
	_, dot, _ := runCLI(t, "policy", "matrix", "--mesh", exampleMesh, "--format", "dot")
	for _, w := range []string{"digraph access", `"demo/api" -> "demo/db:5432";`, `"demo/frontend" -> "demo/api:8080" [style=dashed`} {
		if !strings.Contains(dot, w) {
			t.Errorf("dot lacks %q:\n%s", w, dot)
		}
	}
}
