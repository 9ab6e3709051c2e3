package model

import "errors"

// MeshSpec is the mesh-wide settings and, when there is no Kubernetes,
// the services and workloads themselves: what a mesh file's Mesh document
// says, converted from api/v1alpha1 by package kinds.
//
// Callers call Default, then Validate, then read it; a MeshSpec is not
// safe for concurrent mutation.
type MeshSpec struct {
	// TrustDomain is the SPIFFE trust domain; empty means cluster.local.
	TrustDomain string
	// MTLS is the mesh-wide mTLS mode; STRICT unless set.
	MTLS MeshMTLS
	// Authorization sets what workloads no ALLOW policy selects accept,
	// and whether sidecars get only what their identity may call.
	Authorization Authorization
	Services      []Service
	Workloads     []Workload
}

// Default fills in every optional field left empty, in place.
func (m *MeshSpec) Default() {
	if m.TrustDomain == "" {
		m.TrustDomain = DefaultTrustDomain
	}
	if m.Authorization.Default == "" {
		m.Authorization.Default = DefaultDeny
	}
	for i := range m.Services {
		s := &m.Services[i]
		if s.Namespace == "" {
			s.Namespace = DefaultNamespace
		}
		for j := range s.Ports {
			if s.Ports[j].TargetPort == 0 {
				s.Ports[j].TargetPort = s.Ports[j].Port
			}
		}
	}
	services := make(map[string]*Service, len(m.Services))
	for i := range m.Services {
		services[m.Services[i].Key()] = &m.Services[i]
	}
	for i := range m.Workloads {
		w := &m.Workloads[i]
		if w.Namespace == "" {
			w.Namespace = DefaultNamespace
		}
		if w.ServiceAccount == "" {
			w.ServiceAccount = DefaultServiceAccount
		}
		if w.LocalAddress == "" {
			w.LocalAddress = DefaultLocalAddress
		}
		if w.Capture == "" {
			w.Capture = CaptureExplicit
		}
		for j := range w.Upstreams {
			u := &w.Upstreams[j]
			if u.Namespace == "" {
				u.Namespace = w.Namespace
			}
			if svc := services[u.ServiceKey()]; u.Port == 0 && svc != nil && len(svc.Ports) == 1 {
				u.Port = svc.Ports[0].Port
			}
			if u.LocalPort == 0 {
				u.LocalPort = u.Port
			}
		}
	}
}

// Validate reports every problem in a defaulted MeshSpec, each as a
// FieldError whose path starts at base (for a mesh file, "spec"), joined
// with errors.Join. It returns nil for a valid spec.
func (m *MeshSpec) Validate(base Path) error {
	var errs []error
	if err := validTrustDomain(m.TrustDomain); err != nil {
		errs = append(errs, &FieldError{Path: base.Child("trustDomain"), Detail: err.Error()})
	}
	if m.MTLS.Mode != "" {
		if err := validMode(m.MTLS.Mode); err != nil {
			errs = append(errs, &FieldError{Path: base.Child("mtls").Child("mode"), Detail: err.Error()})
		}
	}
	switch m.Authorization.Default {
	case DefaultDeny, DefaultAllowMesh:
	default:
		errs = append(errs, fieldErrorf(base.Child("authorization").Child("default"), "%q is not a default: use deny or allow-mesh", m.Authorization.Default))
	}
	errs = append(errs, m.MTLS.Exception.validate(base.Child("mtls").Child("exception"), m.MTLS.Mode.Weaker())...)

	services := make(map[string]*Service, len(m.Services))
	servicePath := make(map[string]Path, len(m.Services))
	vipOwner := map[string]string{}
	for i := range m.Services {
		s := &m.Services[i]
		p := base.Child("services").Index(i)
		errs = append(errs, s.validate(p)...)
		if s.Address != "" {
			if err := validIP(s.Address); err != nil {
				errs = append(errs, &FieldError{p.Child("address"), err.Error()})
			} else if owner, dup := vipOwner[s.Address]; dup {
				errs = append(errs, fieldErrorf(p.Child("address"), "address %s is already the address of service %s", s.Address, owner))
			} else {
				vipOwner[s.Address] = s.Key()
			}
		}
		if prev, dup := servicePath[s.Key()]; dup {
			errs = append(errs, fieldErrorf(p.Child("name"), "service %s is already defined at %s", s.Key(), prev))
			continue
		}
		services[s.Key()] = s
		servicePath[s.Key()] = p
	}

	workloadPath := make(map[string]Path, len(m.Workloads))
	addressOwner := make(map[string]string, len(m.Workloads))
	for i := range m.Workloads {
		w := &m.Workloads[i]
		p := base.Child("workloads").Index(i)
		errs = append(errs, w.validate(p, services)...)
		if IsControlPlane(w.Namespace, w.ServiceAccount) {
			errs = append(errs, fieldErrorf(p.Child("serviceAccount"), "service account %s in namespace %s is the control plane's own identity (spiffe://%s/ns/%s/sa/%s); no workload may have it",
				w.ServiceAccount, w.Namespace, m.TrustDomain, w.Namespace, w.ServiceAccount))
		}
		if prev, dup := workloadPath[w.Key()]; dup {
			errs = append(errs, fieldErrorf(p.Child("name"), "workload %s is already defined at %s", w.Key(), prev))
		} else {
			workloadPath[w.Key()] = p
		}
		if owner, dup := vipOwner[w.Address]; dup {
			errs = append(errs, fieldErrorf(p.Child("address"), "address %s is the address of service %s", w.Address, owner))
		}
		if owner, dup := addressOwner[w.Address]; dup && w.Address != "" {
			errs = append(errs, fieldErrorf(p.Child("address"), "address %s is already the address of workload %s", w.Address, owner))
		} else {
			addressOwner[w.Address] = w.Key()
		}
	}
	return errors.Join(errs...)
}
