package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/internal/peercred"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
)

// caUsage lists the ca subcommands.
const caUsage = `Usage: bulwark ca <subcommand> [flags]

  init       create a CA directory (a root and an intermediate)
  issue      issue a certificate offline from a CA directory
  status     authorities, the bundle and which proxies hold it, the rotation, revocations
  prepare    add an authority, minted or handed in, to the bundle without signing with it
  activate   make a prepared authority the one that signs (gated: every proxy holds it)
  retire     stop an authority signing
  remove     take a retired authority out of the bundle (gated: no live leaf chains to it)
  rotate     replace the signing authority, gate by gate; --wait follows it
  revoke     revoke a workload, a SPIFFE ID or a certificate
  unrevoke   drop a revocation
  crl        import an organisation's CRL, or clear one

The lifecycle commands talk to the control plane's admin socket (--socket).`

func runCA(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || isHelp(args[0]) {
		return groupUsage(args, caUsage, stderr)
	}
	subs := map[string]func(context.Context, []string, io.Writer, io.Writer) error{
		"init":     func(_ context.Context, a []string, o, e io.Writer) error { return runCAInit(a, o, e) },
		"issue":    func(_ context.Context, a []string, o, e io.Writer) error { return runCAIssue(a, o, e) },
		"status":   runCAStatus,
		"prepare":  runCAPrepare,
		"activate": runCAPhase("activate"),
		"retire":   runCAPhase("retire"),
		"remove":   runCAPhase("remove"),
		"rotate":   runCARotate,
		"revoke":   runCARevoke(false),
		"unrevoke": runCARevoke(true),
		"crl":      runCACRL,
	}
	if f, ok := subs[args[0]]; ok {
		return f(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "bulwark ca: unknown subcommand %q (init, issue, status, prepare, activate, retire, remove, rotate, revoke, unrevoke, crl)\n", args[0])
	return errUsage
}

func runCAInit(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ca init", "--dir DIR [--trust-domain cluster.local]", stderr)
	dir := fs.String("dir", "", "directory for the CA material (required)")
	tdName := fs.String("trust-domain", "cluster.local", "SPIFFE trust domain")
	rootTTL := fs.Duration("root-ttl", ca.DefaultRootTTL, "root lifetime")
	intTTL := fs.Duration("intermediate-ttl", ca.DefaultIntermediateTTL, "intermediate lifetime")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		fs.Usage()
		return errUsage
	}
	td, err := spiffeid.TrustDomainFromString(*tdName)
	if err != nil {
		return err
	}
	who := peercred.Describe(uint32(os.Getuid())) + " (bulwark ca init)"
	if err := trust.Init(ca.InitConfig{Dir: *dir, TrustDomain: td, RootTTL: *rootTTL, IntermediateTTL: *intTTL}, who); err != nil {
		return err
	}
	// No proxy was ever connected to this CA: a control plane started on
	// it has none to wait for before its gates decide.
	if err := controlplane.InitRoster(*dir); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "CA for %s created in %s: %s (trust anchor), %s and %s (signing), %s (keep it offline if you can)\n",
		td, *dir, ca.RootCertFile, ca.CertFile, ca.KeyFile, ca.RootKeyFile)
	return nil
}

// runCAIssue issues a certificate offline, for a gateway or a person
// without an agent. The key is generated here and written next to it.
func runCAIssue(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ca issue", "--dir DIR --id SPIFFE-ID --out DIR [--ttl 24h]", stderr)
	dir := fs.String("dir", "", "CA directory (required)")
	idStr := fs.String("id", "", "SPIFFE ID, spiffe://<trust domain>/ns/<ns>/sa/<sa> (required)")
	out := fs.String("out", "", "directory for cert.pem (with chain), key.pem and bundle.pem (required)")
	ttl := fs.Duration("ttl", ca.DefaultLeafTTL, "lifetime (at most 24h)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" || *idStr == "" || *out == "" {
		fs.Usage()
		return errUsage
	}
	id, err := spiffeid.FromString(*idStr)
	if err != nil {
		return fmt.Errorf("--id: %w", err)
	}
	c, err := ca.Load(ca.LoadConfig{Dir: *dir, Config: ca.Config{TrustDomain: id.TrustDomain()}})
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	chain, err := c.SignSVID(key.Public(), id, *ttl)
	if err != nil {
		return err
	}
	keyPEM, err := pemutil.EncodeKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"key.pem", keyPEM, 0o600},
		{"cert.pem", pemutil.EncodeCerts(chain), 0o644},
		{"bundle.pem", pemutil.EncodeCerts(c.Roots()), 0o644},
	} {
		if err := os.WriteFile(filepath.Join(*out, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "issued %s, serial %s, valid until %s, in %s\n", id, chain[0].SerialNumber.Text(16),
		chain[0].NotAfter.Format(time.RFC3339), *out)
	return nil
}
