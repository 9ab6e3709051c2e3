package model

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var labelRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// validLabel checks a DNS-1123 label: what Kubernetes accepts as a
// namespace or service name, and what fits in one SPIFFE ID path segment.
func validLabel(s string) error {
	switch {
	case s == "":
		return errors.New("must not be empty")
	case len(s) > 63:
		return fmt.Errorf("%q is longer than 63 characters", s)
	case !labelRE.MatchString(s):
		return fmt.Errorf("%q must be lower-case letters, digits and '-', starting and ending with a letter or digit", s)
	}
	return nil
}

// validServiceAccount checks a service account name: a DNS-1123
// subdomain, as Kubernetes requires.
func validServiceAccount(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	if len(s) > 253 {
		return fmt.Errorf("%q is longer than 253 characters", s)
	}
	for _, part := range strings.Split(s, ".") {
		if !labelRE.MatchString(part) {
			return fmt.Errorf("%q must be lower-case letters, digits, '-' and '.'", s)
		}
	}
	return nil
}

func validTrustDomain(s string) error {
	if _, err := spiffeid.TrustDomainFromString(s); err != nil {
		return fmt.Errorf("%q is not a SPIFFE trust domain: %w", s, err)
	}
	if strings.Contains(s, "://") {
		return fmt.Errorf("%q must be a bare name such as example.org, not a URI", s)
	}
	return nil
}

// validIP checks a literal unicast IP address without a zone.
func validIP(s string) error {
	a, err := netip.ParseAddr(s)
	if err != nil {
		if s == "" {
			return errors.New("required")
		}
		return fmt.Errorf("%q is not an IP address", s)
	}
	if a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
		return fmt.Errorf("%q is not a unicast IP address", s)
	}
	return nil
}

