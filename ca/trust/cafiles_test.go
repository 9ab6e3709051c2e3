package trust

import (
	"bytes"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
)

// The files of a CA read as a State and written back are the same files;
// what the State cannot keep is refused, never dropped.
func TestCAFilesRoundTrip(t *testing.T) {
	s := newState(t)
	files, err := CAFiles(s)
	if err != nil {
		t.Fatal(err)
	}
	if files[ca.ChainFile] != nil || files[ca.RootKeyFile] == nil {
		t.Fatalf("a root and one intermediate: chain file %q, root key held %v", files[ca.ChainFile], files[ca.RootKeyFile] != nil)
	}
	back, err := FromCAFiles("test", files, spiffeid.TrustDomain{}, "legacy", t0)
	if err != nil {
		t.Fatal(err)
	}
	a := back.Active()
	if back.TrustDomain != td || back.Sequence != 1 || back.Revision != 0 || a == nil || a.ID != s.Active().ID || a.Origin != "legacy" || a.RootKey == nil {
		t.Fatalf("read back: %+v", back)
	}
	again, err := CAFiles(back)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if !bytes.Equal(again[name], data) {
			t.Errorf("%s changed on the round trip", name)
		}
	}

	// A prepared authority's root joins the roots file; the signing files
	// stay the active one's.
	next := prepared(t, s, "root", at(1))
	files, _ = CAFiles(s)
	roots, _ := pemutil.ParseCerts(files[ca.RootCertFile])
	if len(roots) != 2 || !roots[1].Equal(next.Root) {
		t.Errorf("roots file: %d roots, want the active's and the prepared one's", len(roots))
	}

	for _, tc := range []struct {
		name   string
		change func(map[string][]byte)
		want   error
		says   string
	}{
		{"nothing", func(f map[string][]byte) { clear(f) }, ca.ErrNoCA, ""},
		{"no key", func(f map[string][]byte) { delete(f, ca.KeyFile) }, ca.ErrInvalidCA, "missing " + ca.KeyFile},
		{"two roots", func(f map[string][]byte) {
			f[ca.RootCertFile] = append(f[ca.RootCertFile], pemutil.EncodeCerts(roots[1:])...)
		}, ca.ErrInvalidCA, "holds 2 roots"},
		{"another trust domain", nil, ErrInvalid, "not other.org"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, _ := CAFiles(back)
			want := td
			if tc.change != nil {
				tc.change(f)
			} else {
				want = spiffeid.RequireTrustDomainFromString("other.org")
			}
			_, err := FromCAFiles("test", f, want, "legacy", t0)
			if tc.says == "" {
				wantErr(t, err, tc.want)
			} else {
				wantErr(t, err, tc.want, tc.says)
			}
		})
	}
}
