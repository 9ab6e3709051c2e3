package issuer

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/internal/bounded"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// What a request to the CA service may weigh. gRPC lets a message carry
// 4 MiB and metadata 16 MiB on every server, and the ADS server on the
// same port needs more than a CSR does, so the handler checks before it
// does anything else, logging included.
const (
	// MaxCSRBytes bounds the DER CSR: a P-256 CSR is about 250 bytes, an
	// RSA-4096 one under 1.5 KiB.
	MaxCSRBytes = 8 << 10
	// MaxRequestBytes bounds the whole request: the CSR, the workload
	// (a node ID, at most 127 bytes), the lifetime and nothing else.
	MaxRequestBytes = 16 << 10
	// MaxCredentialBytes bounds the authorization metadata: a join token
	// is under 100 bytes, a projected ServiceAccount token a few KiB.
	MaxCredentialBytes = 16 << 10
)

// Bounds of the trust bundle streams (WatchTrustBundle).
const (
	// MaxBundleWatchesPerWorkload: an agent holds one stream, and opens
	// the next before the last one is closed when it renews.
	MaxBundleWatchesPerWorkload = 2
	// DefaultMaxBundleWatchers caps the streams of all workloads
	// together: twice what 8,000 sidecars hold, as the gRPC port's
	// connection cap (controlplane.DefaultMaxConnections) is sized. A
	// stream costs a goroutine pair and a report of a few hundred bytes.
	DefaultMaxBundleWatchers = 16384
	// ReportGrace is how long a workload's report stays after its last
	// stream ended: an agent reconnecting (a control plane restart, a
	// network blip) keeps its place in the status meanwhile.
	ReportGrace = 2 * time.Minute
)

// checkSize refuses, before anything is parsed or logged, a request or
// credential larger than any real one.
func checkSize(ctx context.Context, req *cav1.SignCertificateRequest) error {
	if n := len(req.GetCsr()); n > MaxCSRBytes {
		return status.Errorf(codes.InvalidArgument, "csr: %d bytes, more than the %d a CSR needs", n, MaxCSRBytes)
	}
	if n := proto.Size(req); n > MaxRequestBytes {
		return status.Errorf(codes.InvalidArgument, "request: %d bytes, more than the %d a CSR and a workload name need", n, MaxRequestBytes)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	total := 0
	for _, v := range md.Get(contract.AuthorizationKey) {
		total += len(v)
	}
	if total > MaxCredentialBytes {
		return status.Errorf(codes.Unauthenticated, "%s metadata: %d bytes, more than the %d any credential needs", contract.AuthorizationKey, total, MaxCredentialBytes)
	}
	return nil
}

// boundStatus returns err with its message cut and escaped: messages
// quote what the caller sent, or what other parties said about it.
func boundStatus(err error) error {
	st := status.Convert(err)
	msg := bounded.Text(st.Message(), bounded.Message)
	if msg == st.Message() {
		return err // keeps its details, such as a RetryInfo
	}
	p := st.Proto()
	p.Message = msg
	return status.FromProto(p).Err()
}

// quote is a client-supplied value as it may appear in a log or error.
func quote(s string) string { return bounded.Quote(s, bounded.Name) }
