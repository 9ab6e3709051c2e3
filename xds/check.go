package xds

import (
	"errors"
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// ErrInconsistent marks a proxy configuration whose resources refer to
// something that is not there. Such a configuration is never published:
// Envoy would reject it or, worse, accept it and fail traffic.
var ErrInconsistent = errors.New("inconsistent configuration")

// Check verifies the resources of one proxy before they are published:
// every resource passes Envoy's own field validation, names are unique,
// every route, TCP proxy and listener names a cluster or route
// configuration that exists, every EDS cluster has a load assignment, and
// every TLS context names only secrets in secrets (the names the proxy's
// SDS server provides). It reports every problem, each wrapping
// ErrInconsistent.
func Check(r *Resources, secrets []string) error {
	c := checker{secrets: map[string]bool{}, clusters: map[string]bool{}, routes: map[string]bool{}, cla: map[string]bool{}}
	for _, s := range secrets {
		c.secrets[s] = true
	}
	for _, x := range r.Clusters {
		c.unique("cluster", x.GetName(), c.clusters)
		c.valid("cluster", x.GetName(), x.ValidateAll())
	}
	for _, x := range r.Routes {
		c.unique("route configuration", x.GetName(), c.routes)
		c.valid("route configuration", x.GetName(), x.ValidateAll())
	}
	for _, x := range r.Endpoints {
		c.unique("load assignment", x.GetClusterName(), c.cla)
		c.valid("load assignment", x.GetClusterName(), x.ValidateAll())
	}
	listeners := map[string]bool{}
	for _, l := range r.Listeners {
		c.unique("listener", l.GetName(), listeners)
		c.valid("listener", l.GetName(), l.ValidateAll())
		if len(l.GetFilterChains()) == 0 && l.GetDefaultFilterChain() == nil {
			c.fail("listener %s has no filter chain (Envoy refuses it)", l.GetName())
		}
		for _, fc := range l.GetFilterChains() {
			c.transportSocket("listener "+l.GetName(), fc.GetTransportSocket())
			for _, f := range fc.GetFilters() {
				c.filter(l.GetName(), f.GetTypedConfig())
			}
		}
		if dfc := l.GetDefaultFilterChain(); dfc != nil {
			c.transportSocket("listener "+l.GetName(), dfc.GetTransportSocket())
			for _, f := range dfc.GetFilters() {
				c.filter(l.GetName(), f.GetTypedConfig())
			}
		}
	}
	for _, rc := range r.Routes {
		c.routeConfig(rc)
	}
	for _, cl := range r.Clusters {
		c.transportSocket("cluster "+cl.GetName(), cl.GetTransportSocket())
		if cl.GetType() == clusterv3.Cluster_EDS {
			svc := cl.GetEdsClusterConfig().GetServiceName()
			if svc == "" {
				svc = cl.GetName()
			}
			if !c.cla[svc] {
				c.fail("cluster %s: no load assignment %q (the cluster would never finish warming)", cl.GetName(), svc)
			}
		}
	}
	return errors.Join(c.errs...)
}

type checker struct {
	secrets, clusters, routes, cla map[string]bool
	errs                           []error
}

func (c *checker) fail(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf("%w: %s", ErrInconsistent, fmt.Sprintf(format, args...)))
}

func (c *checker) unique(kind, name string, seen map[string]bool) {
	if seen[name] {
		c.fail("%s %q is defined twice", kind, name)
	}
	seen[name] = true
}

func (c *checker) valid(kind, name string, err error) {
	if err != nil {
		c.fail("%s %s: %v", kind, name, err)
	}
}

func (c *checker) filter(listener string, cfg *anypb.Any) {
	if cfg == nil {
		return
	}
	msg, err := cfg.UnmarshalNew()
	if err != nil {
		c.fail("listener %s: filter config %s: %v", listener, cfg.GetTypeUrl(), err)
		return
	}
	switch f := msg.(type) {
	case *hcmv3.HttpConnectionManager:
		if rds := f.GetRds(); rds != nil && !c.routes[rds.GetRouteConfigName()] {
			c.fail("listener %s: route configuration %q does not exist", listener, rds.GetRouteConfigName())
		}
		if rc := f.GetRouteConfig(); rc != nil {
			c.routeConfig(rc)
		}
	case *tcpproxyv3.TcpProxy:
		if cl := f.GetCluster(); cl != "" && !c.clusters[cl] {
			c.fail("listener %s: tcp proxy to cluster %q, which does not exist", listener, cl)
		}
		for _, wc := range f.GetWeightedClusters().GetClusters() {
			if !c.clusters[wc.GetName()] {
				c.fail("listener %s: tcp proxy to cluster %q, which does not exist", listener, wc.GetName())
			}
		}
	}
}

func (c *checker) routeConfig(rc *routev3.RouteConfiguration) {
	for _, vh := range rc.GetVirtualHosts() {
		for _, rt := range vh.GetRoutes() {
			a := rt.GetRoute()
			if a == nil {
				continue
			}
			if cl := a.GetCluster(); cl != "" && !c.clusters[cl] {
				c.fail("route configuration %s: virtual host %s routes to cluster %q, which does not exist", rc.GetName(), vh.GetName(), cl)
			}
			for _, wc := range a.GetWeightedClusters().GetClusters() {
				if !c.clusters[wc.GetName()] {
					c.fail("route configuration %s: virtual host %s routes to cluster %q, which does not exist", rc.GetName(), vh.GetName(), wc.GetName())
				}
			}
		}
	}
}

// transportSocket checks the SDS secrets a TLS transport socket names.
func (c *checker) transportSocket(where string, ts *corev3.TransportSocket) {
	if ts == nil || ts.GetTypedConfig() == nil {
		return
	}
	msg, err := ts.GetTypedConfig().UnmarshalNew()
	if err != nil {
		c.fail("%s: transport socket: %v", where, err)
		return
	}
	var common *tlsv3.CommonTlsContext
	switch t := msg.(type) {
	case *tlsv3.DownstreamTlsContext:
		common = t.GetCommonTlsContext()
	case *tlsv3.UpstreamTlsContext:
		common = t.GetCommonTlsContext()
	default:
		return
	}
	var names []string
	for _, s := range common.GetTlsCertificateSdsSecretConfigs() {
		names = append(names, s.GetName())
	}
	if s := common.GetValidationContextSdsSecretConfig(); s != nil {
		names = append(names, s.GetName())
	}
	if cvc := common.GetCombinedValidationContext(); cvc != nil {
		names = append(names, cvc.GetValidationContextSdsSecretConfig().GetName())
	}
	for _, n := range names {
		if !c.secrets[n] {
			c.fail("%s: TLS context names secret %q, which the proxy's SDS server does not provide", where, n)
		}
	}
}
