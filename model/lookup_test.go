package model

import "testing"

func TestResolveService(t *testing.T) {
	store := NewStore()
	svc := func(ns, name string) *Service {
		return &Service{Namespace: ns, Name: name, Ports: []ServicePort{{Port: 80, TargetPort: 80, Protocol: ProtocolHTTP}}}
	}
	if _, err := store.ReplaceState(&State{Mesh: Mesh{TrustDomain: DefaultTrustDomain}, Services: []*Service{
		svc("prod", "api"), svc("prod", "web"), svc("stage", "web"),
	}}); err != nil {
		t.Fatal(err)
	}
	snap := store.Snapshot()
	for _, tc := range []struct {
		name, ref string
		want      string // the key found, or "" when an error is expected
		err       string
	}{
		{"namespace/name", "prod/web", "prod/web", ""},
		{"name.namespace", "web.stage", "stage/web", ""},
		{"a name one namespace has", "api", "prod/api", ""},
		{"a name several namespaces have", "web", "", `service "web" is in several namespaces; write namespace/web`},
		{"no such name", "db", "", `no service "db"`},
		{"no such namespace/name", "stage/api", "", "no service stage/api"},
		{"no such name.namespace", "api.stage", "", "no service api.stage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := snap.ResolveService(tc.ref)
			switch {
			case tc.err != "":
				if err == nil || err.Error() != tc.err {
					t.Errorf("ResolveService(%q) = %v, %v; want error %q", tc.ref, got, err, tc.err)
				}
			case err != nil:
				t.Errorf("ResolveService(%q): %v", tc.ref, err)
			case got.Key() != tc.want:
				t.Errorf("ResolveService(%q) = %s, want %s", tc.ref, got.Key(), tc.want)
			}
		})
	}
}
