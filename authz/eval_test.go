package authz

import (
	"testing"

	"github.com/bulwarkmesh/bulwark/model"
)

const (
	td       = "cluster.local"
	frontend = "spiffe://cluster.local/ns/shop/sa/frontend"
	other    = "spiffe://cluster.local/ns/shop/sa/other"
	opsBot   = "spiffe://cluster.local/ns/ops/sa/bot"
	foobar   = "spiffe://cluster.local/ns/foobar/sa/bot"
	intern   = "spiffe://cluster.local/ns/ops/sa/intern"
)

var (
	api   = &model.Workload{Namespace: "shop", Name: "api-1", ServiceAccount: "api", Labels: map[string]string{"app": "api"}, Services: []string{"api"}}
	cache = &model.Workload{Namespace: "shop", Name: "cache-1", ServiceAccount: "cache", Services: []string{"cache"}}
)

func pol(name string, action model.Action, dry bool, sel model.AccessSelector, rules ...model.AccessRule) *model.AccessPolicy {
	return &model.AccessPolicy{Namespace: "shop", Name: name, Spec: model.AccessPolicySpec{Selector: sel, Action: action, DryRun: dry, Rules: rules}}
}

var policies = []*model.AccessPolicy{
	pol("api-allow", model.ActionAllow, false, model.AccessSelector{Service: "api"},
		model.AccessRule{From: []model.Source{{ServiceAccounts: []string{"frontend"}}, {Namespaces: []string{"ops"}}},
			To: []model.Operation{{Ports: []uint32{8080}, Methods: []string{"GET", "POST"}, Paths: []string{"/v1/*", "/users/*/profile"}}}},
		model.AccessRule{From: []model.Source{{Namespaces: []string{"foo"}}}, To: []model.Operation{{Ports: []uint32{7000}}}},
		model.AccessRule{From: []model.Source{{Unauthenticated: true}}, To: []model.Operation{{Ports: []uint32{9090}}}},
		model.AccessRule{From: []model.Source{{ServiceAccounts: []string{"ops/intern"}}}, To: []model.Operation{{Ports: []uint32{7000}, Methods: []string{"GET"}}}},
	),
	pol("no-admin", model.ActionDeny, false, model.AccessSelector{MatchLabels: map[string]string{"app": "api"}},
		model.AccessRule{From: []model.Source{{Namespaces: []string{"*"}}, {Unauthenticated: true}},
			To: []model.Operation{{Ports: []uint32{8080, 9090}, Paths: []string{"/admin", "/admin/*"}, IgnoreCase: true}}},
		model.AccessRule{From: []model.Source{{SPIFFEIDs: []string{opsBot}}}, To: []model.Operation{{Ports: []uint32{7000}, Methods: []string{"POST"}}}},
	),
	pol("beta-freeze", model.ActionDeny, true, model.AccessSelector{Service: "api"},
		model.AccessRule{From: []model.Source{{Namespaces: []string{"*"}}}, To: []model.Operation{{Paths: []string{"/v1/beta/**"}}}}),
}

func table(w *model.Workload, port uint32, proto model.Protocol, mode model.MTLSMode, def model.DefaultAccess) *Table {
	mesh := model.Mesh{TrustDomain: td, Authorization: model.Authorization{Default: def}}
	return Compile(mesh, policies, w, port, proto, mode)
}

