package xds_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	xdsmatcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	earlymutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/source/meshfile"
	"github.com/bulwarkmesh/bulwark/xds"
)

// TestEveryListenerIsAnEdge holds, for every workload of every mesh in
// testdata/in, what the golden files show for some: every HTTP connection
// manager strips x-envoy-* headers first, takes no address for internal,
// uses the connection's peer and logs the normalized :path; every mutual
// TLS chain refuses a peer with more than one URI SAN before anything
// else looks at it. (The end-to-end tests show Envoy doing it.)
func TestEveryListenerIsAnEdge(t *testing.T) {
	inputs, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no inputs in testdata/in: %v", err)
	}
	hcms, mtlsChains := 0, 0
	for _, in := range inputs {
		st, err := meshfile.Load(context.Background(), []string{in})
		if err != nil {
			t.Fatalf("load %s: %v", in, err)
		}
		store := model.NewStore()
		if _, err := store.ReplaceState(st); err != nil {
			t.Fatal(err)
		}
		snap := store.Snapshot()
		for _, w := range snap.Workloads() {
			r, err := xds.Translate(snap, w, xds.Options{Now: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)})
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range r.Listeners {
				chains := l.GetFilterChains()
				if l.GetDefaultFilterChain() != nil {
					chains = append(chains, l.GetDefaultFilterChain())
				}
				for _, fc := range chains {
					where := in + " " + w.Key() + " " + l.GetName() + " chain " + fc.GetName()
					mtls := isMutualTLS(t, fc)
					if mtls {
						mtlsChains++
						checkOneURISANNetwork(t, where, fc.GetFilters())
					}
					for _, f := range fc.GetFilters() {
						var hcm hcmv3.HttpConnectionManager
						if !unmarshalIf(t, f.GetTypedConfig(), &hcm) {
							continue
						}
						hcms++
						checkEdge(t, where, &hcm)
						if mtls {
							checkOneURISANHTTP(t, where, hcm.GetHttpFilters())
						}
					}
				}
			}
		}
	}
	if hcms == 0 || mtlsChains == 0 {
		t.Fatalf("checked %d connection managers and %d mutual TLS chains; the inputs lost their coverage", hcms, mtlsChains)
	}
}

func unmarshalIf(t *testing.T, a *anypb.Any, m proto.Message) bool {
	t.Helper()
	if a == nil || !a.MessageIs(m) {
		return false
	}
	if err := a.UnmarshalTo(m); err != nil {
		t.Fatal(err)
	}
	return true
}

func isMutualTLS(t *testing.T, fc *listenerv3.FilterChain) bool {
	var tls tlsv3.DownstreamTlsContext
	return unmarshalIf(t, fc.GetTransportSocket().GetTypedConfig(), &tls) && tls.GetRequireClientCertificate().GetValue()
}

func checkEdge(t *testing.T, where string, hcm *hcmv3.HttpConnectionManager) {
	t.Helper()
	if !hcm.GetUseRemoteAddress().GetValue() || hcm.GetXffNumTrustedHops() != 0 {
		t.Errorf("%s: the downstream address is not the connection's peer", where)
	}
	if iac := hcm.GetInternalAddressConfig(); iac == nil || len(iac.GetCidrRanges()) != 0 || iac.GetUnixSockets() {
		t.Errorf("%s: internal addresses %v, want none, explicitly", where, iac)
	}
	if hcm.GetPreserveExternalRequestId() || (hcm.GetGenerateRequestId() != nil && !hcm.GetGenerateRequestId().GetValue()) {
		t.Errorf("%s: x-request-id is not generated at the edge", where)
	}
	ems := hcm.GetEarlyHeaderMutationExtensions()
	var hm earlymutationv3.HeaderMutation
	if len(ems) != 1 || !unmarshalIf(t, ems[0].GetTypedConfig(), &hm) || len(hm.GetMutations()) != 1 ||
		hm.GetMutations()[0].GetRemoveOnMatch().GetKeyMatcher().GetPrefix() != "x-envoy-" {
		t.Errorf("%s: x-envoy-* headers are not removed first: %v", where, ems)
	}
	for _, al := range hcm.GetAccessLog() {
		var out streamv3.StdoutAccessLog
		if !unmarshalIf(t, al.GetTypedConfig(), &out) {
			t.Errorf("%s: access log %s", where, al.GetName())
			continue
		}
		if p := out.GetLogFormat().GetJsonFormat().GetFields()["path"].GetStringValue(); p != "%REQ(:PATH)%" {
			t.Errorf("%s: logs path as %q, want the normalized :path", where, p)
		}
	}
}

func checkOneURISANHTTP(t *testing.T, where string, fs []*hcmv3.HttpFilter) {
	t.Helper()
	var rbac rbachttpv3.RBAC
	if len(fs) == 0 || !unmarshalIf(t, fs[0].GetTypedConfig(), &rbac) || !refusesTwoURISANs(t, rbac.GetMatcher()) {
		t.Errorf("%s: the first HTTP filter does not apply %s", where, xds.OneURISANRule)
	}
}

func checkOneURISANNetwork(t *testing.T, where string, fs []*listenerv3.Filter) {
	t.Helper()
	var hcm hcmv3.HttpConnectionManager
	if len(fs) > 0 && unmarshalIf(t, fs[0].GetTypedConfig(), &hcm) {
		return // HTTP: the connection manager's first filter does it
	}
	var rbac rbacnetv3.RBAC
	if len(fs) == 0 || !unmarshalIf(t, fs[0].GetTypedConfig(), &rbac) || !refusesTwoURISANs(t, rbac.GetMatcher()) {
		t.Errorf("%s: the first network filter does not apply %s", where, xds.OneURISANRule)
	}
}

// refusesTwoURISANs recognizes the matcher of OneURISANRule: one
// predicate on the URI SAN input that allows, and DENY otherwise, both
// under the rule's name.
func refusesTwoURISANs(t *testing.T, m *xdsmatcherv3.Matcher) bool {
	t.Helper()
	verdict := func(om *xdsmatcherv3.Matcher_OnMatch) (rbacv3.RBAC_Action, bool) {
		var a rbacv3.Action
		if !unmarshalIf(t, om.GetAction().GetTypedConfig(), &a) || a.GetName() != xds.OneURISANRule {
			return 0, false
		}
		return a.GetAction(), true
	}
	fms := m.GetMatcherList().GetMatchers()
	if len(fms) != 1 || fms[0].GetPredicate().GetSinglePredicate().GetInput().GetName() != "envoy.matching.inputs.uri_san" {
		return false
	}
	allow, ok1 := verdict(fms[0].GetOnMatch())
	deny, ok2 := verdict(m.GetOnNoMatch())
	return ok1 && ok2 && allow == rbacv3.RBAC_ALLOW && deny == rbacv3.RBAC_DENY
}
