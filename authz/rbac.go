package authz

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	mtlsauthv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/rbac/principals/mtls_authenticated/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/bulwarkmesh/bulwark/internal/protoany"
	"github.com/bulwarkmesh/bulwark/model"
)

// Filter names in Envoy.
const (
	HTTPFilterName    = "envoy.filters.http.rbac"
	NetworkFilterName = "envoy.filters.network.rbac"
)

// The whole table is one RBAC engine with action DENY: every DENY rule is
// a policy named after it, and one more policy, DefaultDenyRule, matches
// what the ALLOW side would not admit. Envoy evaluates the policies in
// name order and reports the first that matched, so a denial in its log
// names the rule that caused it. Dry-run policies go to the shadow engine,
// built the same way with them included.

// HTTPConfig returns the HTTP RBAC filter config for t. Statistics are
// kept per rule as well: http.<prefix>.rbac.policy.<rule>.denied, and
// shadow_denied for what a dry-run rule would have denied.
func (t *Table) HTTPConfig() *rbachttpv3.RBAC {
	cfg := &rbachttpv3.RBAC{Rules: t.engine(false, true), TrackPerRuleStats: true}
	if t.HasDryRun() {
		cfg.ShadowRules = t.engine(true, true)
	}
	return cfg
}

// NetworkConfig returns the network (TCP) RBAC filter config for t;
// statPrefix names its statistics.
func (t *Table) NetworkConfig(statPrefix string) *rbacnetv3.RBAC {
	cfg := &rbacnetv3.RBAC{StatPrefix: statPrefix, Rules: t.engine(false, false)}
	if t.HasDryRun() {
		cfg.ShadowRules = t.engine(true, false)
	}
	return cfg
}

func (t *Table) engine(dry, http bool) *rbacv3.RBAC {
	deny, allow, selectors := t.Deny, t.Allow, t.Selectors
	if dry {
		deny = append(append([]Rule{}, t.Deny...), t.DryDeny...)
		allow = append(append([]Rule{}, t.Allow...), t.DryAllow...)
		selectors = append(append([]string{}, t.Selectors...), t.DrySelectors...)
	}
	policies := map[string]*rbacv3.Policy{}
	for _, r := range deny {
		policies[r.Name] = policy(r.principal(http))
	}
	var fallback *rbacv3.Principal
	switch {
	case len(selectors) > 0 && len(allow) == 0:
		fallback = anyPrincipal()
	case len(selectors) > 0:
		var ids []*rbacv3.Principal
		for _, r := range allow {
			ids = append(ids, r.principal(http))
		}
		fallback = not(or(ids))
	case t.Default == model.DefaultAllowMesh:
		fallback = unauthenticated()
	default:
		fallback = anyPrincipal()
	}
	policies[DefaultDenyRule] = policy(fallback)
	return &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: policies}
}

// policy wraps a principal that carries the whole condition (identity,
// method and path are all principal matchers in Envoy).
func policy(p *rbacv3.Principal) *rbacv3.Policy {
	return &rbacv3.Policy{
		Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
		Principals:  []*rbacv3.Principal{p},
	}
}

func (r Rule) principal(http bool) *rbacv3.Principal {
	var sources []*rbacv3.Principal
	for _, s := range r.Sources {
		sources = append(sources, s.principal())
	}
	who := or(sources)
	if r.AllOps || !http {
		return who
	}
	var ops []*rbacv3.Principal
	for _, o := range r.Ops {
		ops = append(ops, o.principal())
	}
	return and([]*rbacv3.Principal{who, or(ops)})
}

func (s Source) principal() *rbacv3.Principal {
	if s.Unauthenticated {
		return unauthenticated()
	}
	var ids []*rbacv3.Principal
	for _, m := range s.IDs {
		sm := &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: m.Exact}}
		if m.Prefix != "" {
			sm = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: m.Prefix}}
		}
		ids = append(ids, mtlsPrincipal(&mtlsauthv3.Config{SanMatcher: &tlsv3.SubjectAltNameMatcher{
			SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: sm,
		}}))
	}
	return or(ids)
}

func (o Op) principal() *rbacv3.Principal {
	var parts []*rbacv3.Principal
	if len(o.Methods) > 0 {
		var ms []*rbacv3.Principal
		for _, m := range o.Methods {
			ms = append(ms, &rbacv3.Principal{Identifier: &rbacv3.Principal_Header{Header: &routev3.HeaderMatcher{
				Name: ":method",
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
					MatchPattern: &matcherv3.StringMatcher_Exact{Exact: m},
				}},
			}}})
		}
		parts = append(parts, or(ms))
	}
	if len(o.Paths) > 0 {
		var ps []*rbacv3.Principal
		strict := false // whether an ALLOW path could match a suspect path
		for _, p := range o.Paths {
			ps = append(ps, urlPath(p.stringMatcher()))
			strict = strict || p.Kind != model.PathExact
		}
		switch {
		case o.Deny:
			// Every DENY path matches a suspect path.
			parts = append(parts, or(append(ps, suspectPrincipal())))
		case strict:
			// No ALLOW path does. (An exact one cannot: validation keeps
			// suspect segments out of patterns.)
			parts = append(parts, and([]*rbacv3.Principal{or(ps), not(suspectPrincipal())}))
		default:
			parts = append(parts, or(ps))
		}
	}
	if len(parts) == 0 {
		return anyPrincipal()
	}
	return and(parts)
}

func (p PathMatch) stringMatcher() *matcherv3.StringMatcher {
	if p.Regex != "" {
		// Envoy's safe regex must match the whole path, as the Go one does.
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: p.Regex}}}
	}
	switch p.Kind {
	case model.PathExact:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: p.Value}, IgnoreCase: p.IgnoreCase}
	case model.PathPrefix:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: p.Value}, IgnoreCase: p.IgnoreCase}
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: p.Value}}
}

func urlPath(m *matcherv3.StringMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_UrlPath{UrlPath: &matcherv3.PathMatcher{
		Rule: &matcherv3.PathMatcher_Path{Path: m},
	}}}
}

// suspectPrincipal matches a suspect path (SuspectPath).
func suspectPrincipal() *rbacv3.Principal {
	return urlPath(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{
		SafeRegex: &matcherv3.RegexMatcher{Regex: model.SuspectPathRegex},
	}})
}

// mtlsPrincipal matches a verified client certificate by typed SAN: a
// URI SAN only, never a DNS SAN or the subject.
func mtlsPrincipal(c *mtlsauthv3.Config) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Custom{Custom: &corev3.TypedExtensionConfig{
		Name:        "envoy.rbac.principals.mtls_authenticated",
		TypedConfig: protoany.Must(c),
	}}}
}

// unauthenticated matches a connection without a verified client
// certificate.
func unauthenticated() *rbacv3.Principal {
	return not(mtlsPrincipal(&mtlsauthv3.Config{AnyValidatedClientCertificate: true}))
}

func anyPrincipal() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
}

func not(p *rbacv3.Principal) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: p}}
}

func or(ps []*rbacv3.Principal) *rbacv3.Principal {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ps}}}
}

func and(ps []*rbacv3.Principal) *rbacv3.Principal {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: ps}}}
}
