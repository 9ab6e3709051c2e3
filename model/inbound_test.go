package model

import (
	"slices"
	"testing"
)

func TestInboundPorts(t *testing.T) {
	web := &Service{Namespace: "prod", Name: "web", Ports: []ServicePort{
		{Name: "http", Port: 80, TargetPort: 9090, Protocol: ProtocolHTTP},
		{Name: "admin", Port: 81, TargetPort: 7070, Protocol: ProtocolHTTP},
	}}
	metrics := &Service{Namespace: "prod", Name: "metrics", Ports: []ServicePort{
		{Name: "scrape", Port: 9100, TargetPort: 9100, Protocol: ProtocolTCP},
		{Name: "http", Port: 9090, TargetPort: 9090, Protocol: ProtocolHTTP},
	}}
	db := &Service{Namespace: "prod", Name: "db", Ports: []ServicePort{{Port: 5432, TargetPort: 5432, Protocol: ProtocolTCP}}}
	otherWeb := &Service{Namespace: "stage", Name: "web", Ports: []ServicePort{{Port: 8080, TargetPort: 8080, Protocol: ProtocolHTTP}}}
	all := []*Service{web, metrics, db, otherWeb}

	for _, tc := range []struct {
		name     string
		services []string
		want     []InboundPort
	}{
		{"backs no service", nil, nil},
		{"one port", []string{"db"}, []InboundPort{{5432, ProtocolTCP}}},
		{"in the order the service lists its ports, not sorted", []string{"web"},
			[]InboundPort{{9090, ProtocolHTTP}, {7070, ProtocolHTTP}}},
		{"a shared target port comes once, where it first appears", []string{"metrics", "web"},
			[]InboundPort{{9100, ProtocolTCP}, {9090, ProtocolHTTP}, {7070, ProtocolHTTP}}},
		{"in the order the workload lists its services", []string{"web", "metrics"},
			[]InboundPort{{9090, ProtocolHTTP}, {7070, ProtocolHTTP}, {9100, ProtocolTCP}}},
		{"an unknown service is skipped", []string{"gone", "db"}, []InboundPort{{5432, ProtocolTCP}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &Workload{Namespace: "prod", Name: "w-1", Address: "10.0.0.1", Services: tc.services}
			lookup := func(ns, name string) *Service {
				for _, s := range all {
					if s.Namespace == ns && s.Name == name {
						return s
					}
				}
				return nil
			}
			if got := w.InboundPorts(lookup); !slices.Equal(got, tc.want) {
				t.Errorf("Workload.InboundPorts = %v, want %v", got, tc.want)
			}

			store := NewStore()
			if _, err := store.ReplaceState(&State{Mesh: Mesh{TrustDomain: DefaultTrustDomain}, Services: all, Workloads: []*Workload{w}}); err != nil {
				t.Fatal(err)
			}
			if got := store.Snapshot().InboundPorts(w); !slices.Equal(got, tc.want) {
				t.Errorf("Snapshot.InboundPorts = %v, want %v", got, tc.want)
			}
		})
	}
}
