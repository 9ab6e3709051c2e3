package model

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

func TestMTLSExceptions(t *testing.T) {
	scrape := &Exception{Reason: "scraper without a sidecar", Owner: "team-obs", Expires: "2027-03-01"}
	migration := &Exception{Reason: "migration"}
	services := []*Service{
		{Namespace: "prod", Name: "web", Ports: []ServicePort{
			{Port: 80, TargetPort: 9090, Protocol: ProtocolHTTP},
			{Port: 81, TargetPort: 7070, Protocol: ProtocolHTTP},
		}},
		{Namespace: "prod", Name: "metrics", Ports: []ServicePort{{Port: 9100, TargetPort: 9100, Protocol: ProtocolTCP}}},
		{Namespace: "stage", Name: "web", Ports: []ServicePort{{Port: 8080, TargetPort: 8080, Protocol: ProtocolHTTP}}},
	}
	// Not sorted by key: the listing keeps this order.
	workloads := []*Workload{
		{Namespace: "prod", Name: "zeta-1", Services: []string{"metrics", "web"}},
		{Namespace: "prod", Name: "alpha-1", Services: []string{"web"}},
		{Namespace: "stage", Name: "web-1", Services: []string{"web"}},
	}
	portModes := &MTLSPolicy{Namespace: "prod", Name: "scrape", Spec: MTLSPolicySpec{
		PortModes: map[string]MTLSMode{"9100": MTLSDisable, "7070": MTLSPermissive}, Exception: scrape}}
	stage := &MTLSPolicy{Namespace: "stage", Name: "old", Spec: MTLSPolicySpec{Mode: MTLSPermissive, Exception: migration}}
	before := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	after := time.Date(2027, 3, 2, 0, 0, 0, 0, time.UTC)

	// Each exception as "workload port mode source expired".
	for _, tc := range []struct {
		name     string
		mesh     Mesh
		policies []*MTLSPolicy
		now      time.Time
		want     []string
	}{
		{"nothing set: none", Mesh{}, nil, before, nil},
		{"port modes and a namespace mode, in workload order then port order", Mesh{}, []*MTLSPolicy{portModes, stage}, before, []string{
			"prod/zeta-1 7070 PERMISSIVE MTLSPolicy prod/scrape false",
			"prod/zeta-1 9100 DISABLE MTLSPolicy prod/scrape false",
			"prod/alpha-1 7070 PERMISSIVE MTLSPolicy prod/scrape false",
			"stage/web-1 8080 PERMISSIVE MTLSPolicy stage/old false",
		}},
		{"an expired exception is listed as STRICT", Mesh{}, []*MTLSPolicy{portModes, stage}, after, []string{
			"prod/zeta-1 7070 STRICT MTLSPolicy prod/scrape true",
			"prod/zeta-1 9100 STRICT MTLSPolicy prod/scrape true",
			"prod/alpha-1 7070 STRICT MTLSPolicy prod/scrape true",
			"stage/web-1 8080 PERMISSIVE MTLSPolicy stage/old false",
		}},
		{"mesh-wide: every port", Mesh{MTLS: MeshMTLS{Mode: MTLSPermissive, Exception: migration}}, nil, before, []string{
			"prod/zeta-1 7070 PERMISSIVE mesh false",
			"prod/zeta-1 9090 PERMISSIVE mesh false",
			"prod/zeta-1 9100 PERMISSIVE mesh false",
			"prod/alpha-1 7070 PERMISSIVE mesh false",
			"prod/alpha-1 9090 PERMISSIVE mesh false",
			"stage/web-1 8080 PERMISSIVE mesh false",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &State{Mesh: tc.mesh, Services: services, Workloads: workloads, MTLS: tc.policies}
			var got []string
			for _, e := range MTLSExceptions(st, tc.now) {
				got = append(got, fmt.Sprintf("%s %d %s %s %v", e.Workload, e.Port, e.Decision.Mode, e.Decision.Source, e.Decision.Expired))
				if e.Decision.Exception == nil {
					t.Errorf("%s port %d: no exception attached", e.Workload, e.Port)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}
