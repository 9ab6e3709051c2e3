package authz

import (
	"strings"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/model"
)

func snapshotOf(t *testing.T, st *model.State) *model.Snapshot {
	t.Helper()
	s := model.NewStore()
	if _, err := s.ReplaceState(st); err != nil {
		t.Fatal(err)
	}
	return s.Snapshot()
}

func lintState() *model.State {
	svc := func(name string, proto model.Protocol, port uint32) *model.Service {
		return &model.Service{Namespace: "shop", Name: name, Ports: []model.ServicePort{{Name: "p", Port: port, TargetPort: port, Protocol: proto}}}
	}
	wl := func(name, sa, service string) *model.Workload {
		return &model.Workload{Namespace: "shop", Name: name, ServiceAccount: sa, Services: []string{service}, Address: "10.0.0.1"}
	}
	return &model.State{
		Mesh:      model.Mesh{TrustDomain: td, Authorization: model.Authorization{Default: model.DefaultDeny}},
		Services:  []*model.Service{svc("api", model.ProtocolHTTP, 8080), svc("db", model.ProtocolTCP, 5432)},
		Workloads: []*model.Workload{wl("api-1", "api", "api"), wl("db-1", "db", "db"), wl("frontend-1", "frontend", "api")},
		Access: []*model.AccessPolicy{
			pol("api", model.ActionAllow, false, model.AccessSelector{Service: "api"},
				model.AccessRule{From: []model.Source{{ServiceAccounts: []string{"frontend"}}}, To: []model.Operation{{Paths: []string{"/v1/*"}}}},
				model.AccessRule{From: []model.Source{{ServiceAccounts: []string{"frontend"}}}, To: []model.Operation{{Methods: []string{"GET"}, Paths: []string{"/v1/items"}}}},
				model.AccessRule{From: []model.Source{{ServiceAccounts: []string{"ghost"}}, {Namespaces: []string{"nowhere"}}}},
				model.AccessRule{From: []model.Source{{Namespaces: []string{"*"}}}, To: []model.Operation{{Paths: []string{"/public/*"}}}},
				model.AccessRule{From: []model.Source{{ServiceAccounts: []string{"frontend"}}}, To: []model.Operation{{Paths: []string{"/admin/x"}}}},
			),
			pol("no-admin", model.ActionDeny, false, model.AccessSelector{Service: "api"},
				model.AccessRule{From: []model.Source{{Namespaces: []string{"*"}}}, To: []model.Operation{{Paths: []string{"/admin/*"}}}}),
			pol("db-paths", model.ActionDeny, false, model.AccessSelector{Service: "db"},
				model.AccessRule{From: []model.Source{{ServiceAccounts: []string{"api"}}}, To: []model.Operation{{Paths: []string{"/x"}}}}),
			pol("nothing", model.ActionAllow, false, model.AccessSelector{Service: "cache"},
				model.AccessRule{From: []model.Source{{ServiceAccounts: []string{"api"}}}}),
		},
	}
}

func TestLint(t *testing.T) {
	got := map[string]bool{}
	for _, f := range Lint(snapshotOf(t, lintState()), time.Now()) {
		got[f.String()] = true
	}
	for _, want := range []string{
		"shop/api: rule shop/api/1: is shadowed on shop/api-1 port 8080 by ALLOW rule shop/api/0, which matches all it matches",
		"shop/api: rule shop/api/2: no workload is spiffe://cluster.local/ns/shop/sa/ghost",
		`shop/api: rule shop/api/2: namespace "nowhere" has no workload`,
		`shop/api: rule shop/api/3: namespaces: ["*"] opens it to every identity in the mesh`,
		"shop/api: rule shop/api/4: never takes effect on shop/api-1 port 8080: DENY rule shop/no-admin/0 covers it",
		"shop/db-paths: rule shop/db-paths/0: names methods or paths, which TCP has not: on TCP shop/db-1 port 5432 it denies every connection of its callers",
		"shop/nothing: selects no workload",
	} {
		if !got[want] {
			t.Errorf("missing finding %q", want)
		}
	}
	for f := range got {
		if strings.Contains(f, "shop/api/0:") && strings.Contains(f, "shadowed") {
			t.Errorf("the broader rule was reported: %s", f)
		}
	}
	if len(got) != 7 {
		t.Errorf("%d findings, want 7:\n%v", len(got), got)
	}
}

