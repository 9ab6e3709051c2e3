package trust

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// sdsCertificate asks w's agent, over its SDS socket as its Envoy does
// (the test runs as the same user), for the workload's certificate with
// its key. It asks for nothing else, and acknowledges nothing: the agent
// reads its Envoy's acknowledgements of the trust bundle on the SDS
// streams that ask for the bundle, and must not count this one.
func (w *workload) sdsCertificate(ctx context.Context) (*x509svid.SVID, error) {
	conn, err := grpc.NewClient("unix://"+filepath.Join(w.m.sockDir, w.name+".sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: w.key()}, TypeUrl: resourcev3.SecretType,
		ResourceNames: []string{contract.SecretCertificate}}); err != nil {
		return nil, err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return nil, fmt.Errorf("SDS of %s: %w", w.name, err)
		}
		for _, r := range resp.GetResources() {
			var s tlsv3.Secret
			if err := r.UnmarshalTo(&s); err != nil {
				return nil, err
			}
			c := s.GetTlsCertificate()
			if c == nil {
				continue
			}
			chain, err := pemutil.ParseCerts(c.GetCertificateChain().GetInlineBytes())
			if err != nil {
				return nil, err
			}
			key, err := pemutil.ParseKey(c.GetPrivateKey().GetInlineBytes())
			if err != nil {
				return nil, err
			}
			id, err := x509svid.IDFromCert(chain[0])
			if err != nil {
				return nil, err
			}
			return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
		}
	}
}

// renew asks the control plane's CA service for a new certificate for w
// exactly as its agent renews: authenticated by the certificate it holds
// now. The new certificate is thrown away; only the answer matters.
func (w *workload) renew() error {
	svid, err := w.sdsCertificate(context.Background())
	if err != nil {
		return fmt.Errorf("the current certificate of %s: %w", w.name, err)
	}
	_, err = w.renewWith(svid)
	return err
}

// renewWith asks the control plane's CA service for a new certificate for
// w as its agent renews, authenticated by svid (w's certificate of some
// time, or one made by someone else), and returns the new leaf.
func (w *workload) renewWith(svid *x509svid.SVID) (*x509.Certificate, error) {
	ctx := context.Background()
	// The control plane is verified with what the workload's Envoy trusts.
	roots := w.trust().Roots
	td := spiffeid.RequireTrustDomainFromString(trustDomain)
	tlsCfg := spiffetls.ClientConfig(svid, x509bundle.FromX509Authorities(td, roots), contract.ControlPlaneID(td))
	conn, err := grpc.NewClient(w.m.cpAddr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := cav1.NewCertificateServiceClient(conn).SignCertificate(ctx, &cav1.SignCertificateRequest{Csr: csr, Workload: w.key()})
	if err != nil {
		return nil, err
	}
	if len(resp.GetCertChain()) == 0 {
		return nil, fmt.Errorf("renewal of %s: an answer without a certificate", w.name)
	}
	return x509.ParseCertificate(resp.GetCertChain()[0])
}
