package gen

import (
	"bufio"
	"fmt"
	"io"
)

// MeshFile writes the mesh of generation 0 as a mesh file, the way an
// inventory export would: the Mesh document in block style (every
// workload a sidecar with transparent capture, labelled after the
// service it backs), then, with policies, an AccessPolicy per service
// allowing GET and POST on /api/ from the namespace. A mesh file has no
// endpoints of its own (a workload is an endpoint of each service it
// backs), so Endpoints is not used: service i has a workload for each
// proxy j with j mod Services = i.
func (s Spec) MeshFile(w io.Writer, policies bool) error {
	st := s.State(0)
	b := bufio.NewWriter(w)
	fmt.Fprintf(b, "apiVersion: bulwark.dev/v1alpha1\nkind: Mesh\nmetadata:\n  name: bench\nspec:\n  trustDomain: %s\n", TrustDomain)
	fmt.Fprintf(b, "  authorization:\n    default: %s\n  services:\n", st.Mesh.Authorization.Default)
	for _, svc := range st.Services {
		fmt.Fprintf(b, "    - name: %s\n      namespace: %s\n      address: %s\n      ports:\n", svc.Name, svc.Namespace, svc.Address)
		for _, p := range svc.Ports {
			fmt.Fprintf(b, "        - {name: %s, port: %d, targetPort: %d, protocol: %s}\n", p.Name, p.Port, p.TargetPort, p.Protocol)
		}
	}
	b.WriteString("  workloads:\n")
	for _, wl := range st.Workloads {
		fmt.Fprintf(b, "    - name: %s\n      namespace: %s\n      serviceAccount: %s\n      labels: {app: %s}\n      address: %s\n      localAddress: %s\n      capture: %s\n      services: [%s]\n",
			wl.Name, wl.Namespace, wl.ServiceAccount, wl.Services[0], wl.Address, wl.LocalAddress, wl.Capture, wl.Services[0])
	}
	if policies {
		for _, svc := range st.Services {
			fmt.Fprintf(b, "---\napiVersion: bulwark.dev/v1alpha1\nkind: AccessPolicy\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n  selector: {service: %s}\n  action: ALLOW\n  rules:\n    - from:\n        - namespaces: [%s]\n      to:\n        - methods: [GET, POST]\n          paths: [\"/api/*\"]\n",
				svc.Name, svc.Namespace, svc.Name, svc.Namespace)
		}
	}
	return b.Flush()
}
