package model

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Action is what an access policy does with the requests its rules match.
type Action string

// Access policy actions.
const (
	ActionAllow Action = "ALLOW"
	ActionDeny  Action = "DENY"
)

// DefaultAccess is what a workload that no ALLOW policy selects accepts.
type DefaultAccess string

// Mesh-wide defaults for unselected workloads.
const (
	// DefaultDeny accepts nothing: every flow must be allowed by a policy.
	DefaultDeny DefaultAccess = "deny"
	// DefaultAllowMesh accepts any caller that authenticated with an
	// identity of the trust domain, and no plaintext caller.
	DefaultAllowMesh DefaultAccess = "allow-mesh"
)

// Authorization holds the mesh-wide authorization settings.
type Authorization struct {
	// Default is deny (the default) or allow-mesh.
	Default DefaultAccess
	// ScopeConfig, on by default, sends a transparent sidecar only the
	// services its identity may call. Set it to false to send every
	// service with an address to every sidecar.
	ScopeConfig *bool
}

// Scoped reports whether configuration is scoped by policy.
func (a Authorization) Scoped() bool { return a.ScopeConfig == nil || *a.ScopeConfig }

// AccessSelector picks the workloads a policy protects: those backing a
// service of the policy's namespace, or those with the given labels.
type AccessSelector struct {
	Service     string
	MatchLabels map[string]string
}

// Source says who a rule is about: a caller with any of the identities it
// lists, or, with Unauthenticated, a caller without a certificate.
type Source struct {
	// ServiceAccounts are "name" (in the policy's namespace) or
	// "namespace/name".
	ServiceAccounts []string
	// Namespaces match any service account of the namespace; "*" matches
	// every identity of the trust domain.
	Namespaces []string
	// SPIFFEIDs match exactly.
	SPIFFEIDs []string
	// Unauthenticated matches callers that presented no certificate:
	// plaintext on a PERMISSIVE or DISABLE port. It cannot be combined
	// with identities.
	Unauthenticated bool
}

// Operation says what a rule is about. The fields set must all match; an
// empty list matches anything.
type Operation struct {
	// Ports are target ports of the selected workloads.
	Ports []uint32
	// Methods are HTTP methods, upper case.
	Methods []string
	// Paths are matched against the normalized path, without the query:
	// "/admin" exactly, "/v1/*" as a prefix ("/v1/"), and globs where "*"
	// is one path segment and "**" zero or more: "/users/*/profile",
	// "/beta/**" (which matches "/beta" too). See PathPattern.Regex.
	Paths []string
	// IgnoreCase makes the path match case-insensitive.
	IgnoreCase bool
}

// HTTPOnly reports whether the operation names anything only HTTP has.
func (o *Operation) HTTPOnly() bool { return len(o.Methods)+len(o.Paths) > 0 }

// AccessRule matches a request when any of its sources and any of its
// operations match. An empty To matches every operation; an empty From is
// an error, never "everyone".
type AccessRule struct {
	From []Source
	To   []Operation
}

// AccessPolicySpec is what an AccessPolicy says (public form:
// v1alpha1.AccessPolicySpec).
type AccessPolicySpec struct {
	Selector AccessSelector
	Action   Action
	// DryRun evaluates the policy without enforcing it: Envoy counts what
	// it would do in its shadow statistics.
	DryRun bool
	Rules  []AccessRule
}

// AccessPolicy allows or denies calls to the workloads it selects.
type AccessPolicy struct {
	Namespace string
	Name      string
	Spec      AccessPolicySpec
}

// Key returns "namespace/name".
func (p *AccessPolicy) Key() string { return p.Namespace + "/" + p.Name }

// RuleName names rule i of the policy in Envoy's RBAC configuration, its
// logs and statistics: "<namespace>/<policy>/<i>".
func (p *AccessPolicy) RuleName(i int) string { return fmt.Sprintf("%s/%s/%d", p.Namespace, p.Name, i) }

