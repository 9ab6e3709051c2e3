package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/bench/gen"
	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/identity/issuer"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/model"
)

// caFigure measures certificates signed per second through the CA's
// gRPC API (mTLS, a workload renewing with its current certificate,
// as agents do) against the in-process cost of what the API must do
// at least: check the CSR's signature and sign the certificate.
func (h *harness) caFigure() ([]Figure, error) {
	dur, reps := 3*time.Second, h.o.reps
	if h.o.short {
		dur, reps = 500*time.Millisecond, 1
	}
	fmt.Printf("\n== CA signing rate (%s per run)\n", dur)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	authority, err := ca.Load(ca.LoadConfig{Dir: h.caDir, Config: ca.Config{TrustDomain: controlPlaneID.TrustDomain()}})
	if err != nil {
		return nil, err
	}
	spec := gen.Spec{Services: 1, Endpoints: 1, Proxies: 1}
	store := model.NewStore()
	if _, err := store.ReplaceState(spec.State(0)); err != nil {
		return nil, err
	}
	workload := gen.NodeID(0)
	id := spiffeid.RequireFromPath(controlPlaneID.TrustDomain(), "/ns/"+gen.Namespace+"/sa/"+spec.ServiceAccount(0))
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(id.String())
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		return nil, err
	}

	// The service as `bulwark serve` runs it, logging every certificate.
	own, err := authority.NewSource(ctx, controlPlaneID, time.Hour, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return nil, err
	}
	// Without its rate limits: one identity renewing in a loop is what a
	// limit refuses, and this figure is the signing capacity behind it.
	iss, err := issuer.New(issuer.Config{CA: authority, Store: store, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)),
		RateLimit: issuer.NoRateLimit})
	if err != nil {
		return nil, err
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(spiffetls.ServerConfig(own, own, controlPlaneID.TrustDomain()))))
	iss.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()
	caller, err := authority.NewSource(ctx, id, time.Hour, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return nil, err
	}
	const conns, callers = 4, 16
	var clients []cav1.CertificateServiceClient
	for i := 0; i < conns; i++ {
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(spiffetls.ClientConfig(caller, caller, controlPlaneID))))
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		clients = append(clients, cav1.NewCertificateServiceClient(conn))
	}
	req := &cav1.SignCertificateRequest{Csr: csr, Workload: workload}
	if _, err := clients[0].SignCertificate(ctx, req); err != nil {
		return nil, fmt.Errorf("CA API: %w", err)
	}

	rate := func(workers int, one func(i int) error) (float64, error) {
		var n atomic.Int64
		var firstErr error
		var mu sync.Mutex
		stop := time.Now().Add(dur)
		var wg sync.WaitGroup
		start := time.Now()
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for time.Now().Before(stop) {
					if err := one(w); err != nil {
						mu.Lock()
						firstErr = err
						mu.Unlock()
						return
					}
					n.Add(1)
				}
			}(w)
		}
		wg.Wait()
		return float64(n.Load()) / time.Since(start).Seconds(), firstErr
	}
	inProcess := func(int) error {
		c, err := x509.ParseCertificateRequest(csr)
		if err != nil {
			return err
		}
		if err := c.CheckSignature(); err != nil {
			return err
		}
		_, err = authority.SignSVID(c.PublicKey, id, 0)
		return err
	}
	api := func(w int) error {
		_, err := clients[w%conns].SignCertificate(ctx, req)
		return err
	}
	var inRuns, apiRuns []float64
	for r := 0; r < reps; r++ {
		in, err := rate(runtime.GOMAXPROCS(0), inProcess)
		if err != nil {
			return nil, err
		}
		out, err := rate(callers, api)
		if err != nil {
			return nil, err
		}
		inRuns, apiRuns = append(inRuns, in), append(apiRuns, out)
		fmt.Printf("in-process %.0f/s  API %.0f/s\n", in, out)
	}
	figs := []Figure{figure("ca_signing_rate_api", "certificates/s",
		fmt.Sprintf("CSRs signed through the gRPC API (mTLS, renewal with the current certificate, %d callers on %d connections, client in the same process); baseline: verifying the CSR and signing in-process on %d goroutines",
			callers, conns, runtime.GOMAXPROCS(0)), apiRuns, inRuns, true)}
	printFigures(figs)
	return figs, nil
}
