package model

import (
	"fmt"
	"strings"
)

// ResolveService returns the service ref names, as an operator writes
// it: "namespace/name", "name.namespace", or a bare name that only one
// namespace has. The error says which service is missing, or that a
// bare name is ambiguous and how to write it instead.
func (s *Snapshot) ResolveService(ref string) (*Service, error) {
	if ns, name, ok := strings.Cut(ref, "/"); ok {
		if svc := s.Service(ns, name); svc != nil {
			return svc, nil
		}
		return nil, fmt.Errorf("no service %s", ref)
	}
	if name, ns, ok := strings.Cut(ref, "."); ok {
		if svc := s.Service(ns, name); svc != nil {
			return svc, nil
		}
		return nil, fmt.Errorf("no service %s", ref)
	}
	var found []*Service
	for _, svc := range s.Services() {
		if svc.Name == ref {
			found = append(found, svc)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return nil, fmt.Errorf("no service %q", ref)
	}
	return nil, fmt.Errorf("service %q is in several namespaces; write namespace/%s", ref, ref)
}