func TestMatrixAndExplainAgreeWithTheTables(t *testing.T) {
	snap := snapshotOf(t, lintState())
	m := BuildMatrix(snap, time.Now())
	cell := func(caller, target string) Reach {
		for i, c := range m.Callers {
			for j, tg := range m.Targets {
				if c == caller && tg.String() == target {
					return m.Cells[i][j]
				}
			}
		}
		t.Fatalf("no cell %s -> %s", caller, target)
		return 0
	}
	fe := "spiffe://cluster.local/ns/shop/sa/frontend"
	if got := cell(fe, "shop/api:8080"); got != ReachSome {
		t.Errorf("frontend -> api = %s, want PARTIAL (paths)", got)
	}
	if got := cell("spiffe://cluster.local/ns/shop/sa/db", "shop/db:5432"); got != ReachNone {
		t.Errorf("db -> db = %s, want DENY (default deny)", got)
	}
	svc := snap.Service("shop", "api")
	ex := Explain(snap, time.Now(), fe, svc, &svc.Ports[0], "GET", "/v1/items")
	if len(ex) != 2 || !ex[0].Decision.Allowed {
		t.Fatalf("explain = %+v", ex)
	}
	ex = Explain(snap, time.Now(), fe, svc, &svc.Ports[0], "GET", "/admin/x")
	if ex[0].Decision.Allowed || ex[0].Decision.Rule != "shop/no-admin/0" {
		t.Errorf("explain /admin/x = %+v", ex[0].Decision)
	}
}

// TestLintDoubleStar: a DENY of "/beta/**" voids ALLOW rules for /beta
// itself and for anything below it, not for /betas.
func TestLintDoubleStar(t *testing.T) {
	st := lintState()
	st.Access = []*model.AccessPolicy{
		pol("api", model.ActionAllow, false, model.AccessSelector{Service: "api"},
			model.AccessRule{From: []model.Source{{ServiceAccounts: []string{"frontend"}}}, To: []model.Operation{{Paths: []string{"/beta"}}}},
			model.AccessRule{From: []model.Source{{ServiceAccounts: []string{"frontend"}}}, To: []model.Operation{{Paths: []string{"/beta/*"}}}},
			model.AccessRule{From: []model.Source{{ServiceAccounts: []string{"frontend"}}}, To: []model.Operation{{Paths: []string{"/beta/*/x/**"}}}},
			model.AccessRule{From: []model.Source{{ServiceAccounts: []string{"frontend"}}}, To: []model.Operation{{Paths: []string{"/beta*"}}}},
			model.AccessRule{From: []model.Source{{ServiceAccounts: []string{"frontend"}}}, To: []model.Operation{{Paths: []string{"/betas"}}}},
		),
		pol("freeze", model.ActionDeny, false, model.AccessSelector{Service: "api"},
			model.AccessRule{From: []model.Source{{Namespaces: []string{"*"}}}, To: []model.Operation{{Paths: []string{"/beta/**"}}}}),
	}
	got := map[string]bool{}
	for _, f := range Lint(snapshotOf(t, st), time.Now()) {
		if strings.Contains(f.Detail, "never takes effect") {
			got[f.Rule] = true
		}
	}
	for _, r := range []string{"shop/api/0", "shop/api/1", "shop/api/2"} {
		if !got[r] {
			t.Errorf("rule %s is voided by DENY /beta/** but not reported", r)
		}
	}
	for _, r := range []string{"shop/api/3", "shop/api/4"} {
		if got[r] {
			t.Errorf("rule %s reported as voided; /beta/** does not cover it", r)
		}
	}
}
