package authz

import (
	"fmt"
	"slices"
	"strings"

	"github.com/bulwarkmesh/bulwark/model"
)

// Request is one call to a workload port.
type Request struct {
	// Peer is the caller's SPIFFE ID, or "" for a caller without a
	// certificate.
	Peer string
	// Method and Path are the HTTP method and path; empty on TCP. Path
	// is the request target as the caller sends it (query included);
	// Evaluate normalizes it the way the sidecar does (NormalizePath).
	Method, Path string
}

// Decision is the outcome of a request.
type Decision struct {
	Allowed bool
	// Rule is the rule that decided: a policy rule name, DefaultDenyRule,
	// or "" when the mesh default allowed.
	Rule string
	// Reason says why, in a sentence.
	Reason string
	// DryRun is what would happen were the dry-run policies enforced,
	// when that differs.
	DryRun *Decision
	// Peer is the identity the sidecar sees (none on a DISABLE port).
	Peer string
	// Rejected, when set, says why the sidecar answers the request with
	// 400 before authorization (see NormalizePath); Allowed is false and
	// Rule empty.
	Rejected string
}

// Evaluate decides req against t, the way the sidecar will.
func (t *Table) Evaluate(req Request) Decision {
	if t.Mode == model.MTLSDisable {
		req.Peer = "" // no TLS on this port: no identity
	}
	norm, err := NormalizePath(req.Path)
	if err != nil {
		return Decision{Peer: req.Peer, Rejected: err.Error(), Reason: "rejected with 400 before authorization: " + err.Error()}
	}
	req.Path = norm
	d := decide(req, t.Deny, t.Allow, t.Selectors, t.Default, false)
	d.Peer = req.Peer
	if !d.Allowed && SuspectPath(req.Path) {
		d.Reason += " (the path has a segment that is only path parameters, or a dot with them: every DENY path matches it and no ALLOW path does)"
	}
	if t.HasDryRun() {
		dry := decide(req, byName(t.Deny, t.DryDeny), byName(t.Allow, t.DryAllow),
			append(append([]string{}, t.Selectors...), t.DrySelectors...), t.Default, true)
		if dry.Allowed != d.Allowed || dry.Rule != d.Rule {
			d.DryRun = &dry
		}
	}
	return d
}

func decide(req Request, deny, allow []Rule, selectors []string, def model.DefaultAccess, dry bool) Decision {
	for _, r := range deny {
		if r.matches(req) {
			return Decision{Rule: r.Name, Reason: "denied by DENY rule " + r.Name + dryNote(r)}
		}
	}
	if len(selectors) > 0 {
		for _, r := range allow {
			if r.matches(req) {
				return Decision{Allowed: true, Rule: r.Name, Reason: "allowed by ALLOW rule " + r.Name + dryNote(r)}
			}
		}
		return Decision{Rule: DefaultDenyRule, Reason: fmt.Sprintf("no ALLOW rule matches, and %s selects this workload, so everything else is denied",
			strings.Join(selectors, ", "))}
	}
	if def == model.DefaultAllowMesh {
		if req.Peer != "" {
			return Decision{Allowed: true, Reason: "no ALLOW policy selects this workload; the mesh default allow-mesh admits any authenticated identity"}
		}
		return Decision{Rule: DefaultDenyRule, Reason: "no ALLOW policy selects this workload; the mesh default allow-mesh admits no caller without a certificate"}
	}
	return Decision{Rule: DefaultDenyRule, Reason: "no ALLOW policy selects this workload and the mesh default is deny"}
}

// byName merges rule lists in name order, the order Envoy evaluates
// policies in (and so the first match it reports).
func byName(a, b []Rule) []Rule {
	out := append(append([]Rule{}, a...), b...)
	slices.SortFunc(out, func(x, y Rule) int { return strings.Compare(x.Name, y.Name) })
	return out
}

func dryNote(r Rule) string {
	if r.DryRun {
		return " (dry run)"
	}
	return ""
}

func (r Rule) matches(req Request) bool {
	return r.sourceMatches(req.Peer) && r.opMatches(req)
}

func (r Rule) sourceMatches(peer string) bool {
	for _, s := range r.Sources {
		if s.matches(peer) {
			return true
		}
	}
	return false
}

func (s Source) matches(peer string) bool {
	if s.Unauthenticated {
		return peer == ""
	}
	if peer == "" {
		return false // a rule that names identities never matches a caller without one
	}
	for _, m := range s.IDs {
		if (m.Exact != "" && peer == m.Exact) || (m.Prefix != "" && strings.HasPrefix(peer, m.Prefix)) {
			return true
		}
	}
	return false
}

func (r Rule) opMatches(req Request) bool {
	if r.AllOps {
		return true
	}
	for _, o := range r.Ops {
		if o.matches(req) {
			return true
		}
	}
	return false
}

func (o Op) matches(req Request) bool {
	if len(o.Methods) > 0 {
		found := false
		for _, m := range o.Methods {
			found = found || m == req.Method
		}
		if !found {
			return false
		}
	}
	if len(o.Paths) > 0 {
		if SuspectPath(req.Path) {
			return o.Deny // every DENY path matches it, no ALLOW path does
		}
		found := false
		for _, p := range o.Paths {
			found = found || p.matches(req.Path)
		}
		if !found {
			return false
		}
	}
	return true
}

// Reach is how much of a port a caller may use, over all requests.
type Reach int

// Reaches, from none to all.
const (
	ReachNone Reach = iota
	ReachSome       // some methods or paths
	ReachAll
)

func (r Reach) String() string {
	return [...]string{"DENY", "PARTIAL", "ALLOW"}[r]
}

// EvaluateAny says whether peer can call the port at all, for every
// request, or for some: what the who-can-call-whom matrix and config
// scoping need.
func (t *Table) EvaluateAny(peer string) Reach {
	if t.Mode == model.MTLSDisable {
		peer = ""
	}
	conditionalDeny := false
	for _, r := range t.Deny {
		if !r.sourceMatches(peer) {
			continue
		}
		if r.AllOps {
			return ReachNone
		}
		conditionalDeny = true
	}
	allowAll, allowSome := false, false
	if len(t.Selectors) > 0 {
		for _, r := range t.Allow {
			if r.sourceMatches(peer) {
				if r.AllOps {
					allowAll = true
				} else {
					allowSome = true
				}
			}
		}
	} else if t.Default == model.DefaultAllowMesh && peer != "" {
		allowAll = true
	}
	switch {
	case allowAll && !conditionalDeny:
		return ReachAll
	case allowAll || allowSome:
		return ReachSome
	}
	return ReachNone
}
