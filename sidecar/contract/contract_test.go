package contract_test

import (
	"slices"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

func TestControlPlaneID(t *testing.T) {
	for _, tc := range []struct {
		name string
		td   spiffeid.TrustDomain
		want string
	}{
		{"default trust domain", spiffeid.RequireTrustDomainFromString("cluster.local"), "spiffe://cluster.local/ns/bulwark-system/sa/bulwark"},
		{"another trust domain", spiffeid.RequireTrustDomainFromString("prod.example.org"), "spiffe://prod.example.org/ns/bulwark-system/sa/bulwark"},
		{"zero trust domain", spiffeid.TrustDomain{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := contract.ControlPlaneID(tc.td)
			if tc.want == "" {
				if !got.IsZero() {
					t.Errorf("got %s, want the zero ID", got)
				}
				return
			}
			if got.String() != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestSecretsAreTheCallersOwn(t *testing.T) {
	a := contract.Secrets()
	a[0] = "changed"
	if b := contract.Secrets(); !slices.Equal(b, []string{contract.SecretCertificate, contract.SecretRoots}) {
		t.Errorf("Secrets() = %v after a caller changed its copy", b)
	}
}

// TestClientTLSNamesOnlyTheContractsSecrets: what the bootstrap and the
// outbound clusters ask of the agent is what the agent serves, and an
// empty list of identities trusts no server.
func TestClientTLSNamesOnlyTheContractsSecrets(t *testing.T) {
	for _, tc := range []struct {
		name string
		ids  []string
		want []string
	}{
		{"one identity", []string{"spiffe://cluster.local/ns/a/sa/b"}, []string{"spiffe://cluster.local/ns/a/sa/b"}},
		{"no identity fails closed", nil, []string{contract.NoIdentity}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := contract.ClientTLS(tc.ids)
			var up tlsv3.UpstreamTlsContext
			if err := ts.GetTypedConfig().UnmarshalTo(&up); err != nil {
				t.Fatal(err)
			}
			common := up.GetCommonTlsContext()
			certs := common.GetTlsCertificateSdsSecretConfigs()
			if len(certs) != 1 || certs[0].GetName() != contract.SecretCertificate {
				t.Errorf("certificate secrets %v, want only %q", certs, contract.SecretCertificate)
			}
			if got := certs[0].GetSdsConfig().GetApiConfigSource().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName(); got != contract.SDSCluster {
				t.Errorf("SDS cluster %q, want %q", got, contract.SDSCluster)
			}
			cvc := common.GetCombinedValidationContext()
			if got := cvc.GetValidationContextSdsSecretConfig().GetName(); got != contract.SecretRoots {
				t.Errorf("validation secret %q, want %q", got, contract.SecretRoots)
			}
			var sans []string
			for _, m := range cvc.GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
				if m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI {
					t.Errorf("SAN matcher of type %v, want URI", m.GetSanType())
				}
				sans = append(sans, m.GetMatcher().GetExact())
			}
			if !slices.Equal(sans, tc.want) {
				t.Errorf("accepts %v, want exactly %v", sans, tc.want)
			}
		})
	}
}