var labelKeyRE = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$`)

// validLabelKey checks a Kubernetes label key: an optional DNS prefix and
// a name of at most 63 characters.
func validLabelKey(k string) error {
	name := k
	if prefix, n, ok := strings.Cut(k, "/"); ok {
		name = n
		if prefix == "" || len(prefix) > 253 {
			return fmt.Errorf("label key %q has an invalid prefix", k)
		}
		for _, part := range strings.Split(prefix, ".") {
			if !labelRE.MatchString(part) {
				return fmt.Errorf("label key %q has an invalid prefix", k)
			}
		}
	}
	if name == "" || len(name) > 63 || !labelKeyRE.MatchString(name) {
		return fmt.Errorf("label key %q must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit", k)
	}
	return nil
}

func validLabelValue(v string) error {
	if v == "" {
		return nil
	}
	if len(v) > 63 || !labelKeyRE.MatchString(v) {
		return fmt.Errorf("label value %q must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit", v)
	}
	return nil
}

func validPort(p uint32) error {
	if p == 0 || p > 65535 {
		return fmt.Errorf("%d is not a port number (1-65535)", p)
	}
	return nil
}

// The sidecar's own ports live in this range on the workload's local
// address (admin, transparent capture listeners), so upstreams may not
// claim them.
const (
	reservedPortMin = 15000
	reservedPortMax = 15099
)

func (s *Service) validate(p Path) []error {
	var errs []error
	if err := validLabel(s.Namespace); err != nil {
		errs = append(errs, &FieldError{p.Child("namespace"), err.Error()})
	}
	if err := validLabel(s.Name); err != nil {
		errs = append(errs, &FieldError{p.Child("name"), err.Error()})
	}
	if len(s.Ports) == 0 {
		errs = append(errs, fieldErrorf(p.Child("ports"), "a service needs at least one port"))
	}
	names := map[string]int{}
	numbers := map[uint32]int{}
	for i, port := range s.Ports {
		pp := p.Child("ports").Index(i)
		if port.Name != "" {
			if err := validLabel(port.Name); err != nil {
				errs = append(errs, &FieldError{pp.Child("name"), err.Error()})
			}
		} else if len(s.Ports) > 1 {
			errs = append(errs, fieldErrorf(pp.Child("name"), "required when a service has more than one port"))
		}
		if j, dup := names[port.Name]; dup && port.Name != "" {
			errs = append(errs, fieldErrorf(pp.Child("name"), "port name %q is already used by ports[%d]", port.Name, j))
		}
		names[port.Name] = i
		if err := validPort(port.Port); err != nil {
			errs = append(errs, &FieldError{pp.Child("port"), err.Error()})
		} else if j, dup := numbers[port.Port]; dup {
			errs = append(errs, fieldErrorf(pp.Child("port"), "port %d is already used by ports[%d]", port.Port, j))
		}
		numbers[port.Port] = i
		if err := validPort(port.TargetPort); err != nil && port.TargetPort != port.Port {
			errs = append(errs, &FieldError{pp.Child("targetPort"), err.Error()})
		}
		switch port.Protocol {
		case ProtocolHTTP, ProtocolTCP:
		case "":
			errs = append(errs, fieldErrorf(pp.Child("protocol"), "required: http or tcp"))
		default:
			errs = append(errs, fieldErrorf(pp.Child("protocol"), "%q is not a protocol: use http or tcp", port.Protocol))
		}
	}
	return errs
}

// validate checks a workload on its own and against the services it
// backs and calls. services maps "namespace/name" to every valid service.
func (w *Workload) validate(p Path, services map[string]*Service) []error {
	var errs []error
	add := func(field Path, err error) {
		if err != nil {
			errs = append(errs, &FieldError{field, err.Error()})
		}
	}
	add(p.Child("namespace"), validLabel(w.Namespace))
	add(p.Child("name"), validLabel(w.Name))
	add(p.Child("serviceAccount"), validServiceAccount(w.ServiceAccount))
	add(p.Child("address"), validIP(w.Address))
	add(p.Child("localAddress"), validIP(w.LocalAddress))
	for _, k := range sortedKeys(w.Labels) {
		add(p.Child("labels").Key(k), validLabelKey(k))
		add(p.Child("labels").Key(k), validLabelValue(w.Labels[k]))
	}

	// The app listens on LocalAddress:targetPort for every port of every
	// service the workload backs; one target port cannot speak two
	// protocols.
	appPorts := map[uint32]string{} // target port -> "service port" that uses it
	appProto := map[uint32]Protocol{}
	seen := map[string]int{}
	for i, name := range w.Services {
		sp := p.Child("services").Index(i)
		if j, dup := seen[name]; dup {
			errs = append(errs, fieldErrorf(sp, "service %q is already listed at services[%d]", name, j))
			continue
		}
		seen[name] = i
		svc := services[w.Namespace+"/"+name]
		if svc == nil {
			errs = append(errs, fieldErrorf(sp, "service %q is not defined in namespace %s", name, w.Namespace))
			continue
		}
		for _, port := range svc.Ports {
			use := fmt.Sprintf("service %s port %d", svc.Name, port.Port)
			if port.TargetPort >= reservedPortMin && port.TargetPort <= reservedPortMax {
				errs = append(errs, fieldErrorf(sp, "%s targets port %d, but ports %d-%d are the sidecar's own",
					use, port.TargetPort, reservedPortMin, reservedPortMax))
				continue
			}
			if proto, taken := appProto[port.TargetPort]; taken && proto != port.Protocol {
				errs = append(errs, fieldErrorf(sp, "%s sends %s to target port %d, which %s uses for %s",
					use, port.Protocol, port.TargetPort, appPorts[port.TargetPort], proto))
				continue
			}
			appPorts[port.TargetPort] = use
			appProto[port.TargetPort] = port.Protocol
		}
	}

	localPorts := map[uint32]int{}
	for i, u := range w.Upstreams {
		up := p.Child("upstreams").Index(i)
		add(up.Child("service"), validLabel(u.Service))
		add(up.Child("namespace"), validLabel(u.Namespace))
		svc := services[u.ServiceKey()]
		switch {
		case u.Service == "" || u.Namespace == "":
			// Already reported.
		case svc == nil:
			errs = append(errs, fieldErrorf(up.Child("service"), "service %q is not defined in namespace %s", u.Service, u.Namespace))
		case u.Port == 0:
			errs = append(errs, fieldErrorf(up.Child("port"), "required: service %s has several ports (%s)", svc.Key(), portList(svc)))
		case svc.Port(u.Port) == nil:
			errs = append(errs, fieldErrorf(up.Child("port"), "service %s has no port %d (it has %s)", svc.Key(), u.Port, portList(svc)))
		}
		if u.LocalPort == 0 {
			continue // follows from a missing port, already reported
		}
		if err := validPort(u.LocalPort); err != nil {
			add(up.Child("localPort"), err)
			continue
		}
		switch {
		case u.LocalPort >= reservedPortMin && u.LocalPort <= reservedPortMax:
			errs = append(errs, fieldErrorf(up.Child("localPort"), "ports %d-%d are reserved for the sidecar", reservedPortMin, reservedPortMax))
		case appPorts[u.LocalPort] != "":
			errs = append(errs, fieldErrorf(up.Child("localPort"), "the app listens on %s:%d for %s; pick another local port",
				w.LocalAddress, u.LocalPort, appPorts[u.LocalPort]))
		}
		if j, dup := localPorts[u.LocalPort]; dup {
			errs = append(errs, fieldErrorf(up.Child("localPort"), "local port %d is already used by upstreams[%d]", u.LocalPort, j))
		}
		localPorts[u.LocalPort] = i
	}
	switch w.Capture {
	case CaptureExplicit, CaptureTransparent:
	default:
		errs = append(errs, fieldErrorf(p.Child("capture"), "%q is not a capture mode: use explicit or transparent", w.Capture))
	}
	if w.Transparent() && len(w.Upstreams) > 0 {
		errs = append(errs, fieldErrorf(p.Child("upstreams"), "upstreams are for explicit capture; under transparent capture the app calls services by their address"))
	}
	if w.Transparent() {
		return errs
	}
	if w.Address != "" && w.Address == w.LocalAddress {
		errs = append(errs, fieldErrorf(p.Child("localAddress"), "must differ from address %s: the sidecar's inbound listeners bind the address and the app binds the local address, on the same ports", w.Address))
	}
	return errs
}

func portList(s *Service) string {
	ports := make([]string, len(s.Ports))
	for i, p := range s.Ports {
		ports[i] = fmt.Sprint(p.Port)
	}
	return strings.Join(ports, ", ")
}
