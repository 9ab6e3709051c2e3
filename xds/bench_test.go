package xds_test

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/bulwarkmesh/bulwark/authz"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
	"github.com/bulwarkmesh/bulwark/xds"
)

// benchMesh: n services with an address and two endpoints each, an ALLOW
// policy per service for the caller, and one transparent caller that may
// call them all.
func benchMesh(b *testing.B, n int) (*model.Snapshot, *model.Workload) {
	b.Helper()
	st := &model.State{Mesh: model.Mesh{TrustDomain: "cluster.local", Authorization: model.Authorization{Default: model.DefaultDeny}}}
	caller := &model.Workload{Namespace: "bench", Name: "caller", ServiceAccount: "caller", Address: "10.1.0.1",
		LocalAddress: "127.0.0.1", Capture: model.CaptureTransparent}
	st.Workloads = append(st.Workloads, caller)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("svc-%d", i)
		st.Services = append(st.Services, &model.Service{Namespace: "bench", Name: name, Address: fmt.Sprintf("10.96.%d.%d", i/250, i%250+1),
			Ports: []model.ServicePort{{Name: "http", Port: 8080, TargetPort: 8080, Protocol: model.ProtocolHTTP}}})
		for j := 0; j < 2; j++ {
			w := &model.Workload{Namespace: "bench", Name: fmt.Sprintf("%s-%d", name, j), ServiceAccount: name,
				Address: fmt.Sprintf("10.2.%d.%d", i/125, (i%125)*2+j+1), LocalAddress: "127.0.0.1", Services: []string{name}}
			st.Workloads = append(st.Workloads, w)
			st.Endpoints = append(st.Endpoints, &model.Endpoint{Namespace: "bench", Service: name, Address: w.Address, Ready: true,
				Workload: w.Name, Ports: []model.EndpointPort{{Name: "http", Port: 8080}}})
		}
		st.Access = append(st.Access, &model.AccessPolicy{Namespace: "bench", Name: name, Spec: model.AccessPolicySpec{
			Selector: model.AccessSelector{Service: name}, Action: model.ActionAllow,
			Rules: []model.AccessRule{{From: []model.Source{{ServiceAccounts: []string{"caller"}}}, To: []model.Operation{{Methods: []string{"GET"}, Paths: []string{"/v1/*"}}}}},
		}})
	}
	s := model.NewStore()
	if _, err := s.ReplaceState(st); err != nil {
		b.Fatal(err)
	}
	return s.Snapshot(), caller
}

// BenchmarkTranslate100 translates the caller's sidecar config in a mesh
// of 100 services (config scoping evaluates every service's policy).
func BenchmarkTranslate100(b *testing.B) {
	snap, caller := benchMesh(b, 100)
	now := time.Now()
	b.ResetTimer()
	for b.Loop() {
		if _, err := xds.Translate(snap, caller, xds.Options{Now: now, Authz: authz.NewIndex(snap, now)}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMarshal100Baseline marshals what BenchmarkTranslate100
// produces: the cost every xDS server pays to send it once.
func BenchmarkMarshal100Baseline(b *testing.B) {
	snap, caller := benchMesh(b, 100)
	r, err := xds.Translate(snap, caller, xds.Options{Now: time.Now()})
	if err != nil {
		b.Fatal(err)
	}
	var msgs []proto.Message
	for _, l := range r.Listeners {
		msgs = append(msgs, l)
	}
	for _, c := range r.Clusters {
		msgs = append(msgs, c)
	}
	for _, rc := range r.Routes {
		msgs = append(msgs, rc)
	}
	for _, e := range r.Endpoints {
		msgs = append(msgs, e)
	}
	b.ResetTimer()
	for b.Loop() {
		for _, m := range msgs {
			if _, err := proto.Marshal(m); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkCheck100 is the consistency check on the same resources.
func BenchmarkCheck100(b *testing.B) {
	snap, caller := benchMesh(b, 100)
	r, err := xds.Translate(snap, caller, xds.Options{Now: time.Now()})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if err := xds.Check(r, contract.Secrets()); err != nil {
			b.Fatal(err)
		}
	}
}
