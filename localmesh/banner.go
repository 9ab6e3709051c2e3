package localmesh

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bulwarkmesh/bulwark/authz"
	"github.com/bulwarkmesh/bulwark/model"
)

// Banner writes what runs where, and a few calls to try, for a person at
// a terminal.
func (m *Mesh) Banner(out io.Writer) {
	snap := m.cp.Store.Snapshot()
	mesh := snap.Mesh()
	fmt.Fprintf(out, "\nBulwark local mesh %q (trust domain %s) is up.\n\n", mesh.Name, mesh.TrustDomain)
	fmt.Fprintf(out, "Control plane: ADS on %s", m.cp.XDSAddr)
	if m.cp.HTTPAddr != nil {
		fmt.Fprintf(out, "; metrics http://%s/metrics\n", m.cp.HTTPAddr)
		fmt.Fprintf(out, "Proxy status:  bin/bulwark proxy-status --http-address %s", m.cp.HTTPAddr)
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out)

	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKLOAD\tIDENTITY\tSIDECAR (peers, mTLS mode)\tAPP\tENVOY ADMIN\tUPSTREAMS (app -> sidecar)")
	var tries []string
	for _, sc := range m.Sidecars() {
		w := sc.Workload
		var inbound, app, ups []string
		for _, p := range snap.InboundPorts(w) {
			mode := snap.MTLSMode(w, p.Port, time.Now()).Mode
			inbound = append(inbound, net.JoinHostPort(w.Address, strconv.Itoa(int(p.Port)))+" "+string(mode))
			app = append(app, fmt.Sprintf("%s/%s", net.JoinHostPort(w.LocalAddress, strconv.Itoa(int(p.Port))), p.Protocol))
		}
		for _, u := range w.Upstreams {
			ups = append(ups, fmt.Sprintf("%s -> %s", UpstreamName(w, u), net.JoinHostPort(w.LocalAddress, strconv.Itoa(int(u.LocalPort)))))
		}
		id := fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", mesh.TrustDomain, w.Namespace, w.ServiceAccount)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", w.Key(), id, dash(inbound), dash(app), "http://"+sc.Admin, dash(ups))
		if len(app) > 0 {
			if u := firstHTTPUpstream(snap, w); u != nil && len(tries) < 4 {
				verdict := ""
				svc := snap.Service(u.Namespace, u.Service)
				for _, e := range authz.Explain(snap, time.Now(), w.Identity(mesh.TrustDomain).String(), svc, svc.Port(u.Port), "GET", "/hello") {
					if e.Decision.Allowed {
						verdict = "allowed by " + e.Decision.Rule
					} else {
						verdict = "denied (403) by " + e.Decision.Rule
					}
					break
				}
				tries = append(tries, fmt.Sprintf("curl -s http://%s/call/%s/hello   # %s -> %s: %s",
					strings.TrimSuffix(app[0], "/http"), UpstreamName(w, *u), w.Name, u.Service, verdict))
			}
		}
	}
	tw.Flush()
	if len(tries) > 0 {
		fmt.Fprintln(out, "\nTry (each app calls its upstreams through its own sidecar):")
		for _, t := range tries {
			fmt.Fprintln(out, "  "+t)
		}
	}
	fmt.Fprintf(out, "\nWhy a call is allowed or denied: bulwark policy explain --mesh %s --from demo/other --to api\n", strings.Join(m.cfg.MeshPaths, " --mesh "))
	fmt.Fprintln(out, "\nEvery sidecar-to-sidecar call is mutual TLS; the answering app reports the caller's verified")
	fmt.Fprintln(out, "SPIFFE ID in \"caller\". Certificates come from the demo CA in", m.cfg.CADir)
	if m.cp != nil && m.cp.AdminAddr != "" {
		fmt.Fprintf(out, "Its trust lifecycle (rotate, revoke): bulwark ca status --socket %s\n", m.cp.AdminAddr)
	}
	fmt.Fprintf(out, "\nEnvoy logs (with access logs) and bootstraps are in %s\n", m.cfg.WorkDir)
	fmt.Fprintln(out, "Edit the mesh file and save: sidecars pick the change up without a restart. Ctrl-C stops everything.")
}

func firstHTTPUpstream(snap *model.Snapshot, w *model.Workload) *model.Upstream {
	for i, u := range w.Upstreams {
		if svc := snap.Service(u.Namespace, u.Service); svc != nil {
			if p := svc.Port(u.Port); p != nil && p.Protocol == model.ProtocolHTTP {
				return &w.Upstreams[i]
			}
		}
	}
	return nil
}

func dash(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ", ")
}
