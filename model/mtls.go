package model

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// MTLSMode says what a workload's sidecar accepts on an inbound port.
type MTLSMode string

// mTLS modes, from strongest to weakest.
const (
	// MTLSStrict accepts only mutual TLS with a certificate of the trust
	// domain. The default.
	MTLSStrict MTLSMode = "STRICT"
	// MTLSPermissive accepts mutual TLS and plaintext on the same port,
	// for migrating callers that have no sidecar yet.
	MTLSPermissive MTLSMode = "PERMISSIVE"
	// MTLSDisable accepts plaintext only.
	MTLSDisable MTLSMode = "DISABLE"
)

// Weaker reports whether m is anything short of STRICT.
func (m MTLSMode) Weaker() bool { return m == MTLSPermissive || m == MTLSDisable }

func validMode(m MTLSMode) error {
	switch m {
	case MTLSStrict, MTLSPermissive, MTLSDisable:
		return nil
	case "":
		return errors.New("required: STRICT, PERMISSIVE or DISABLE")
	}
	return fmt.Errorf("%q is not a mode: use STRICT, PERMISSIVE or DISABLE", m)
}

// Exception justifies a mode weaker than STRICT. Every weakening must
// carry one; `bulwark mtls exceptions` lists them.
type Exception struct {
	// Reason says why; required.
	Reason string
	// Owner is who to ask.
	Owner string
	// Expires is the last day (YYYY-MM-DD, UTC) the exception holds.
	// After it, the weaker mode no longer applies: the port is STRICT.
	Expires string
}

// ExpiresAt returns the first instant the exception no longer holds, or
// the zero time if it does not expire.
func (e *Exception) ExpiresAt() time.Time {
	if e == nil || e.Expires == "" {
		return time.Time{}
	}
	d, err := time.Parse(time.DateOnly, e.Expires)
	if err != nil {
		return time.Time{}
	}
	return d.AddDate(0, 0, 1)
}

// Expired reports whether the exception has run out at now.
func (e *Exception) Expired(now time.Time) bool {
	at := e.ExpiresAt()
	return !at.IsZero() && !now.Before(at)
}

func (e *Exception) validate(p Path, weakened bool) []error {
	if e == nil {
		if weakened {
			return []error{fieldErrorf(p, "required: a mode weaker than STRICT needs an exception with a reason")}
		}
		return nil
	}
	var errs []error
	if strings.TrimSpace(e.Reason) == "" {
		errs = append(errs, fieldErrorf(p.Child("reason"), "required: say why this traffic may skip mutual TLS"))
	}
	if e.Expires != "" {
		if _, err := time.Parse(time.DateOnly, e.Expires); err != nil {
			errs = append(errs, fieldErrorf(p.Child("expires"), "%q is not a date (YYYY-MM-DD)", e.Expires))
		}
	}
	return errs
}

// MeshMTLS is the mesh-wide mTLS mode.
type MeshMTLS struct {
	// Mode defaults to STRICT.
	Mode      MTLSMode
	Exception *Exception
}

// Selector picks workloads of a policy's namespace by their labels. An
// empty selector picks the whole namespace.
type Selector struct {
	MatchLabels map[string]string
}

// Empty reports whether the selector picks the whole namespace.
func (s *Selector) Empty() bool { return s == nil || len(s.MatchLabels) == 0 }

// key is the same string for selectors with the same labels.
func (s *Selector) key() string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(s.MatchLabels)) {
		b.WriteString(strconv.Quote(k))
		b.WriteByte('=')
		b.WriteString(strconv.Quote(s.MatchLabels[k]))
		b.WriteByte(',')
	}
	return b.String()
}

