// Package spiffetls builds the TLS configurations of Bulwark's own
// connections (control plane <-> agent, control plane <-> Envoy) on
// go-spiffe, and reads the authenticated peer's SPIFFE ID back out of a
// gRPC context.
package spiffetls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// ServerConfig serves svid and asks for, but does not require, a client
// certificate. A client certificate, when sent, must be a valid X.509-SVID
// of trust domain td or the handshake fails. Handlers decide whether a
// call needs one (ADS and renewal do; a first certificate request with a
// join token cannot have one) with PeerID.
func ServerConfig(svid x509svid.Source, bundle x509bundle.Source, td spiffeid.TrustDomain) *tls.Config {
	verify := tlsconfig.VerifyPeerCertificate(bundle, tlsconfig.AuthorizeMemberOf(td))
	c := tlsconfig.TLSServerConfig(svid)
	c.MinVersion = tls.VersionTLS12
	c.ClientAuth = tls.RequestClientCert
	c.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return nil
		}
		return verify(raw, chains)
	}
	return c
}

// ClientConfig verifies that the server is exactly serverID, and presents
// svid when it is not nil.
func ClientConfig(svid x509svid.Source, bundle x509bundle.Source, serverID spiffeid.ID) *tls.Config {
	var c *tls.Config
	if svid != nil {
		c = tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(serverID))
	} else {
		c = tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(serverID))
	}
	c.MinVersion = tls.VersionTLS12
	return c
}

// ErrNoPeerID means the caller presented no client certificate.
var ErrNoPeerID = errors.New("no client certificate")

// PeerID returns the SPIFFE ID of the gRPC caller's client certificate,
// which ServerConfig has already verified against the trust bundle.
func PeerID(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, ErrNoPeerID
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, ErrNoPeerID
	}
	return x509svid.IDFromCert(info.State.PeerCertificates[0])
}
