package trust

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestRevokeValidatesWhatItNames(t *testing.T) {
	for _, tc := range []struct {
		name   string
		r      Revocation
		value  string // normalised, when accepted
		reject string
	}{
		{name: "serial as openssl prints it", r: Revocation{Kind: BySerial, Value: "3F:2A:00:01", Reason: "lost"}, value: "3f2a0001"},
		{name: "serial with 0x and leading zeros", r: Revocation{Kind: BySerial, Value: "0x00ff", Reason: "lost"}, value: "ff"},
		{name: "serial of 40 digits", r: Revocation{Kind: BySerial, Value: strings.Repeat("f", 40), Reason: "lost"}, value: strings.Repeat("f", 40)},
		{name: "serial of 41 digits", r: Revocation{Kind: BySerial, Value: strings.Repeat("f", 41), Reason: "lost"}, reject: "40 hex digits"},
		{name: "serial not hex", r: Revocation{Kind: BySerial, Value: "xyz", Reason: "lost"}, reject: "not hex"},
		{name: "serial zero", r: Revocation{Kind: BySerial, Value: "00", Reason: "lost"}, reject: "zero"},
		{name: "workload", r: Revocation{Kind: ByWorkload, Value: "default/api", Reason: "lost"}, value: "default/api"},
		{name: "workload without namespace", r: Revocation{Kind: ByWorkload, Value: "api", Reason: "lost"}, reject: "namespace/name"},
		{name: "workload not a name", r: Revocation{Kind: ByWorkload, Value: "default/Api_1", Reason: "lost"}, reject: "namespace/name"},
		{name: "id", r: Revocation{Kind: ByID, Value: "spiffe://example.org/ns/default/sa/api", Reason: "lost"}, value: "spiffe://example.org/ns/default/sa/api"},
		{name: "id of another trust domain", r: Revocation{Kind: ByID, Value: "spiffe://other.org/ns/a", Reason: "lost"}, reject: "not in trust domain"},
		{name: "id of the trust domain", r: Revocation{Kind: ByID, Value: "spiffe://example.org", Reason: "lost"}, reject: "names the trust domain"},
		{name: "id not an id", r: Revocation{Kind: ByID, Value: "https://example.org/a", Reason: "lost"}, reject: "id"},
		{name: "no reason", r: Revocation{Kind: ByWorkload, Value: "default/api", Reason: "  "}, reject: "reason is required"},
		{name: "long reason", r: Revocation{Kind: ByWorkload, Value: "default/api", Reason: strings.Repeat("r", 257)}, reject: "257 bytes"},
		{name: "unknown kind", r: Revocation{Kind: "everything", Value: "x", Reason: "lost"}, reject: "kind"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newState(t)
			seq := s.Sequence
			err := Revoke(s, tc.r, at(0))
			if tc.reject != "" {
				wantErr(t, err, ErrInvalid, tc.reject)
				if s.Sequence != seq || len(s.Revocations) != 0 {
					t.Error("a refused revocation changed the state")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r := s.Revocations[0]
			if r.Value != tc.value || r.By != "tester" || !r.At.Equal(t0) || r.Reason != "lost" || s.Sequence != seq+1 {
				t.Errorf("entry %+v (sequence %d)", r, s.Sequence)
			}
			if e := lastEvent(s); e.Action != "revoke" || !strings.Contains(e.Detail, tc.value) {
				t.Errorf("event %+v", e)
			}
			wantErr(t, Revoke(s, tc.r, at(0)), ErrIllegal, "revoked already")
		})
	}
}

func TestRevokedLeavesAreRefusedByTheirIssuersCRL(t *testing.T) {
	s := newState(t)
	act := s.Active()
	other := prepared(t, s, "intermediate", at(0))
	m := newMesh(t, s, "bad", "good")
	bad := m.nodes[0].chain
	if err := Revoke(s, Revocation{Kind: ByWorkload, Value: "default/bad", Reason: "stolen key"}, at(time.Minute)); err != nil {
		t.Fatal(err)
	}
	// The entry alone names no certificate: the CRLs are empty until a
	// replica learns the workload's serials.
	for n, err := range m.accepted(s) {
		if err != nil {
			t.Errorf("%s before its serial is known: %v", n, err)
		}
	}
	if !AddSerials(s, ByWorkload, "default/bad", []LeafInfo{leafInfo(s, bad)}, at(2*time.Minute)) {
		t.Fatal("AddSerials added nothing")
	}
	if AddSerials(s, ByWorkload, "default/bad", []LeafInfo{leafInfo(s, bad)}, at(2*time.Minute)) {
		t.Error("AddSerials added the same leaf twice")
	}
	if AddSerials(s, ByWorkload, "default/none", []LeafInfo{leafInfo(s, bad)}, at(2*time.Minute)) {
		t.Error("AddSerials added to an entry that does not exist")
	}
	acc := m.accepted(s)
	if !errors.Is(acc["bad"], errRevoked) || acc["good"] != nil {
		t.Errorf("after revoking: %v", acc)
	}
	sn := serialHex(bad[0].SerialNumber)
	got, number := crlSerials(t, s.Get(act.ID))
	if !slices.Equal(got, []string{sn}) || number != s.Sequence {
		t.Errorf("the issuer's CRL lists %v (number %d), want %s (number %d)", got, number, sn, s.Sequence)
	}
	if got, _ := crlSerials(t, s.Get(other.ID)); len(got) != 0 {
		t.Errorf("another authority's CRL lists %v", got)
	}
	r, ok := s.Revoked(strings.ToUpper(sn), spiffeid.ID{}, "")
	if !ok || r.Value != "default/bad" {
		t.Error("Revoked does not find the serial")
	}
	if _, ok := s.Revoked("", spiffeid.ID{}, "default/bad"); !ok {
		t.Error("Revoked does not find the workload")
	}
	if _, ok := s.Revoked(serialHex(m.nodes[1].chain[0].SerialNumber), spiffeid.RequireFromPath(td, "/ns/default/sa/good"), "default/good"); ok {
		t.Error("Revoked finds a workload that is not revoked")
	}
	// A workload entry lasts as long as a certificate issued just before
	// it, or as its known certificates, whichever is later.
	if want := t0.Add(time.Minute + MaxLeafLifetime); !s.Revocations[0].Expires.Equal(want) {
		t.Errorf("expires %s, want %s", s.Revocations[0].Expires, want)
	}

	if err := Unrevoke(s, ByWorkload, "default/bad", at(3*time.Minute)); err != nil {
		t.Fatal(err)
	}
	for n, err := range m.accepted(s) {
		if err != nil {
			t.Errorf("%s after unrevoke: %v", n, err)
		}
	}
	wantErr(t, Unrevoke(s, ByWorkload, "default/bad", at(3*time.Minute)), ErrInvalid, "not revoked")
}

func TestASerialOfUnknownIssuerIsOnEveryCRL(t *testing.T) {
	s := newState(t)
	p := prepared(t, s, "root", at(0))
	removed := prepared(t, s, "intermediate", at(0))
	if err := Remove(s, removed.ID, Evidence{}, at(0)); err != nil {
		t.Fatal(err)
	}
	if err := Revoke(s, Revocation{Kind: BySerial, Value: "ABCDEF", Reason: "lost"}, at(0)); err != nil {
		t.Fatal(err)
	}
	for _, a := range []*Authority{s.Active(), s.Get(p.ID)} {
		if got, _ := crlSerials(t, a); !slices.Equal(got, []string{"abcdef"}) {
			t.Errorf("%s lists %v", a.ID, got)
		}
	}
	if len(s.Get(removed.ID).CRL) != 0 {
		t.Error("a removed authority has a CRL")
	}
	// Its expiry is unknown: it lasts as long as a leaf can.
	if want := t0.Add(MaxLeafLifetime); !s.Revocations[0].Expires.Equal(want) {
		t.Errorf("expires %s, want %s", s.Revocations[0].Expires, want)
	}
	// Once its certificate is known, only its issuer lists it, until the
	// certificate expires.
	notAfter := t0.Add(3 * time.Hour)
	if !AddSerials(s, BySerial, "abcdef", []LeafInfo{{Serial: "abcdef", Issuer: p.ID, NotAfter: notAfter}}, at(0)) {
		t.Fatal("nothing added")
	}
	if got, _ := crlSerials(t, s.Active()); len(got) != 0 {
		t.Errorf("the other authority still lists %v", got)
	}
	if !s.Revocations[0].Expires.Equal(notAfter) {
		t.Errorf("expires %s, want the certificate's %s", s.Revocations[0].Expires, notAfter)
	}
}

func TestPruneDropsWhatExpired(t *testing.T) {
	s := newState(t)
	m := newMesh(t, s, "a", "b")
	if err := Revoke(s, Revocation{Kind: ByWorkload, Value: "default/a", Reason: "lost",
		Leaves: []LeafInfo{leafInfo(s, m.nodes[0].chain), {Serial: "1234", Issuer: s.Active().ID, NotAfter: t0.Add(time.Hour)}}}, at(0)); err != nil {
		t.Fatal(err)
	}
	if err := Revoke(s, Revocation{Kind: BySerial, Value: "77", Reason: "lost"}, at(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if Prune(s, t0.Add(30*time.Minute)) {
		t.Error("pruned before anything expired")
	}
	seq := s.Sequence
	// At 2h: the 1h leaf of the workload entry has expired, the entry has
	// not.
	if !Prune(s, t0.Add(2*time.Hour)) || s.Sequence != seq+1 {
		t.Fatal("the expired leaf was not pruned")
	}
	if got, _ := crlSerials(t, s.Active()); slices.Contains(got, "1234") || len(got) != 2 {
		t.Errorf("CRL after pruning a leaf: %v", got)
	}
	if len(s.Revocations) != 2 || slices.Contains(s.Revocations[0].Serials, "1234") {
		t.Errorf("revocations %+v", s.Revocations)
	}
	// At 24h + 1s the workload entry (made at t0) is gone; the serial
	// entry (made at 1h) stays.
	if !Prune(s, t0.Add(MaxLeafLifetime+time.Second)) {
		t.Fatal("nothing pruned")
	}
	if len(s.Revocations) != 1 || s.Revocations[0].Value != "77" {
		t.Errorf("revocations %+v", s.Revocations)
	}
	if got, _ := crlSerials(t, s.Active()); !slices.Equal(got, []string{"77"}) {
		t.Errorf("CRL %v", got)
	}
	if e := lastEvent(s); e.Action != "prune" {
		t.Errorf("event %+v", e)
	}
}

func TestRevokeAnAuthority(t *testing.T) {
	t.Run("retired: its leaves are refused though its root is trusted", func(t *testing.T) {
		s := newState(t)
		old := s.Active()
		m := newMesh(t, s, "a")
		p := prepared(t, s, "intermediate", at(0))
		if err := Activate(s, p.ID, Evidence{}, at(0)); err != nil {
			t.Fatal(err)
		}
		if err := RevokeAuthority(s, old.ID[:6], "key leaked", nil, at(time.Minute)); err != nil {
			t.Fatal(err)
		}
		a := s.Get(old.ID)
		if !a.Revoked || a.Phase != Retired || a.RevokedReason != "key leaked" || !a.RevokedAt.Equal(t0.Add(time.Minute)) || len(a.CRL) != 0 {
			t.Fatalf("authority %+v", a)
		}
		b := s.Bundle()
		if len(b.Roots) != 1 || len(b.CRLs) != 1 {
			t.Errorf("bundle: %d roots, %d CRLs", len(b.Roots), len(b.CRLs))
		}
		if err := envoyVerify(b, m.nodes[0].chain, t0.Add(time.Hour)); !errors.Is(err, errNoCRL) {
			t.Errorf("a leaf of the revoked authority: %v", err)
		}
		wantErr(t, RevokeAuthority(s, old.ID, "again", nil, at(0)), ErrIllegal, "revoked already")
		// Unrevoking its signing certificate's serial brings its CRL back.
		if err := Unrevoke(s, BySerial, serialHex(a.Signing().SerialNumber), at(2*time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := envoyVerify(s.Bundle(), m.nodes[0].chain, t0.Add(time.Hour)); err != nil {
			t.Errorf("after unrevoke: %v", err)
		}
	})
	t.Run("active with a prepared successor: it takes over, forced", func(t *testing.T) {
		s := newState(t)
		old := s.Active()
		p := prepared(t, s, "root", at(0))
		if err := Revoke(s, Revocation{Kind: BySerial, Value: serialHex(old.Signing().SerialNumber), Reason: "key leaked"}, at(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if s.Active().ID != p.ID || !s.Get(old.ID).Revoked || s.Get(old.ID).Phase != Retired {
			t.Fatal("the successor did not take over")
		}
		if len(s.Revocations) != 0 {
			t.Error("revoking an authority added a leaf revocation")
		}
		var forced bool
		for _, e := range s.Events {
			forced = forced || (e.Forced && e.Action == "activate" && e.Authority == p.ID)
		}
		if !forced {
			t.Error("the emergency activation is not recorded as forced")
		}
	})
	t.Run("active, no successor, root key held: a new intermediate", func(t *testing.T) {
		s := newState(t)
		old := s.Active()
		if err := RevokeAuthority(s, old.ID, "key leaked", mint, at(time.Minute)); err != nil {
			t.Fatal(err)
		}
		act := s.Active()
		if act.ID == old.ID || !act.Root.Equal(old.Root) || act.Origin != "minted" {
			t.Fatalf("active %+v", act)
		}
		if len(s.Bundle().CRLs) != 1 || authorityID(s.Bundle().Signing) != act.ID {
			t.Error("bundle")
		}
	})
	t.Run("active, no successor, no root key: refused", func(t *testing.T) {
		s := newState(t)
		s.Active().RootKey = nil
		seq := s.Sequence
		wantErr(t, RevokeAuthority(s, s.Active().ID, "key leaked", mint, at(0)), ErrIllegal, "hand in")
		if s.Sequence != seq || s.Active().Revoked {
			t.Error("a refused revocation changed the state")
		}
	})
	t.Run("a root's serial: rotate the root instead", func(t *testing.T) {
		s := newState(t)
		wantErr(t, Revoke(s, Revocation{Kind: BySerial, Value: serialHex(s.Active().Root.SerialNumber), Reason: "x"}, at(0)), ErrIllegal, "rotate")
	})
}

// orgCRL is a CRL an organisation's PKI signs with a's key.
func orgCRL(t *testing.T, a *Authority, next time.Time, serials ...int64) []byte {
	t.Helper()
	tmpl := &x509.RevocationList{Number: big.NewInt(7), ThisUpdate: t0.Add(-time.Hour), NextUpdate: next}
	for _, sn := range serials {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: big.NewInt(sn), RevocationTime: t0})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, a.Signing(), a.Key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestImportCRL(t *testing.T) {
	s := newState(t)
	act := s.Active()
	if err := ImportCRL(s, orgCRL(t, act, t0.Add(time.Hour), 0x51, 0x52), at(0)); err != nil {
		t.Fatal(err)
	}
	if got, _ := crlSerials(t, s.Active()); !slices.Equal(got, []string{"51", "52"}) {
		t.Errorf("CRL %v", got)
	}
	// A newer CRL of the same authority replaces the older.
	if err := ImportCRL(s, orgCRL(t, act, t0.Add(time.Hour), 0x53), at(0)); err != nil {
		t.Fatal(err)
	}
	if got, _ := crlSerials(t, s.Active()); !slices.Equal(got, []string{"53"}) || len(s.ImportedCRLs) != 1 || s.ImportedCRLs[0].Authority != act.ID {
		t.Errorf("CRL %v, imported %d", got, len(s.ImportedCRLs))
	}

	foreign := newState(t).Active()
	for _, tc := range []struct {
		name string
		der  []byte
		says string
	}{
		{name: "foreign", der: orgCRL(t, foreign, t0.Add(time.Hour), 1), says: "signed by none of the authorities"},
		{name: "garbage", der: []byte("not a CRL"), says: "does not parse"},
		{name: "empty", der: nil, says: "does not parse"},
		{name: "expired", der: orgCRL(t, act, t0.Add(-time.Minute), 1), says: "expired"},
		{name: "too large", der: make([]byte, MaxImportedCRLBytes+1), says: "more than the 1048576 accepted"},
		{name: "bad signature", der: func() []byte {
			der := orgCRL(t, act, t0.Add(time.Hour), 1)
			der[len(der)-5] ^= 0xff
			return der
		}(), says: "names authority " + act.ID + " as its issuer, but its signature does not verify"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.Bundle()
			n := len(s.ImportedCRLs)
			err := ImportCRL(s, tc.der, at(0))
			wantErr(t, err, ErrCRLRejected, tc.says, "changes nothing")
			after := s.Bundle()
			if after.Sequence != before.Sequence || !slices.EqualFunc(after.CRLs, before.CRLs, bytes.Equal) {
				t.Error("a rejected CRL changed the bundle")
			}
			if len(s.ImportedCRLs) != n+1 || s.ImportedCRLs[n].Problem == "" {
				t.Error("the rejected CRL is not kept for status")
			}
			if e := lastEvent(s); e.Action != "import-crl" || !strings.Contains(e.Detail, "rejected") {
				t.Errorf("event %+v", e)
			}
		})
	}
	// It blocks nothing: a rotation goes through, and state saves.
	if err := StartRotation(s, "intermediate", at(0)); err != nil {
		t.Fatal(err)
	}
	for s.Rotation != nil {
		if _, err := Advance(s, Evidence{}, at(time.Minute), mint); err != nil {
			t.Fatal(err)
		}
	}
	roundTrip(t, s)
	// Rejected CRLs kept are bounded.
	for range 3 * maxRejectedCRLs {
		_ = ImportCRL(s, []byte("junk"), at(0))
	}
	rejected := 0
	for _, c := range s.ImportedCRLs {
		if c.Problem != "" {
			rejected++
		}
	}
	if rejected != maxRejectedCRLs {
		t.Errorf("%d rejected CRLs kept", rejected)
	}
	if err := ClearCRL(s, "", at(0)); err != nil {
		t.Fatal(err)
	}
	for _, c := range s.ImportedCRLs {
		if c.Authority == "" {
			t.Error("ClearCRL left a rejected CRL without an authority")
		}
	}
}

func TestClearCRL(t *testing.T) {
	s := newState(t)
	act := s.Active()
	if err := ImportCRL(s, orgCRL(t, act, t0.Add(time.Hour), 0x51), at(0)); err != nil {
		t.Fatal(err)
	}
	if err := ClearCRL(s, act.ID[:5], at(0)); err != nil {
		t.Fatal(err)
	}
	if got, _ := crlSerials(t, s.Active()); len(got) != 0 || len(s.ImportedCRLs) != 0 {
		t.Errorf("after clearing: CRL %v, imported %d", got, len(s.ImportedCRLs))
	}
	wantErr(t, ClearCRL(s, act.ID, at(0)), ErrNotFound, "no imported CRL")
}

func TestEveryAuthorityInTheBundlePublishesACRL(t *testing.T) {
	s := newState(t)
	p := prepared(t, s, "root", at(0))
	gone := prepared(t, s, "intermediate", at(0))
	if err := Remove(s, gone.ID, Evidence{}, at(0)); err != nil {
		t.Fatal(err)
	}
	op := at(time.Hour)
	if err := Revoke(s, Revocation{Kind: ByWorkload, Value: "default/a", Reason: "x"}, op); err != nil {
		t.Fatal(err)
	}
	b := s.Bundle()
	if len(b.CRLs) != 2 {
		t.Fatalf("%d CRLs, want one for each of the 2 authorities in the bundle (empty ones too)", len(b.CRLs))
	}
	for _, a := range []*Authority{s.Active(), s.Get(p.ID)} {
		rl, err := x509.ParseRevocationList(a.CRL)
		if err != nil {
			t.Fatal(err)
		}
		if err := rl.CheckSignatureFrom(a.Signing()); err != nil {
			t.Errorf("%s: %v", a.ID, err)
		}
		// Pushed, never fetched: valid for as long as its issuer, and
		// from a little before now for proxies with a slow clock.
		if rl.Number.Uint64() != s.Sequence || !rl.NextUpdate.Equal(a.Signing().NotAfter.Truncate(time.Second)) ||
			!rl.ThisUpdate.Equal(op.Now.Add(-backdate)) || len(rl.RevokedCertificateEntries) != 0 {
			t.Errorf("%s: number %d, this %s, next %s, %d entries", a.ID, rl.Number, rl.ThisUpdate, rl.NextUpdate, len(rl.RevokedCertificateEntries))
		}
	}
}
