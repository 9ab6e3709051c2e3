package authz

import (
	"regexp"
	"slices"
	"strings"

	"github.com/bulwarkmesh/bulwark/model"
)

// DefaultDenyRule is the name under which a denial that no DENY rule
// caused is reported: no ALLOW rule matched, or the mesh default denied.
// It sorts after every policy rule name, so Envoy reports an explicit
// DENY rule first when both apply.
const DefaultDenyRule = "~default-deny"

// Rule is one compiled rule of one policy, reduced to one port.
type Rule struct {
	// Name is the rule's name in Envoy and in decisions:
	// "<namespace>/<policy>/<index>".
	Name   string
	Policy string
	Action model.Action
	DryRun bool
	// Sources: any matches.
	Sources []Source
	// Ops: any matches. AllOps is set when the rule names no operation
	// at all (it matches every request on the port).
	Ops    []Op
	AllOps bool
}

// Source is who a rule matches: Unauthenticated callers, or callers
// whose SPIFFE ID matches any of IDs.
type Source struct {
	Unauthenticated bool
	IDs             []model.IdentityMatch
}

// Op is what a rule matches: any of Methods (or any method) and any of
// Paths (or any path).
type Op struct {
	Methods []string
	Paths   []PathMatch
	// Deny is set on the operations of DENY rules. A suspect path
	// (SuspectPath) matches a DENY rule's Paths whatever they say, and
	// an ALLOW rule's never.
	Deny bool
}

// Unconditional reports whether the operation matches every request.
func (o Op) Unconditional() bool { return len(o.Methods) == 0 && len(o.Paths) == 0 }

// PathMatch is a compiled path pattern.
type PathMatch struct {
	Kind       model.PathKind
	Value      string // exact path, prefix, or the glob as written
	IgnoreCase bool
	// Regex, set for globs and every DENY path, is the RE2 expression
	// (model.PathPattern.Regex) that must match the whole path, shared by
	// Go and Envoy. Exact and prefix ALLOW paths have none.
	Regex string
	re    *regexp.Regexp
}

// Table is the compiled authorization of one port of one workload.
type Table struct {
	Workload string // namespace/name
	Port     uint32
	Protocol model.Protocol
	// Mode is the port's mTLS mode: on DISABLE no caller has an identity.
	Mode model.MTLSMode
	// Deny and Allow are the enforced rules that apply to the port,
	// sorted by name.
	Deny, Allow []Rule
	// Selectors are the enforced ALLOW policies that select the workload
	// (on any port): if there is one, what no ALLOW rule matches is
	// denied.
	Selectors []string
	// Default is the mesh default for workloads no ALLOW policy selects.
	Default model.DefaultAccess
	// DryDeny, DryAllow and DrySelectors are the same for dry-run
	// policies.
	DryDeny, DryAllow []Rule
	DrySelectors      []string
}

// HasDryRun reports whether any dry-run policy bears on the port.
func (t *Table) HasDryRun() bool {
	return len(t.DryDeny)+len(t.DryAllow)+len(t.DrySelectors) > 0
}

// Compile builds the table of target port port of workload w from the
// snapshot's policies and mesh settings. mode is the port's mTLS mode.
func Compile(mesh model.Mesh, policies []*model.AccessPolicy, w *model.Workload, port uint32, proto model.Protocol, mode model.MTLSMode) *Table {
	t := &Table{Workload: w.Key(), Port: port, Protocol: proto, Mode: mode, Default: mesh.Authorization.Default}
	if t.Default == "" {
		t.Default = model.DefaultDeny
	}
	for _, p := range policies {
		if !p.Selects(w) {
			continue
		}
		if p.Spec.Action == model.ActionAllow {
			if p.Spec.DryRun {
				t.DrySelectors = append(t.DrySelectors, p.Key())
			} else {
				t.Selectors = append(t.Selectors, p.Key())
			}
		}
		for i, r := range p.Spec.Rules {
			rule, applies := compileRule(mesh.TrustDomain, p, i, r, port, proto)
			if !applies {
				continue
			}
			switch {
			case p.Spec.Action == model.ActionDeny && p.Spec.DryRun:
				t.DryDeny = append(t.DryDeny, rule)
			case p.Spec.Action == model.ActionDeny:
				t.Deny = append(t.Deny, rule)
			case p.Spec.DryRun:
				t.DryAllow = append(t.DryAllow, rule)
			default:
				t.Allow = append(t.Allow, rule)
			}
		}
	}
	for _, rs := range []*[]Rule{&t.Deny, &t.Allow, &t.DryDeny, &t.DryAllow} {
		slices.SortFunc(*rs, func(a, b Rule) int { return strings.Compare(a.Name, b.Name) })
	}
	slices.Sort(t.Selectors)
	slices.Sort(t.DrySelectors)
	return t
}

