package model

import (
	"regexp"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FuzzParseIdentity: any SPIFFE ID that parses as a workload identity
// must round-trip to exactly itself, so no two IDs map to one workload.
func FuzzParseIdentity(f *testing.F) {
	for _, s := range []string{"spiffe://cluster.local/ns/demo/sa/api", "spiffe://td/ns/a/sa/b/c", "spiffe://td/ns//sa/x", "spiffe://td/ns/a/sa/b.c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return
		}
		ns, sa, ok := ParseIdentity(id)
		if !ok {
			return
		}
		back, err := SPIFFEID(id.TrustDomain().Name(), ns, sa)
		if err != nil || back != id {
			t.Fatalf("%s parsed as ns=%q sa=%q, which is %v (%v)", s, ns, sa, back, err)
		}
	})
}

// FuzzParsePathPattern: a pattern that parses never contains what
// normalization removes from requests, so it can match something, and
// its regular expressions compile.
func FuzzParsePathPattern(f *testing.F) {
	for _, s := range []string{"/admin", "/v1/*", "/users/*/profile", "/a/**", "//x", "/a/../b", "/%2F", "/;x/a", "/adm\xe7\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePathPattern(s)
		if err != nil {
			return
		}
		if strings.Contains(p.Value, "//") || strings.ContainsAny(p.Value, "?#%") {
			t.Fatalf("%q accepted as %+v", s, p)
		}
		for _, params := range []bool{false, true} {
			for _, ignoreCase := range []bool{false, true} {
				if _, err := regexp.Compile(p.Regex(ignoreCase, params).Expr); err != nil {
					t.Fatalf("%q accepted, but its expression does not compile: %v", s, err)
				}
			}
		}
	})
}
