package authz

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/bulwarkmesh/bulwark/model"
)

// Unauthenticated stands for a caller without a certificate in the
// matrix and in explanations.
const Unauthenticated = "(no certificate)"

// Explanation is the decision for one workload behind a service.
type Explanation struct {
	Workload string
	Port     uint32 // target port
	Mode     model.MTLSMode
	Decision Decision
}

// Explain decides a request from peer ("" for no certificate) to a port
// of a service, for each workload behind it, with the same tables the
// sidecars enforce.
func Explain(snap *model.Snapshot, now time.Time, peer string, svc *model.Service, port *model.ServicePort, method, path string) []Explanation {
	idx := NewIndex(snap, now)
	var out []Explanation
	for _, w := range backing(snap, svc) {
		t := idx.Table(w, port.TargetPort, port.Protocol)
		req := Request{Peer: peer}
		if port.Protocol == model.ProtocolHTTP {
			req.Method, req.Path = method, path
		}
		out = append(out, Explanation{Workload: w.Key(), Port: port.TargetPort, Mode: t.Mode, Decision: t.Evaluate(req)})
	}
	return out
}

// backing returns the workloads that back svc, sorted.
func backing(snap *model.Snapshot, svc *model.Service) []*model.Workload {
	var out []*model.Workload
	for _, w := range snap.Workloads() {
		if w.Namespace == svc.Namespace && w.Backs(svc.Name) {
			out = append(out, w)
		}
	}
	return out
}

// Matrix is who can call whom: for each caller identity and each service
// port, whether every request is allowed, some are, or none.
type Matrix struct {
	Callers []string // SPIFFE IDs, then Unauthenticated if any port admits plaintext
	Targets []Target
	// Cells[i][j] is what Callers[i] may do to Targets[j]; a service port
	// whose workloads disagree is PARTIAL.
	Cells [][]Reach
}

// Target is a service port.
type Target struct {
	Service string // namespace/name
	Port    uint32 // service port
	Proto   model.Protocol
}

func (t Target) String() string { return fmt.Sprintf("%s:%d", t.Service, t.Port) }

// BuildMatrix evaluates every workload identity in the mesh against
// every service port.
func BuildMatrix(snap *model.Snapshot, now time.Time) *Matrix {
	idx := NewIndex(snap, now)
	td := snap.Mesh().TrustDomain
	seen := map[string]bool{}
	m := &Matrix{}
	for _, w := range snap.Workloads() {
		id := w.Identity(td).String()
		if !seen[id] {
			seen[id] = true
			m.Callers = append(m.Callers, id)
		}
	}
	sort.Strings(m.Callers)
	plaintext := false
	for _, svc := range snap.Services() {
		for _, p := range svc.Ports {
			m.Targets = append(m.Targets, Target{Service: svc.Key(), Port: p.Port, Proto: p.Protocol})
			for _, w := range backing(snap, svc) {
				if idx.Table(w, p.TargetPort, p.Protocol).Mode != model.MTLSStrict {
					plaintext = true
				}
			}
		}
	}
	if plaintext {
		m.Callers = append(m.Callers, Unauthenticated)
	}
	for _, caller := range m.Callers {
		peer := caller
		if caller == Unauthenticated {
			peer = ""
		}
		row := make([]Reach, len(m.Targets))
		for j, tg := range m.Targets {
			ns, name, _ := strings.Cut(tg.Service, "/")
			svc := snap.Service(ns, name)
			port := svc.Port(tg.Port)
			first := true
			for _, w := range backing(snap, svc) {
				r := idx.Table(w, port.TargetPort, port.Protocol).EvaluateAny(peer)
				switch {
				case first:
					row[j], first = r, false
				case r != row[j]:
					row[j] = ReachSome
				}
			}
		}
		m.Cells = append(m.Cells, row)
	}
	return m
}

// Finding is one result of Lint.
type Finding struct {
	Policy string // namespace/name
	Rule   string // rule name, when the finding is about one rule
	Detail string
}

func (f Finding) String() string {
	if f.Rule != "" {
		return fmt.Sprintf("%s: rule %s: %s", f.Policy, f.Rule, f.Detail)
	}
	return fmt.Sprintf("%s: %s", f.Policy, f.Detail)
}