// compileRule reduces rule i of p to port; it reports false when the rule
// cannot match anything on the port.
func compileRule(td string, p *model.AccessPolicy, i int, r model.AccessRule, port uint32, proto model.Protocol) (Rule, bool) {
	rule := Rule{Name: p.RuleName(i), Policy: p.Key(), Action: p.Spec.Action, DryRun: p.Spec.DryRun}
	for _, s := range r.From {
		rule.Sources = append(rule.Sources, Source{Unauthenticated: s.Unauthenticated, IDs: s.Identities(td, p.Namespace)})
	}
	if len(r.To) == 0 {
		rule.AllOps = true
		return rule, true
	}
	for _, o := range r.To {
		if len(o.Ports) > 0 && !slices.Contains(o.Ports, port) {
			continue
		}
		op := Op{Methods: o.Methods, Deny: p.Spec.Action == model.ActionDeny}
		for _, raw := range o.Paths {
			pp, err := model.ParsePathPattern(raw)
			if err != nil {
				continue // validation refuses these; never widen a rule
			}
			// Many servers ignore path parameters ("/admin;x" is
			// "/admin" to a servlet container), so a DENY also matches
			// the path with parameters; an ALLOW is never widened.
			op.Paths = append(op.Paths, compilePath(pp, o.IgnoreCase, op.Deny))
		}
		if proto != model.ProtocolHTTP && !op.Unconditional() {
			if p.Spec.Action == model.ActionAllow {
				continue // an ALLOW for some requests cannot open a TCP port
			}
			op = Op{} // a DENY for some requests closes the TCP port
		}
		if op.Unconditional() {
			rule.Ops, rule.AllOps = nil, true
			return rule, true
		}
		rule.Ops = append(rule.Ops, op)
	}
	return rule, len(rule.Ops) > 0
}

// compilePath compiles a path pattern. Globs, and every pattern when
// params is set (a DENY rule's), become a regular expression.
func compilePath(pp model.PathPattern, ignoreCase, params bool) PathMatch {
	m := PathMatch{Kind: pp.Kind, Value: pp.Value, IgnoreCase: ignoreCase}
	if pp.Kind != model.PathGlob && !params {
		return m
	}
	m.Regex = pp.Regex(ignoreCase, params).Expr
	m.re = regexp.MustCompile("^(?:" + m.Regex + ")$")
	return m
}

var suspect = regexp.MustCompile("^(?:" + model.SuspectPathRegex + ")$")

// SuspectPath reports whether a normalized path has a segment that is
// only path parameters, or a dot or two with them ("/;x/admin",
// "/public/..;/admin", "%3B" too): a server that honours parameters reads
// it as a path no pattern can work out. Every DENY path matches it and no
// ALLOW path does.
func SuspectPath(path string) bool { return suspect.MatchString(path) }

func (m PathMatch) matches(path string) bool {
	if m.Regex != "" {
		if m.re == nil {
			m.re = regexp.MustCompile("^(?:" + m.Regex + ")$")
		}
		return m.re.MatchString(path)
	}
	switch m.Kind {
	case model.PathExact:
		if m.IgnoreCase {
			return strings.EqualFold(path, m.Value)
		}
		return path == m.Value
	case model.PathPrefix:
		if m.IgnoreCase {
			return len(path) >= len(m.Value) && strings.EqualFold(path[:len(m.Value)], m.Value)
		}
		return strings.HasPrefix(path, m.Value)
	}
	return false
}

// String renders a path match as written.
func (m PathMatch) String() string {
	s := m.Value
	if m.Kind == model.PathPrefix {
		s += "*"
	}
	if m.IgnoreCase {
		s += " (any case)"
	}
	return s
}

func (s Source) String() string {
	if s.Unauthenticated {
		return "unauthenticated"
	}
	var parts []string
	for _, id := range s.IDs {
		if id.Exact != "" {
			parts = append(parts, id.Exact)
		} else {
			parts = append(parts, id.Prefix+"*")
		}
	}
	return strings.Join(parts, " | ")
}
