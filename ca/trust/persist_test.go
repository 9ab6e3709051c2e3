package trust

import (
	"bytes"
	"crypto"
	"encoding/json"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/internal/pemutil"
)

// busyState has something in every part of a State: authorities in every
// phase (one revoked), revocations with leaves, imported CRLs (one
// rejected), a rotation in progress, events.
func busyState(t testing.TB) *State {
	t.Helper()
	s := newState(t)
	old := s.Active()
	chain := issue(t, s, "a", t0)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	p := prepared(t, s, "intermediate", at(0))
	must(Activate(s, p.ID, Evidence{}, at(0)))
	must(Remove(s, old.ID, Evidence{}, at(0)))
	rv := prepared(t, s, "intermediate", at(0))
	must(RevokeAuthority(s, rv.ID, "test", nil, at(0)))
	must(Revoke(s, Revocation{Kind: ByWorkload, Value: "default/a", Reason: "stolen", Leaves: []LeafInfo{leafInfo(s, chain)}}, at(0)))
	must(Revoke(s, Revocation{Kind: ByID, Value: "spiffe://example.org/ns/default/sa/b", Reason: "stolen"}, at(0)))
	must(Revoke(s, Revocation{Kind: BySerial, Value: "abc", Reason: "stolen"}, at(0)))
	must(ImportCRL(s, orgCRLOf(t, s.Active(), 0x99), at(0)))
	_ = ImportCRL(s, []byte("junk"), at(0))
	must(StartRotation(s, "root", Operation{Who: "op", Now: t0, Reason: "yearly"}))
	if _, err := Advance(s, Evidence{}, at(0), mint); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestMarshalRoundTrip(t *testing.T) {
	s := busyState(t)
	s.Revision = 7
	data, err := Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(data)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, again) {
		t.Error("Marshal(Unmarshal(d)) != d")
	}
	if got.Revision != 7 || got.Sequence != s.Sequence || got.TrustDomain != td || got.Rotation.Target != s.Rotation.Target || !got.Rotation.StartedAt.Equal(s.Rotation.StartedAt) ||
		len(got.Authorities) != 4 || len(got.Revocations) != 3 || len(got.ImportedCRLs) != 2 || len(got.Events) != len(s.Events) {
		t.Errorf("round trip lost something: %+v", got)
	}
	for i, a := range got.Authorities {
		b := s.Authorities[i]
		if a.ID != b.ID || a.Phase != b.Phase || !a.Root.Equal(b.Root) || !bytes.Equal(a.CRL, b.CRL) || a.Revoked != b.Revoked ||
			(a.RootKey == nil) != (b.RootKey == nil) || !publicKeysEqual(a.Key.Public(), b.Key.Public()) || !a.PreparedAt.Equal(b.PreparedAt) {
			t.Errorf("authority %d differs", i)
		}
	}
	b1, b2 := s.Bundle(), got.Bundle()
	if !slices.EqualFunc(b1.CRLs, b2.CRLs, bytes.Equal) || len(b1.Roots) != len(b2.Roots) || !b1.Signing.Equal(b2.Signing) {
		t.Error("the bundles differ")
	}
	if l, m := got.Revocations[0].Leaves[0], s.Revocations[0].Leaves[0]; l.Serial != m.Serial || l.Issuer != m.Issuer || !l.NotAfter.Equal(m.NotAfter) {
		t.Error("revocation leaves differ")
	}
}

// hsmKey is a signer whose key cannot be exported.
type hsmKey struct{ crypto.Signer }

func (k hsmKey) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	return k.Signer.Sign(r, d, o)
}

func TestMarshalNamesAKeyItCannotStore(t *testing.T) {
	s := newState(t)
	s.Active().Key = hsmKey{s.Active().Key}
	_, err := Marshal(s)
	wantErr(t, err, nil, "authority "+s.Active().ID, "key")
}