// Lint finds policies that are valid but probably not what their author
// meant: rules naming service accounts or namespaces no workload has,
// rules another rule fully shadows, ALLOW rules a DENY rule voids,
// wildcards that open a service to the whole mesh or to callers without a
// certificate, path or method DENY rules that close a TCP port entirely,
// and policies that select no workload.
func Lint(snap *model.Snapshot, now time.Time) []Finding {
	td := snap.Mesh().TrustDomain
	var out []Finding
	add := func(f Finding) {
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	namespaces := map[string]bool{}
	identities := map[string]bool{}
	for _, w := range snap.Workloads() {
		namespaces[w.Namespace] = true
		identities[w.Identity(td).String()] = true
	}
	idx := NewIndex(snap, now)
	once := map[string]bool{} // one finding per rule pair, not per workload
	first := func(key string) bool {
		if once[key] {
			return false
		}
		once[key] = true
		return true
	}
	for _, p := range snap.AccessPolicies() {
		selected := 0
		for _, w := range snap.Workloads() {
			if p.Selects(w) {
				selected++
			}
		}
		if selected == 0 {
			add(Finding{Policy: p.Key(), Detail: "selects no workload"})
		}
		for i, r := range p.Spec.Rules {
			name := p.RuleName(i)
			for _, s := range r.From {
				for _, m := range s.Identities(td, p.Namespace) {
					switch {
					case m.Prefix == "spiffe://"+td+"/":
						if p.Spec.Action == model.ActionAllow {
							add(Finding{Policy: p.Key(), Rule: name, Detail: "namespaces: [\"*\"] opens it to every identity in the mesh"})
						}
					case m.Prefix != "":
						ns := strings.TrimSuffix(strings.TrimPrefix(m.Prefix, "spiffe://"+td+"/ns/"), "/sa/")
						if !namespaces[ns] {
							add(Finding{Policy: p.Key(), Rule: name, Detail: fmt.Sprintf("namespace %q has no workload", ns)})
						}
					case !identities[m.Exact]:
						add(Finding{Policy: p.Key(), Rule: name, Detail: fmt.Sprintf("no workload is %s", m.Exact)})
					}
				}
				if s.Unauthenticated && p.Spec.Action == model.ActionAllow {
					add(Finding{Policy: p.Key(), Rule: name, Detail: "admits callers without a certificate (only possible on PERMISSIVE or DISABLE ports)"})
				}
			}
		}
	}
	// Per workload port, with the compiled tables: shadowing and TCP.
	for _, w := range snap.Workloads() {
		for _, port := range snap.InboundPorts(w) {
			t := idx.Table(w, port.Port, port.Protocol)
			where := fmt.Sprintf("%s port %d", w.Key(), port.Port)
			for _, b := range t.Allow {
				for _, a := range t.Deny {
					if covers(a, b) && first("void "+b.Name+" "+a.Name) {
						add(Finding{Policy: b.Policy, Rule: b.Name, Detail: fmt.Sprintf("never takes effect on %s: DENY rule %s covers it", where, a.Name)})
					}
				}
				for _, a := range t.Allow {
					if a.Name != b.Name && covers(a, b) && !(covers(b, a) && b.Name < a.Name) && first("shadow "+b.Name+" "+a.Name) {
						add(Finding{Policy: b.Policy, Rule: b.Name, Detail: fmt.Sprintf("is shadowed on %s by ALLOW rule %s, which matches all it matches", where, a.Name)})
					}
				}
			}
			if port.Protocol != model.ProtocolHTTP {
				for _, p := range snap.AccessPolicies() {
					if p.Spec.Action != model.ActionDeny || !p.Selects(w) {
						continue
					}
					for i, r := range p.Spec.Rules {
						for _, o := range r.To {
							if o.HTTPOnly() && (len(o.Ports) == 0 || slices.Contains(o.Ports, port.Port)) {
								add(Finding{Policy: p.Key(), Rule: p.RuleName(i), Detail: fmt.Sprintf(
									"names methods or paths, which TCP has not: on TCP %s it denies every connection of its callers", where)})
							}
						}
					}
				}
			}
		}
	}
	return out
}

// covers reports whether rule a matches every request rule b matches.
func covers(a, b Rule) bool {
	for _, sb := range b.Sources {
		found := false
		for _, sa := range a.Sources {
			found = found || sourceCovers(sa, sb)
		}
		if !found {
			return false
		}
	}
	if a.AllOps {
		return true
	}
	if b.AllOps {
		return false
	}
	for _, ob := range b.Ops {
		found := false
		for _, oa := range a.Ops {
			found = found || opCovers(oa, ob)
		}
		if !found {
			return false
		}
	}
	return true
}

func sourceCovers(a, b Source) bool {
	if a.Unauthenticated || b.Unauthenticated {
		return a.Unauthenticated == b.Unauthenticated
	}
	for _, mb := range b.IDs {
		found := false
		for _, ma := range a.IDs {
			switch {
			case ma.Prefix != "":
				found = found || strings.HasPrefix(mb.Exact+mb.Prefix, ma.Prefix)
			case mb.Exact != "":
				found = found || ma.Exact == mb.Exact
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func opCovers(a, b Op) bool {
	if len(a.Methods) > 0 {
		if len(b.Methods) == 0 {
			return false
		}
		for _, m := range b.Methods {
			if !slices.Contains(a.Methods, m) {
				return false
			}
		}
	}
	if len(a.Paths) == 0 {
		return true
	}
	if len(b.Paths) == 0 {
		return false
	}
	for _, pb := range b.Paths {
		found := false
		for _, pa := range a.Paths {
			found = found || pathCovers(pa, pb)
		}
		if !found {
			return false
		}
	}
	return true
}

func pathCovers(a, b PathMatch) bool {
	if a.IgnoreCase != b.IgnoreCase && !a.IgnoreCase {
		return false
	}
	eq := func(x, y string) bool {
		if a.IgnoreCase {
			return strings.EqualFold(x, y)
		}
		return x == y
	}
	if head, ok := strings.CutSuffix(a.Value, "/**"); ok && a.Kind == model.PathGlob && !strings.Contains(head, "*") {
		// "/beta/**" is /beta and everything below it.
		if b.Kind == model.PathExact && eq(b.Value, head) {
			return true
		}
		return len(b.Value) > len(head) && eq(b.Value[:len(head)+1], head+"/")
	}
	switch {
	case a.Kind == b.Kind:
		if a.Kind == model.PathPrefix {
			return len(b.Value) >= len(a.Value) && eq(b.Value[:len(a.Value)], a.Value)
		}
		return eq(a.Value, b.Value)
	case a.Kind == model.PathPrefix && b.Kind == model.PathExact:
		return len(b.Value) >= len(a.Value) && eq(b.Value[:len(a.Value)], a.Value)
	case a.Kind == model.PathGlob && b.Kind == model.PathExact:
		return a.matches(b.Value)
	}
	return false
}