// Selects reports whether the policy protects workload w.
func (p *AccessPolicy) Selects(w *Workload) bool {
	if w.Namespace != p.Namespace {
		return false
	}
	sel := p.Spec.Selector
	if sel.Service != "" && !w.Backs(sel.Service) {
		return false
	}
	for k, v := range sel.MatchLabels {
		if got, ok := w.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

var httpMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true, http.MethodPatch: true,
	http.MethodDelete: true, http.MethodConnect: true, http.MethodOptions: true, http.MethodTrace: true,
}

// Validate checks the policy on its own; base is the path of its spec.
// trustDomain checks SPIFFE IDs.
func (p *AccessPolicy) Validate(base Path, trustDomain string) error {
	var errs []error
	add := func(path Path, format string, args ...any) {
		errs = append(errs, fieldErrorf(path, format, args...))
	}
	if err := validLabel(p.Namespace); err != nil {
		errs = append(errs, &FieldError{"metadata.namespace", err.Error()})
	}
	if err := validLabel(p.Name); err != nil {
		errs = append(errs, &FieldError{"metadata.name", err.Error()})
	}
	s := &p.Spec
	sel := base.Child("selector")
	switch {
	case s.Selector.Service == "" && len(s.Selector.MatchLabels) == 0:
		add(sel, "required: a service or matchLabels; a policy for a whole namespace says so with matchLabels it shares")
	case s.Selector.Service != "" && len(s.Selector.MatchLabels) > 0:
		add(sel, "give a service or matchLabels, not both")
	case s.Selector.Service != "":
		if err := validLabel(s.Selector.Service); err != nil {
			add(sel.Child("service"), "%v", err)
		}
	}
	for _, k := range sortedKeys(s.Selector.MatchLabels) {
		if err := validLabelKey(k); err != nil {
			add(sel.Child("matchLabels").Key(k), "%v", err)
		}
		if err := validLabelValue(s.Selector.MatchLabels[k]); err != nil {
			add(sel.Child("matchLabels").Key(k), "%v", err)
		}
	}
	switch s.Action {
	case ActionAllow, ActionDeny:
	case "":
		add(base.Child("action"), "required: ALLOW or DENY")
	default:
		add(base.Child("action"), "%q is not an action: use ALLOW or DENY", s.Action)
	}
	if len(s.Rules) == 0 {
		add(base.Child("rules"), "required: at least one rule (an ALLOW policy without rules would deny everything by accident)")
	}
	for i, r := range s.Rules {
		rp := base.Child("rules").Index(i)
		if len(r.From) == 0 {
			add(rp.Child("from"), "required: an empty from would match everyone; name the callers (namespaces: [\"*\"] for the whole mesh)")
		}
		for j, src := range r.From {
			errs = append(errs, src.validate(rp.Child("from").Index(j), trustDomain)...)
		}
		for j, op := range r.To {
			errs = append(errs, op.validate(rp.Child("to").Index(j), s.Action)...)
		}
	}
	return errors.Join(errs...)
}

func (s *Source) validate(p Path, td string) []error {
	var errs []error
	add := func(path Path, format string, args ...any) {
		errs = append(errs, fieldErrorf(path, format, args...))
	}
	identities := len(s.ServiceAccounts) + len(s.Namespaces) + len(s.SPIFFEIDs)
	if identities == 0 && !s.Unauthenticated {
		add(p, "empty: name serviceAccounts, namespaces, spiffeIDs or unauthenticated: true")
	}
	if identities > 0 && s.Unauthenticated {
		add(p.Child("unauthenticated"), "cannot be combined with identities: a caller without a certificate has none")
	}
	for i, sa := range s.ServiceAccounts {
		ns, name, qualified := strings.Cut(sa, "/")
		if !qualified {
			name, ns = ns, ""
		}
		if qualified {
			if err := validLabel(ns); err != nil {
				add(p.Child("serviceAccounts").Index(i), "namespace %v", err)
			}
		}
		if err := validServiceAccount(name); err != nil {
			add(p.Child("serviceAccounts").Index(i), "%v (use name or namespace/name)", err)
		}
	}
	for i, ns := range s.Namespaces {
		if ns == "*" {
			continue
		}
		if err := validLabel(ns); err != nil {
			add(p.Child("namespaces").Index(i), "%v (or \"*\" for every namespace)", err)
		}
	}
	for i, raw := range s.SPIFFEIDs {
		id, err := spiffeid.FromString(raw)
		if err != nil {
			add(p.Child("spiffeIDs").Index(i), "%q is not a SPIFFE ID: %v", raw, err)
			continue
		}
		if id.TrustDomain().Name() != td {
			add(p.Child("spiffeIDs").Index(i), "%s is not in the mesh's trust domain %s", raw, td)
		}
	}
	return errs
}

func (o *Operation) validate(p Path, action Action) []error {
	var errs []error
	for i, port := range o.Ports {
		if err := validPort(port); err != nil {
			errs = append(errs, &FieldError{p.Child("ports").Index(i), err.Error()})
		}
	}
	for i, m := range o.Methods {
		if !httpMethods[m] {
			errs = append(errs, fieldErrorf(p.Child("methods").Index(i), "%q is not an HTTP method (upper case: GET, POST, ...)", m))
		}
	}
	for i, path := range o.Paths {
		pp, err := ParsePathPattern(path)
		if err != nil {
			errs = append(errs, &FieldError{p.Child("paths").Index(i), err.Error()})
			continue
		}
		// What reaches Envoy as a regular expression must fit its limit:
		// every DENY path (widened for path parameters) and ALLOW globs.
		if action != ActionDeny && pp.Kind != PathGlob {
			continue
		}
		if re := pp.Regex(o.IgnoreCase, action == ActionDeny); re.Size > MaxPathRegexSize {
			errs = append(errs, fieldErrorf(p.Child("paths").Index(i),
				"%q is too long for the sidecar: its regular expression would have about %d RE2 instructions, over the %d Bulwark allows (Envoy refuses more than 100; a DENY path costs more, as each segment may carry ;parameters): shorten it",
				path, re.Size, MaxPathRegexSize))
		}
	}
	return errs
}

// PathKind is how a path pattern matches.
type PathKind int

// Path pattern kinds.
const (
	PathExact PathKind = iota
	PathPrefix
	PathGlob
)

// PathPattern is a parsed path of an operation.
type PathPattern struct {
	Kind PathKind
	// Value is the exact path, the prefix, or the glob as written.
	Value string
}

// ParsePathPattern reads "/exact", "/prefix/*" (prefix "/prefix/") or a
// glob with "*" for one segment and "**" for zero or more.
func ParsePathPattern(s string) (PathPattern, error) {
	if !strings.HasPrefix(s, "/") {
		return PathPattern{}, fmt.Errorf("%q must start with /", s)
	}
	if strings.ContainsAny(s, "?#") {
		return PathPattern{}, fmt.Errorf("%q: paths are matched without query or fragment; leave them out", s)
	}
	if strings.Contains(s, "%") {
		return PathPattern{}, fmt.Errorf("%q: write the path decoded; requests are matched after normalization", s)
	}
	for i := 0; i < len(s); i++ {
		// A normalized path is visible ASCII: the sidecar refuses
		// requests with other bytes, turns "\" into "/" and
		// percent-encodes the rest of these.
		if c := s[i]; c <= ' ' || c >= 0x7f || strings.IndexByte(`\"<>^`+"`"+`{|}`, c) >= 0 {
			return PathPattern{}, fmt.Errorf("%q has %q, which no request path has after normalization: it can never match", s, s[i:i+1])
		}
	}
	for _, seg := range strings.Split(s, "/") {
		if seg == "." || seg == ".." {
			return PathPattern{}, fmt.Errorf("%q has a %q segment, which normalization removes from every request: it can never match", s, seg)
		}
		if suspectSegment(seg) {
			return PathPattern{}, fmt.Errorf("%q has the segment %q, only path parameters or a dot with them: servers that honour parameters read it as another path, so every DENY path matches such a request and no ALLOW path does", s, seg)
		}
	}
	if strings.Contains(s, "//") {
		return PathPattern{}, fmt.Errorf("%q has \"//\", which normalization merges in every request: it can never match", s)
	}
	star := strings.Index(s, "*")
	switch {
	case star < 0:
		return PathPattern{Kind: PathExact, Value: s}, nil
	case star == len(s)-1 && !strings.Contains(s[:star], "*"):
		return PathPattern{Kind: PathPrefix, Value: s[:star]}, nil
	}
	for _, seg := range strings.Split(s, "/") {
		if strings.Contains(seg, "*") && seg != "*" && seg != "**" {
			return PathPattern{}, fmt.Errorf("%q: a glob wildcard must be a whole segment (\"*\" or \"**\")", s)
		}
	}
	return PathPattern{Kind: PathGlob, Value: s}, nil
}

// suspectSegment reports whether a pattern segment is what
// SuspectPathRegex finds in a request: ";x", ".;x" or "..;x". (Patterns
// have no "%".)
func suspectSegment(seg string) bool {
	return strings.HasPrefix(strings.TrimLeft(seg, "."), ";") && len(seg)-len(strings.TrimLeft(seg, ".")) <= 2
}

// IdentityMatch matches SPIFFE IDs exactly or by prefix.
type IdentityMatch struct {
	// Exact or Prefix is set.
	Exact, Prefix string
}

// Identities returns the matchers of the source's identities (any of
// them matches). policyNamespace qualifies bare service accounts.
func (s *Source) Identities(trustDomain, policyNamespace string) []IdentityMatch {
	var out []IdentityMatch
	for _, sa := range s.ServiceAccounts {
		ns, name, qualified := strings.Cut(sa, "/")
		if !qualified {
			ns, name = policyNamespace, sa
		}
		out = append(out, IdentityMatch{Exact: "spiffe://" + trustDomain + "/ns/" + ns + "/sa/" + name})
	}
	for _, ns := range s.Namespaces {
		if ns == "*" {
			out = append(out, IdentityMatch{Prefix: "spiffe://" + trustDomain + "/"})
			continue
		}
		out = append(out, IdentityMatch{Prefix: "spiffe://" + trustDomain + "/ns/" + ns + "/sa/"})
	}
	for _, id := range s.SPIFFEIDs {
		out = append(out, IdentityMatch{Exact: id})
	}
	return out
}