// Matches reports whether a workload with labels is picked.
func (s *Selector) Matches(labels map[string]string) bool {
	if s.Empty() {
		return true
	}
	for k, v := range s.MatchLabels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// MTLSPolicySpec is what an MTLSPolicy says (public form:
// v1alpha1.MTLSPolicySpec).
type MTLSPolicySpec struct {
	Selector *Selector
	// Mode applies to every port the policy does not list in PortModes;
	// empty leaves them to the next policy out (namespace, then mesh).
	Mode MTLSMode
	// PortModes sets the mode of single target ports: {"9090": PERMISSIVE}.
	PortModes map[string]MTLSMode
	Exception *Exception
}

// MTLSPolicy sets the mTLS mode of a namespace, or of the workloads its
// selector picks, on all or some of their ports.
type MTLSPolicy struct {
	Namespace string
	Name      string
	Spec      MTLSPolicySpec
}

// Key returns "namespace/name".
func (p *MTLSPolicy) Key() string { return p.Namespace + "/" + p.Name }

// Validate checks the policy on its own; base is the path of its spec.
func (p *MTLSPolicy) Validate(base Path) error {
	var errs []error
	if err := validLabel(p.Namespace); err != nil {
		errs = append(errs, &FieldError{"metadata.namespace", err.Error()})
	}
	if err := validLabel(p.Name); err != nil {
		errs = append(errs, &FieldError{"metadata.name", err.Error()})
	}
	s := &p.Spec
	if s.Selector != nil {
		for _, k := range sortedKeys(s.Selector.MatchLabels) {
			lp := base.Child("selector").Child("matchLabels").Key(k)
			if err := validLabelKey(k); err != nil {
				errs = append(errs, &FieldError{lp, err.Error()})
			}
			if err := validLabelValue(s.Selector.MatchLabels[k]); err != nil {
				errs = append(errs, &FieldError{lp, err.Error()})
			}
		}
	}
	weakened := false
	if s.Mode != "" {
		if err := validMode(s.Mode); err != nil {
			errs = append(errs, &FieldError{base.Child("mode"), err.Error()})
		}
		weakened = s.Mode.Weaker()
	} else if len(s.PortModes) == 0 {
		errs = append(errs, fieldErrorf(base.Child("mode"), "required unless portModes is set"))
	}
	for _, k := range sortedKeys(s.PortModes) {
		pp := base.Child("portModes").Key(k)
		if n, err := strconv.ParseUint(k, 10, 32); err != nil || validPort(uint32(n)) != nil {
			errs = append(errs, fieldErrorf(pp, "%q is not a port number (1-65535)", k))
		}
		if err := validMode(s.PortModes[k]); err != nil {
			errs = append(errs, &FieldError{pp, err.Error()})
		}
		weakened = weakened || s.PortModes[k].Weaker()
	}
	errs = append(errs, s.Exception.validate(base.Child("exception"), weakened)...)
	return errors.Join(errs...)
}

// modeFor returns the mode the policy sets for a target port, or "".
func (p *MTLSPolicySpec) modeFor(port uint32) MTLSMode {
	if m, ok := p.PortModes[strconv.FormatUint(uint64(port), 10)]; ok {
		return m
	}
	return p.Mode
}

// MTLSDecision is the mode of one workload port and what set it.
type MTLSDecision struct {
	Mode MTLSMode
	// Source names the setting that decided: "mesh", "default", or
	// "MTLSPolicy <namespace>/<name>".
	Source string
	// Exception is the justification of a weaker mode, if any.
	Exception *Exception
	// Expired is set when a weaker mode was configured but its exception
	// has run out, so the port is STRICT.
	Expired bool
}

// ResolveMTLS decides the inbound mode of target port port of workload w
// at now. The most specific setting wins: a policy whose selector picks
// the workload, then a policy for its whole namespace, then the mesh;
// within a policy a port mode beats its general mode. When several
// policies of one level match, the first by name decides. A weaker mode
// whose exception has expired gives STRICT.
func ResolveMTLS(mesh Mesh, policies []*MTLSPolicy, w *Workload, port uint32, now time.Time) MTLSDecision {
	var selected, namespaced []*MTLSPolicy
	for _, p := range policies {
		if p.Namespace != w.Namespace || !p.Spec.Selector.Matches(w.Labels) {
			continue
		}
		if p.Spec.Selector.Empty() {
			namespaced = append(namespaced, p)
		} else {
			selected = append(selected, p)
		}
	}
	byName := func(a, b *MTLSPolicy) int { return strings.Compare(a.Name, b.Name) }
	slices.SortFunc(selected, byName)
	slices.SortFunc(namespaced, byName)
	d := MTLSDecision{Mode: MTLSStrict, Source: "default"}
	found := false
	for _, p := range append(selected, namespaced...) {
		if m := p.Spec.modeFor(port); m != "" {
			d = MTLSDecision{Mode: m, Source: "MTLSPolicy " + p.Key(), Exception: p.Spec.Exception}
			found = true
			break
		}
	}
	if !found && mesh.MTLS.Mode != "" {
		d = MTLSDecision{Mode: mesh.MTLS.Mode, Source: "mesh", Exception: mesh.MTLS.Exception}
	}
	if d.Mode.Weaker() && (d.Exception == nil || d.Exception.Expired(now)) {
		d.Mode, d.Expired = MTLSStrict, true
	}
	return d
}

// NextExpiry returns the earliest moment after now at which an exception
// runs out, or the zero time if none will: the moment modes must be
// resolved again.
func NextExpiry(mesh Mesh, policies []*MTLSPolicy, now time.Time) time.Time {
	var next time.Time
	consider := func(e *Exception) {
		if at := e.ExpiresAt(); !at.IsZero() && at.After(now) && (next.IsZero() || at.Before(next)) {
			next = at
		}
	}
	consider(mesh.MTLS.Exception)
	for _, p := range policies {
		consider(p.Spec.Exception)
	}
	return next
}

// CheckMTLSOverlap reports policies that pick a workload another
// policy of the same level already picks: the mesh file must say which
// one holds. Problems are keyed by the key of the policy at fault, with
// paths from its spec ("spec.selector").
func CheckMTLSOverlap(policies []*MTLSPolicy, workloads []*Workload) map[string][]error {
	out := map[string][]error{}
	sorted := slices.Clone(policies)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Key() < sorted[j].Key() })
	nsWide := map[string]*MTLSPolicy{}
	for _, p := range sorted {
		if !p.Spec.Selector.Empty() {
			continue
		}
		if prev := nsWide[p.Namespace]; prev != nil {
			out[p.Key()] = append(out[p.Key()], fieldErrorf("spec.selector",
				"namespace %s already has a policy for all its workloads, %s; give this one a selector or merge them", p.Namespace, prev.Key()))
			continue
		}
		nsWide[p.Namespace] = p
	}
	// Which selector picks which workload, without comparing every
	// selector with every workload (16,000 of each took 45 s): a selector
	// picks only workloads that carry all of its labels, so an index of
	// the workloads by label gives its candidates. When its rarest label
	// is rare, each candidate is compared; when every label of it is
	// common, the sets of workloads carrying them, as bitsets, are
	// intersected a word of 64 workloads at a time. Policies with the same
	// selector are matched once.
	type label struct{ namespace, key, value string }
	carrying := map[label][]int{}
	for i, w := range workloads {
		for k, v := range w.Labels {
			l := label{w.Namespace, k, v}
			carrying[l] = append(carrying[l], i)
		}
	}
	common := len(workloads)/64 + 1 // a label carried by this many gets a bitset
	sets := map[label]bitset{}
	for l, ws := range carrying {
		if len(ws) >= common {
			b := newBitset(len(workloads))
			for _, i := range ws {
				b.set(i)
			}
			sets[l] = b
		}
	}
	type group struct{ policies []*MTLSPolicy } // in sorted's order
	groups := map[string]*group{}
	var ordered []*group // by their first policy
	for _, p := range sorted {
		if p.Spec.Selector.Empty() {
			continue
		}
		key := p.Namespace + " " + p.Spec.Selector.key()
		g := groups[key]
		if g == nil {
			g = &group{}
			groups[key] = g
			ordered = append(ordered, g)
		}
		g.policies = append(g.policies, p)
	}
	// A workload belongs to the first policy, in sorted's order, that
	// picks it; every other policy that picks it is at fault. Each is
	// reported once, naming the first workload it shares.
	owner := make([]*MTLSPolicy, len(workloads))
	owned := newBitset(len(workloads))
	report := func(p *MTLSPolicy, i, shared int) {
		msg := fmt.Sprintf("picks workload %s, which %s also picks; one workload, one policy", workloads[i].Key(), owner[i].Key())
		if shared > 1 {
			msg += fmt.Sprintf(" (and %d more workloads another policy also picks)", shared-1)
		}
		out[p.Key()] = append(out[p.Key()], fieldErrorf("spec.selector", "%s", msg))
	}
	picks := newBitset(len(workloads))
	for _, g := range ordered {
		p := g.policies[0]
		var rarest []int
		var labels []label
		for k, v := range p.Spec.Selector.MatchLabels {
			l := label{p.Namespace, k, v}
			labels = append(labels, l)
			if c := carrying[l]; len(labels) == 1 || len(c) < len(rarest) {
				rarest = c
			}
		}
		clear(picks)
		if len(rarest) < common {
			for _, i := range rarest {
				if p.Spec.Selector.Matches(workloads[i].Labels) {
					picks.set(i)
				}
			}
		} else {
			copy(picks, sets[labels[0]])
			for _, l := range labels[1:] {
				picks.and(sets[l])
			}
		}
		first, n := picks.first(), picks.count()
		if n == 0 {
			continue
		}
		if i, shared := picks.firstAnd(owned), picks.countAnd(owned); shared > 0 {
			report(p, i, shared)
		}
		picks.each(owned, func(i int) { owner[i] = p }) // the ones nobody had
		owned.or(picks)
		for _, q := range g.policies[1:] {
			report(q, first, n)
		}
	}
	return out
}
