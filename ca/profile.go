package ca

import (
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var oidKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 15}

// CheckOption changes what CheckSVID requires.
type CheckOption func(*checkOptions)

type checkOptions struct{ maxLifetime time.Duration }

// WithMaxLifetime sets the longest lifetime (NotAfter - NotBefore) the
// leaf may have; the default is MaxLeafTTL. A CA checks its own leaves
// against its own maximum.
func WithMaxLifetime(d time.Duration) CheckOption {
	return func(o *checkOptions) { o.maxLifetime = d }
}

// CheckSVID checks that chain (leaf first, then intermediates) is an
// X.509-SVID of trust domain td, valid at now, that chains to roots:
//
//   - exactly one URI SAN, a SPIFFE ID in td, and no other SAN;
//   - basic constraints present, CA false;
//   - key usage present and critical, with digitalSignature and without
//     keyCertSign or cRLSign;
//   - extended key usage serverAuth and clientAuth;
//   - not valid past any certificate above it;
//   - valid for no longer than the maximum lifetime, counting the
//     backdate (see WithMaxLifetime);
//   - verifies against roots with go-spiffe's X.509-SVID verifier.
//
// Each broken rule is reported, wrapped in ErrProfile.
func CheckSVID(chain []*x509.Certificate, roots []*x509.Certificate, td spiffeid.TrustDomain, now time.Time, opts ...CheckOption) error {
	o := checkOptions{maxLifetime: MaxLeafTTL}
	for _, opt := range opts {
		opt(&o)
	}
	if len(chain) == 0 {
		return fmt.Errorf("%w: empty chain", ErrProfile)
	}
	leaf := chain[0]
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrProfile}, args...)...)
	}
	if n := len(leaf.URIs); n != 1 {
		return fail("%d URI SANs, want exactly 1", n)
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return fail("URI SAN %q is not a SPIFFE ID: %v", leaf.URIs[0], err)
	}
	if !id.MemberOf(td) {
		return fail("%s is not in trust domain %s", id, td)
	}
	if id.Path() == "" {
		return fail("%s has no path: it names the trust domain, not a workload", id)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) > 0 {
		return fail("SANs other than the URI (DNS %v, IP %v, email %v)", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if !leaf.BasicConstraintsValid {
		return fail("no basic constraints")
	}
	if leaf.IsCA {
		return fail("CA:true")
	}
	critical := false
	for _, e := range leaf.Extensions {
		if e.Id.Equal(oidKeyUsage) {
			critical = e.Critical
		}
	}
	if !critical {
		return fail("key usage is missing or not critical")
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return fail("key usage lacks digitalSignature")
	}
	if leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
		return fail("key usage has keyCertSign or cRLSign")
	}
	var server, client bool
	for _, u := range leaf.ExtKeyUsage {
		server = server || u == x509.ExtKeyUsageServerAuth
		client = client || u == x509.ExtKeyUsageClientAuth
	}
	if !server || !client {
		return fail("extended key usage lacks serverAuth or clientAuth")
	}
	for _, issuer := range chain[1:] {
		if leaf.NotAfter.After(issuer.NotAfter) {
			return fail("valid until %s, past its issuer %q (%s)", leaf.NotAfter, issuer.Subject, issuer.NotAfter)
		}
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life > o.maxLifetime {
		return fail("valid for %s, longer than %s", life, o.maxLifetime)
	}
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return fail("valid from %s to %s, not at %s", leaf.NotBefore, leaf.NotAfter, now)
	}
	bundle := x509bundle.FromX509Authorities(td, roots)
	if _, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(now)); err != nil {
		return fail("does not verify against the trust bundle: %v", err)
	}
	return nil
}
