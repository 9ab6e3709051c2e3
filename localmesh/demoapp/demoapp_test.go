package demoapp

import "testing"

func TestCallerFromXFCC(t *testing.T) {
	const fe = "spiffe://cluster.local/ns/demo/sa/frontend"
	for _, tc := range []struct {
		name, xfcc, want string
	}{
		{"none", "", ""},
		{"what the sidecar sets", "By=spiffe://cluster.local/ns/demo/sa/api;Hash=ab;URI=" + fe, fe},
		{"quoted", `URI="` + fe + `"`, fe},
		{"only the immediate caller counts", "URI=" + fe + ",URI=spiffe://cluster.local/ns/demo/sa/other", fe},
		{"two URIs in one element name no one", "URI=spiffe://cluster.local/ns/demo/sa/other;URI=" + fe, ""},
		{"no URI", "By=spiffe://cluster.local/ns/demo/sa/api;Hash=ab", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := callerFromXFCC(tc.xfcc); got != tc.want {
				t.Errorf("callerFromXFCC(%q) = %q, want %q", tc.xfcc, got, tc.want)
			}
		})
	}
}
