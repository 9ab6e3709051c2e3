package controlplane_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// dialerFrom connects from a loopback address of its own (Linux routes
// all of 127/8 to loopback), so each is a source of its own.
func dialerFrom(src string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
}

// holdTLS completes a TLS handshake without a client certificate and
// then sends nothing: no HTTP/2 preface, as in the attack.
func holdTLS(cp *controlplane.ControlPlane, src string) (*tls.Conn, error) {
	return tls.DialWithDialer(dialerFrom(src), "tcp", cp.XDSAddr.String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
}

// closedWithin reports whether the server closes c within d.
func closedWithin(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := io.ReadAll(c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// signFrom is an agent's first request, made from src.
func signFrom(t *testing.T, cp *controlplane.ControlPlane, src, workload string) error {
	t.Helper()
	tok, err := cp.Tokens.Create(workload, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	tc := spiffetls.ClientConfig(nil, x509bundle.FromX509Authorities(meshTD, cp.CA.Roots()), cp.Identity)
	conn, err := grpc.NewClient(cp.XDSAddr.String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dialerFrom(src).DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, contract.AuthorizationKey, contract.JoinTokenScheme+" "+tok)
	_, err = cav1.NewCertificateServiceClient(conn).SignCertificate(ctx, &cav1.SignCertificateRequest{Csr: csr, Workload: workload}, grpc.WaitForReady(false))
	return err
}

func metricsText(t *testing.T, cp *controlplane.ControlPlane) string {
	t.Helper()
	resp, err := http.Get("http://" + cp.HTTPAddr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestConnectionsThatNeverStartGRPCAreBounded is finding 7 of issue 11:
// TLS connections that never send the HTTP/2 preface were held (for
// gRPC's default two minutes, with no cap on how many). Now they are
// closed at the handshake deadline, connections past the caps are
// closed at once, and a normal client is served throughout.
func TestConnectionsThatNeverStartGRPCAreBounded(t *testing.T) {
	_, dir := newCA(t, meshTD)
	const deadline = time.Second
	cp := start(t, controlplane.Config{CADir: dir, HTTPAddress: "127.0.0.1:0", Limits: controlplane.Limits{
		HandshakeTimeout: deadline, MaxConnections: 30, MaxConnectionsPerSource: 20}})

	// One source fills its share; the next connection from it is closed
	// before its handshake.
	opened := time.Now()
	var held []*tls.Conn
	for i := range 20 {
		c, err := holdTLS(cp, "127.0.0.1")
		if err != nil {
			t.Fatalf("connection %d within the cap: %v", i+1, err)
		}
		t.Cleanup(func() { c.Close() })
		held = append(held, c)
	}
	if c, err := holdTLS(cp, "127.0.0.1"); err == nil {
		c.Close()
		t.Error("a 21st connection from 127.0.0.1 completed its handshake; the cap per source is 20")
	}
	// Another source is served meanwhile.
	if err := signFrom(t, cp, "127.0.0.2", "demo/frontend-1"); err != nil {
		t.Errorf("a normal client from another address, while 127.0.0.1 is at its cap: %v", err)
	}
	// Others fill the total; then any source is refused.
	for i := range 10 {
		c, err := holdTLS(cp, "127.0.0.3")
		if err != nil {
			t.Fatalf("connection %d of 127.0.0.3: %v", i+1, err)
		}
		t.Cleanup(func() { c.Close() })
		held = append(held, c)
	}
	if c, err := holdTLS(cp, "127.0.0.4"); err == nil {
		c.Close()
		t.Error("a 31st connection completed its handshake; the total cap is 30")
	}
	m := metricsText(t, cp)
	for _, want := range []string{`bulwark_grpc_refused_connections_total{reason="max_connections_per_source"} 1`,
		`bulwark_grpc_refused_connections_total{reason="max_connections"} 1`} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// Every held connection is closed at the deadline (with slack for a
	// busy machine), not two minutes later.
	for i, c := range held {
		if !closedWithin(c, deadline+3*time.Second-time.Since(opened)) {
			t.Fatalf("held connection %d still open %s after it was opened; the handshake deadline is %s", i+1, time.Since(opened).Round(time.Millisecond), deadline)
		}
	}
	// Their slots are free again.
	if err := signFrom(t, cp, "127.0.0.1", "demo/api-1"); err != nil {
		t.Errorf("a normal client from 127.0.0.1 after the held connections were closed: %v", err)
	}
}

// TestConnectionsWithoutStreamsAreClosed: a client that completes the
// HTTP/2 preface, answers pings, and opens no stream is sent away after
// the idle timeout.
func TestConnectionsWithoutStreamsAreClosed(t *testing.T) {
	_, dir := newCA(t, meshTD)
	cp := start(t, controlplane.Config{CADir: dir, Limits: controlplane.Limits{IdleTimeout: time.Second}})
	tc := spiffetls.ClientConfig(nil, x509bundle.FromX509Authorities(meshTD, cp.CA.Roots()), cp.Identity)
	conn, err := grpc.NewClient(cp.XDSAddr.String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn.Connect()
	for s := conn.GetState(); s != connectivity.Ready; s = conn.GetState() {
		if !conn.WaitForStateChange(ctx, s) {
			t.Fatalf("never connected: %s", s)
		}
	}
	ready := time.Now()
	// The server's GOAWAY sends the channel back to IDLE.
	for s := conn.GetState(); s == connectivity.Ready; s = conn.GetState() {
		if !conn.WaitForStateChange(ctx, s) {
			t.Fatalf("a connection without streams still open %s after it connected; the idle timeout is 1s", time.Since(ready).Round(time.Millisecond))
		}
	}
}