func TestUnmarshalNamesWhatIsWrong(t *testing.T) {
	s := busyState(t)
	good, err := Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _ := pemutil.EncodeKey(seedAuthority(t).Key)
	otherRootKey, _ := pemutil.EncodeKey(seedAuthority(t).RootKey)
	foreignCRL := seedAuthorityCRL(t)
	id0 := s.Authorities[0].ID
	for _, tc := range []struct {
		name string
		edit func(d map[string]any)
		says []string
	}{
		{name: "version", edit: func(d map[string]any) { d["version"] = 2 }, says: []string{"version: 2"}},
		{name: "trust domain", edit: func(d map[string]any) { d["trustDomain"] = "Not A Domain" }, says: []string{"trustDomain"}},
		{name: "sequence", edit: func(d map[string]any) { d["sequence"] = 0 }, says: []string{"sequence: 0"}},
		{name: "unknown field", edit: func(d map[string]any) { d["extra"] = 1 }, says: []string{"unknown field"}},
		{name: "key of another authority", edit: func(d map[string]any) { auth(d, 0)["key"] = string(otherKey) },
			says: []string{`authorities[0] (id "` + id0 + `")`, "key: does not belong"}},
		{name: "root key of another root", edit: func(d map[string]any) { auth(d, 1)["rootKey"] = string(otherRootKey) },
			says: []string{"authorities[1]", "root key: does not belong"}},
		{name: "key not PEM", edit: func(d map[string]any) { auth(d, 1)["key"] = "junk" }, says: []string{"authorities[1]", "key: no PEM block"}},
		{name: "chain not PEM", edit: func(d map[string]any) { auth(d, 2)["chain"] = "junk" }, says: []string{"authorities[2]", "chain: no PEM certificate"}},
		{name: "root missing", edit: func(d map[string]any) { delete(auth(d, 2), "root") }, says: []string{"authorities[2]", "root:"}},
		{name: "ID of another certificate", edit: func(d map[string]any) { auth(d, 0)["id"] = "0123456789ab" },
			says: []string{`authorities[0] (id "0123456789ab")`, "id: the signing certificate's is " + id0}},
		{name: "phase", edit: func(d map[string]any) { auth(d, 0)["phase"] = "dormant" }, says: []string{"authorities[0]", `phase: "dormant"`}},
		{name: "two active", edit: func(d map[string]any) { auth(d, 0)["phase"] = "active" }, says: []string{"2 are active"}},
		{name: "none active", edit: func(d map[string]any) { auth(d, 1)["phase"] = "retired" }, says: []string{"0 are active"}},
		{name: "duplicate", edit: func(d map[string]any) {
			d["authorities"] = append(d["authorities"].([]any), d["authorities"].([]any)[0])
		}, says: []string{"authorities[4]", "another authority has it"}},
		{name: "CRL of another authority", edit: func(d map[string]any) { auth(d, 1)["crl"] = foreignCRL }, says: []string{"authorities[1]", "crl: not signed"}},
		{name: "prepared after the sequence", edit: func(d map[string]any) { auth(d, 1)["preparedSeq"] = 1 << 40 }, says: []string{"authorities[1]", "preparedSeq"}},
		{name: "rotation of nobody", edit: func(d map[string]any) { d["rotation"].(map[string]any)["old"] = "ffffffffffff" }, says: []string{"rotation: old"}},
		{name: "rotation step", edit: func(d map[string]any) { d["rotation"].(map[string]any)["step"] = "dance" }, says: []string{`rotation: step: "dance"`}},
		{name: "rotation kind", edit: func(d map[string]any) { d["rotation"].(map[string]any)["kind"] = "all" }, says: []string{`rotation: kind: "all"`}},
		{name: "revocation value", edit: func(d map[string]any) { rev(d, 0)["value"] = "Not/Valid" }, says: []string{"revocations[0]", "namespace/name"}},
		{name: "revocation kind", edit: func(d map[string]any) { rev(d, 1)["kind"] = "all" }, says: []string{"revocations[1]", "kind"}},
		{name: "revocation leaf issuer", edit: func(d map[string]any) {
			rev(d, 0)["leaves"].([]any)[0].(map[string]any)["issuer"] = "ffffffffffff"
		}, says: []string{"revocations[0]", "leaves[0]: issuer"}},
		{name: "revocation serial", edit: func(d map[string]any) { rev(d, 2)["serials"] = []any{"XYZ"} }, says: []string{"revocations[2]", "serials[0]"}},
		{name: "imported CRL of nobody", edit: func(d map[string]any) {
			d["importedCRLs"].([]any)[0].(map[string]any)["authority"] = "ffffffffffff"
		}, says: []string{"importedCRLs[0]: authority"}},
		{name: "not JSON", edit: nil, says: []string{"trust: state"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte("{not json")
			if tc.edit != nil {
				var d map[string]any
				if err := json.Unmarshal(good, &d); err != nil {
					t.Fatal(err)
				}
				tc.edit(d)
				data, _ = json.Marshal(d)
			}
			s, err := Unmarshal(data)
			if s != nil {
				t.Error("a state came back with the error")
			}
			wantErr(t, err, nil, tc.says...)
		})
	}
}

func auth(d map[string]any, i int) map[string]any {
	return d["authorities"].([]any)[i].(map[string]any)
}
func rev(d map[string]any, i int) map[string]any { return d["revocations"].([]any)[i].(map[string]any) }

// seedAuthorityCRL is the DER CRL of an unrelated authority.
func seedAuthorityCRL(t testing.TB) []byte {
	return New(td, seedAuthority(t), at(0)).Active().CRL
}

func orgCRLOf(t testing.TB, a *Authority, serials ...int64) []byte {
	t.Helper()
	tt, ok := t.(*testing.T)
	if !ok {
		t.Fatal("orgCRLOf needs a *testing.T")
	}
	return orgCRL(tt, a, t0.Add(time.Hour), serials...)
}

func FuzzUnmarshal(f *testing.F) {
	s := newState(f)
	if err := Revoke(s, Revocation{Kind: ByWorkload, Value: "default/a", Reason: "x", Leaves: []LeafInfo{{Serial: "abc", NotAfter: t0}}}, at(0)); err != nil {
		f.Fatal(err)
	}
	if err := StartRotation(s, "intermediate", at(0)); err != nil {
		f.Fatal(err)
	}
	if _, err := Advance(s, Evidence{}, at(0), mint); err != nil {
		f.Fatal(err)
	}
	good, err := Marshal(s)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"version":1,"trustDomain":"example.org","sequence":1,"authorities":[]}`))
	f.Add([]byte(`{"version":1,"trustDomain":"example.org","sequence":1,"authorities":[{"id":"x","phase":"active","root":"","chain":"","key":""}]}`))
	f.Add(bytes.Replace(good, []byte(`"phase": "prepared"`), []byte(`"phase": "active"`), 1))
	f.Add([]byte(strings.Repeat("[", 10000)))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Unmarshal(data)
		if err != nil {
			if s != nil {
				t.Fatal("a state with an error")
			}
			return
		}
		// What Unmarshal accepts is a usable state: one active authority,
		// a bundle, and it stores again to the same state.
		if s.Active() == nil {
			t.Fatal("accepted a state with no active authority")
		}
		_ = s.Bundle()
		out, err := Marshal(s)
		if err != nil {
			t.Fatalf("accepted a state it cannot store: %v", err)
		}
		back, err := Unmarshal(out)
		if err != nil {
			t.Fatalf("its own output does not read back: %v", err)
		}
		if again, _ := Marshal(back); !bytes.Equal(out, again) {
			t.Fatal("not stable through a round trip")
		}
	})
}
