package model

import (
	"testing"
	"time"
)

func TestResolveMTLS(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	reason := &Exception{Reason: "legacy scraper"}
	expired := &Exception{Reason: "migration", Expires: "2026-11-26"}
	lastDay := &Exception{Reason: "migration", Expires: "2026-11-27"}
	legacy := &Workload{Namespace: "prod", Name: "legacy-1", Labels: map[string]string{"app": "legacy"}}
	api := &Workload{Namespace: "prod", Name: "api-1", Labels: map[string]string{"app": "api"}}
	other := &Workload{Namespace: "dev", Name: "x"}
	nsPolicy := &MTLSPolicy{Namespace: "prod", Name: "ns", Spec: MTLSPolicySpec{Mode: MTLSPermissive, PortModes: map[string]MTLSMode{"9090": MTLSDisable}, Exception: reason}}
	wlPolicy := &MTLSPolicy{Namespace: "prod", Name: "legacy", Spec: MTLSPolicySpec{Selector: &Selector{MatchLabels: map[string]string{"app": "legacy"}}, Mode: MTLSStrict, PortModes: map[string]MTLSMode{"8080": MTLSPermissive}, Exception: reason}}
	portOnly := &MTLSPolicy{Namespace: "prod", Name: "port-only", Spec: MTLSPolicySpec{Selector: &Selector{MatchLabels: map[string]string{"app": "api"}}, PortModes: map[string]MTLSMode{"7070": MTLSDisable}, Exception: reason}}
	meshPermissive := Mesh{MTLS: MeshMTLS{Mode: MTLSPermissive, Exception: reason}}

	for _, tc := range []struct {
		name     string
		mesh     Mesh
		policies []*MTLSPolicy
		w        *Workload
		port     uint32
		want     MTLSMode
		source   string
		expired  bool
	}{
		{"nothing set: STRICT", Mesh{}, nil, api, 8080, MTLSStrict, "default", false},
		{"mesh-wide", meshPermissive, nil, api, 8080, MTLSPermissive, "mesh", false},
		{"namespace beats mesh", meshPermissive, []*MTLSPolicy{{Namespace: "prod", Name: "s", Spec: MTLSPolicySpec{Mode: MTLSStrict}}}, api, 8080, MTLSStrict, "MTLSPolicy prod/s", false},
		{"namespace port mode", Mesh{}, []*MTLSPolicy{nsPolicy}, api, 9090, MTLSDisable, "MTLSPolicy prod/ns", false},
		{"namespace general mode", Mesh{}, []*MTLSPolicy{nsPolicy}, api, 8080, MTLSPermissive, "MTLSPolicy prod/ns", false},
		{"workload policy beats namespace", Mesh{}, []*MTLSPolicy{nsPolicy, wlPolicy}, legacy, 9090, MTLSStrict, "MTLSPolicy prod/legacy", false},
		{"workload port mode", Mesh{}, []*MTLSPolicy{nsPolicy, wlPolicy}, legacy, 8080, MTLSPermissive, "MTLSPolicy prod/legacy", false},
		{"other namespace untouched", Mesh{}, []*MTLSPolicy{nsPolicy}, other, 9090, MTLSStrict, "default", false},
		{"selector does not match", Mesh{}, []*MTLSPolicy{wlPolicy}, api, 8080, MTLSStrict, "default", false},
		{"port-only policy falls through for other ports", Mesh{}, []*MTLSPolicy{portOnly, nsPolicy}, api, 8080, MTLSPermissive, "MTLSPolicy prod/ns", false},
		{"port-only policy decides its port", Mesh{}, []*MTLSPolicy{portOnly, nsPolicy}, api, 7070, MTLSDisable, "MTLSPolicy prod/port-only", false},
		{"expired exception: STRICT", Mesh{MTLS: MeshMTLS{Mode: MTLSDisable, Exception: expired}}, nil, api, 8080, MTLSStrict, "mesh", true},
		{"exception holds through its last day", Mesh{MTLS: MeshMTLS{Mode: MTLSDisable, Exception: lastDay}}, nil, api, 8080, MTLSDisable, "mesh", false},
		{"no exception at all: STRICT", Mesh{MTLS: MeshMTLS{Mode: MTLSDisable}}, nil, api, 8080, MTLSStrict, "mesh", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := ResolveMTLS(tc.mesh, tc.policies, tc.w, tc.port, now)
			if d.Mode != tc.want || d.Source != tc.source || d.Expired != tc.expired {
				t.Errorf("got %s from %q (expired %v), want %s from %q (expired %v)", d.Mode, d.Source, d.Expired, tc.want, tc.source, tc.expired)
			}
		})
	}
}

func TestNextExpiry(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	policies := []*MTLSPolicy{
		{Spec: MTLSPolicySpec{Exception: &Exception{Reason: "a", Expires: "2027-01-10"}}},
		{Spec: MTLSPolicySpec{Exception: &Exception{Reason: "b", Expires: "2026-12-01"}}},
		{Spec: MTLSPolicySpec{Exception: &Exception{Reason: "c", Expires: "2026-11-01"}}},
	}
	got := NextExpiry(Mesh{}, policies, now)
	if want := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC); !got.Equal(want) {
		t.Errorf("NextExpiry = %s, want %s", got, want)
	}
}