// TestEvaluate is the semantics, one case per rule of the policy guide.
// Explain, the matrix and the translator all read the same tables.
func TestEvaluate(t *testing.T) {
	http := table(api, 8080, model.ProtocolHTTP, model.MTLSStrict, model.DefaultDeny)
	for _, tc := range []struct {
		name   string
		t      *Table
		req    Request
		allow  bool
		rule   string
		dryRun string // rule a dry-run policy would apply, if different
	}{
		{"allowed by an ALLOW rule", http, Request{Peer: frontend, Method: "GET", Path: "/v1/items"}, true, "shop/api-allow/0", ""},
		{"glob: one segment", http, Request{Peer: frontend, Method: "GET", Path: "/users/42/profile"}, true, "shop/api-allow/0", ""},
		{"glob: not two segments", http, Request{Peer: frontend, Method: "GET", Path: "/users/4/2/profile"}, false, DefaultDenyRule, ""},
		{"prefix is not the bare path", http, Request{Peer: frontend, Method: "GET", Path: "/v1"}, false, DefaultDenyRule, ""},
		{"method not allowed", http, Request{Peer: frontend, Method: "DELETE", Path: "/v1/items"}, false, DefaultDenyRule, ""},
		{"another service account", http, Request{Peer: other, Method: "GET", Path: "/v1/items"}, false, DefaultDenyRule, ""},
		{"namespace rule", http, Request{Peer: opsBot, Method: "POST", Path: "/v1/x"}, true, "shop/api-allow/0", ""},
		{"DENY before ALLOW", http, Request{Peer: frontend, Method: "GET", Path: "/admin"}, false, "shop/no-admin/0", ""},
		{"DENY prefix", http, Request{Peer: frontend, Method: "GET", Path: "/admin/users"}, false, "shop/no-admin/0", ""},
		{"DENY ignoring case", http, Request{Peer: frontend, Method: "GET", Path: "/ADMIN"}, false, "shop/no-admin/0", ""},
		{"normalized: double slash", http, Request{Peer: frontend, Method: "GET", Path: "//admin"}, false, "shop/no-admin/0", ""},
		{"normalized: dot segments", http, Request{Peer: frontend, Method: "GET", Path: "/v1/../admin"}, false, "shop/no-admin/0", ""},
		{"normalized: query dropped", http, Request{Peer: frontend, Method: "GET", Path: "/admin?x=1"}, false, "shop/no-admin/0", ""},
		{"DENY sees past path parameters", http, Request{Peer: frontend, Method: "GET", Path: "/admin;jsessionid=1"}, false, "shop/no-admin/0", ""},
		{"DENY sees past parameters mid-path", http, Request{Peer: frontend, Method: "GET", Path: "/admin;x/users"}, false, "shop/no-admin/0", ""},
		{"ALLOW is not widened by parameters", http, Request{Peer: frontend, Method: "GET", Path: "/users;x/42/profile"}, false, DefaultDenyRule, ""},
		{"normalized: encoded letters", http, Request{Peer: frontend, Method: "GET", Path: "/%61dmin"}, false, "shop/no-admin/0", ""},
		{"DENY reaches unauthenticated callers", http, Request{Method: "GET", Path: "/admin"}, false, "shop/no-admin/0", ""},
		{"identity rules never match plaintext", http, Request{Method: "GET", Path: "/v1/items"}, false, DefaultDenyRule, ""},
		{"dry run: would deny", http, Request{Peer: frontend, Method: "GET", Path: "/v1/beta/x/y"}, true, "shop/api-allow/0", "shop/beta-freeze/0"},

		{"port rule: foo namespace on 7000", table(api, 7000, model.ProtocolTCP, model.MTLSStrict, model.DefaultDeny), Request{Peer: "spiffe://cluster.local/ns/foo/sa/x"}, true, "shop/api-allow/1", "shop/beta-freeze/0"},
		{"foo does not match foobar", table(api, 7000, model.ProtocolTCP, model.MTLSStrict, model.DefaultDeny), Request{Peer: foobar}, false, DefaultDenyRule, "shop/beta-freeze/0"},
		{"TCP: an ALLOW with methods never opens the port", table(api, 7000, model.ProtocolTCP, model.MTLSStrict, model.DefaultDeny), Request{Peer: intern}, false, DefaultDenyRule, "shop/beta-freeze/0"},
		{"TCP: a DENY with methods closes the port", table(api, 7000, model.ProtocolTCP, model.MTLSStrict, model.DefaultDeny), Request{Peer: opsBot}, false, "shop/no-admin/1", "shop/beta-freeze/0"},
		// The dry-run path DENY names no port, so on TCP it would close
		// the port for everyone: the dry run shows it before it bites.
		{"TCP: a path DENY closes it for the dry run too", table(api, 7000, model.ProtocolTCP, model.MTLSStrict, model.DefaultDeny), Request{Peer: "spiffe://cluster.local/ns/foo/sa/x"}, true, "shop/api-allow/1", "shop/beta-freeze/0"},
		{"unauthenticated rule on a PERMISSIVE port", table(api, 9090, model.ProtocolHTTP, model.MTLSPermissive, model.DefaultDeny), Request{Method: "GET", Path: "/metrics"}, true, "shop/api-allow/2", ""},
		{"a port no rule names: selected, so denied", table(api, 5000, model.ProtocolHTTP, model.MTLSStrict, model.DefaultDeny), Request{Peer: frontend, Method: "GET", Path: "/v1/x"}, false, DefaultDenyRule, ""},
		{"DISABLE port: no identity reaches the rule", table(api, 8080, model.ProtocolHTTP, model.MTLSDisable, model.DefaultDeny), Request{Peer: frontend, Method: "GET", Path: "/v1/x"}, false, DefaultDenyRule, ""},

		{"unselected, default deny", table(cache, 6379, model.ProtocolTCP, model.MTLSStrict, model.DefaultDeny), Request{Peer: frontend}, false, DefaultDenyRule, ""},
		{"unselected, allow-mesh admits identities", table(cache, 6379, model.ProtocolTCP, model.MTLSStrict, model.DefaultAllowMesh), Request{Peer: frontend}, true, "", ""},
		{"unselected, allow-mesh refuses plaintext", table(cache, 6379, model.ProtocolTCP, model.MTLSPermissive, model.DefaultAllowMesh), Request{}, false, DefaultDenyRule, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.t.Evaluate(tc.req)
			if d.Allowed != tc.allow || d.Rule != tc.rule {
				t.Errorf("got allowed=%v by %q (%s); want allowed=%v by %q", d.Allowed, d.Rule, d.Reason, tc.allow, tc.rule)
			}
			got := ""
			if d.DryRun != nil {
				got = d.DryRun.Rule
			}
			if got != tc.dryRun {
				t.Errorf("dry run: got %q, want %q", got, tc.dryRun)
			}
		})
	}
}

func TestEvaluateAny(t *testing.T) {
	for _, tc := range []struct {
		name string
		t    *Table
		peer string
		want Reach
	}{
		{"some paths", table(api, 8080, model.ProtocolHTTP, model.MTLSStrict, model.DefaultDeny), frontend, ReachSome},
		{"nothing", table(api, 8080, model.ProtocolHTTP, model.MTLSStrict, model.DefaultDeny), other, ReachNone},
		{"everything, but a conditional DENY", table(api, 7000, model.ProtocolTCP, model.MTLSStrict, model.DefaultDeny), "spiffe://cluster.local/ns/foo/sa/x", ReachAll},
		{"closed by DENY", table(api, 7000, model.ProtocolTCP, model.MTLSStrict, model.DefaultDeny), opsBot, ReachNone},
		{"allow-mesh", table(cache, 6379, model.ProtocolTCP, model.MTLSStrict, model.DefaultAllowMesh), other, ReachAll},
	} {
		if got := tc.t.EvaluateAny(tc.peer); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}
