package trust

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bulwarkmesh/bulwark/internal/envoy"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// envoyTrust is what one Envoy holds, as its admin interface shows it.
type envoyTrust struct {
	// CACerts and Leaves are the serials (lower-case hex, no leading
	// zeros) /certs lists over every TLS context: the trusted CA
	// certificates and the certificates presented. /certs shows serials
	// only; the certificates themselves, the CRLs and the leaf's chain are
	// read from the secrets Envoy has active (below).
	CACerts, Leaves []string
	// Roots, CRLs and OnlyLeafCRL are the ROOTCA secret Envoy has active
	// (/config_dump, dynamic_active_secrets): its trust bundle.
	Roots       []*x509.Certificate
	CRLs        []*x509.RevocationList
	OnlyLeafCRL bool
	// Chain is the certificate secret Envoy has active: leaf first.
	Chain []*x509.Certificate
	// RootsVersion and ChainVersion are those secrets' SDS versions.
	RootsVersion, ChainVersion string
}

// leafSerial returns the serial of the leaf Envoy has active.
func (e *envoyTrust) leafSerial() string {
	if len(e.Chain) == 0 {
		return ""
	}
	return serialHex(e.Chain[0].SerialNumber)
}

// leafAuthority is the ID of the authority that signed the active leaf:
// that of the chain's signing certificate, Chain[1].
func (e *envoyTrust) leafAuthority() string {
	if len(e.Chain) < 2 {
		return ""
	}
	return authorityID(e.Chain[1])
}

// rootSerials returns the serials of the trust bundle, sorted.
func (e *envoyTrust) rootSerials() []string {
	var out []string
	for _, r := range e.Roots {
		out = append(out, serialHex(r.SerialNumber))
	}
	sort.Strings(out)
	return out
}

// trusts reports whether root is in the trust bundle.
func (e *envoyTrust) trusts(root *x509.Certificate) bool {
	for _, r := range e.Roots {
		if r.Equal(root) {
			return true
		}
	}
	return false
}

func (e *envoyTrust) String() string {
	return fmt.Sprintf("roots %v (SDS version %s, %d CRLs), leaf %s from authority %s (SDS version %s); /certs: CA %v, leaves %v",
		e.rootSerials(), e.RootsVersion, len(e.CRLs), e.leafSerial(), e.leafAuthority(), e.ChainVersion, e.CACerts, e.Leaves)
}

// authorityID names an authority as package ca/trust does: the first 12
// hex digits of the SHA-256 of its signing certificate's DER.
func authorityID(signing *x509.Certificate) string {
	sum := sha256.Sum256(signing.Raw)
	return hex.EncodeToString(sum[:])[:12]
}

func serialHex(n *big.Int) string { return n.Text(16) }

// normalSerial turns a serial as Envoy prints it (hex, maybe with
// leading zeros, maybe with colons) into serialHex's form.
func normalSerial(s string) string {
	n, ok := new(big.Int).SetString(strings.ReplaceAll(s, ":", ""), 16)
	if !ok {
		return s
	}
	return serialHex(n)
}

// readTrust reads what the Envoy at admin trusts and presents.
func readTrust(ctx context.Context, admin string) (*envoyTrust, error) {
	var e envoyTrust
	body, err := envoy.AdminGet(ctx, admin, "/certs")
	if err != nil {
		return nil, err
	}
	var certs struct {
		Certificates []struct {
			CACert []struct {
				SerialNumber string `json:"serial_number"`
			} `json:"ca_cert"`
			CertChain []struct {
				SerialNumber string `json:"serial_number"`
			} `json:"cert_chain"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal([]byte(body), &certs); err != nil {
		return nil, fmt.Errorf("%s/certs: %w", admin, err)
	}
	ca, leaves := map[string]bool{}, map[string]bool{}
	for _, c := range certs.Certificates {
		for _, x := range c.CACert {
			ca[normalSerial(x.SerialNumber)] = true
		}
		for _, x := range c.CertChain {
			leaves[normalSerial(x.SerialNumber)] = true
		}
	}
	e.CACerts, e.Leaves = sortedSet(ca), sortedSet(leaves)

	body, err = envoy.AdminGet(ctx, admin, "/config_dump?resource=dynamic_active_secrets")
	if err != nil {
		return nil, err
	}
	var dump struct {
		Configs []struct {
			Name    string `json:"name"`
			Version string `json:"version_info"`
			Secret  struct {
				TLSCertificate *struct {
					CertificateChain struct {
						InlineBytes []byte `json:"inline_bytes"`
					} `json:"certificate_chain"`
				} `json:"tls_certificate"`
				ValidationContext *struct {
					TrustedCA struct {
						InlineBytes []byte `json:"inline_bytes"`
					} `json:"trusted_ca"`
					CRL *struct {
						InlineBytes []byte `json:"inline_bytes"`
					} `json:"crl"`
					OnlyVerifyLeafCertCRL bool `json:"only_verify_leaf_cert_crl"`
				} `json:"validation_context"`
			} `json:"secret"`
		} `json:"configs"`
	}
	if err := json.Unmarshal([]byte(body), &dump); err != nil {
		return nil, fmt.Errorf("%s/config_dump: %w", admin, err)
	}
	for _, c := range dump.Configs {
		switch {
		case c.Name == contract.SecretCertificate && c.Secret.TLSCertificate != nil:
			if e.Chain, err = parseCerts(c.Secret.TLSCertificate.CertificateChain.InlineBytes); err != nil {
				return nil, fmt.Errorf("%s: secret %s: %w", admin, c.Name, err)
			}
			e.ChainVersion = c.Version
		case c.Name == contract.SecretRoots && c.Secret.ValidationContext != nil:
			vc := c.Secret.ValidationContext
			if e.Roots, err = parseCerts(vc.TrustedCA.InlineBytes); err != nil {
				return nil, fmt.Errorf("%s: secret %s: %w", admin, c.Name, err)
			}
			if vc.CRL != nil {
				if e.CRLs, err = parseCRLs(vc.CRL.InlineBytes); err != nil {
					return nil, fmt.Errorf("%s: secret %s: %w", admin, c.Name, err)
				}
			}
			e.OnlyLeafCRL = vc.OnlyVerifyLeafCertCRL
			e.RootsVersion = c.Version
		}
	}
	if len(e.Chain) == 0 || len(e.Roots) == 0 {
		return nil, fmt.Errorf("%s: no active %s and %s secrets in /config_dump", admin, contract.SecretCertificate, contract.SecretRoots)
	}
	return &e, nil
}

// trustOf reads w's Envoy, failing the test if it cannot.
func (w *workload) trust() *envoyTrust {
	w.m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, err := readTrust(ctx, w.admin())
	if err != nil {
		w.m.t.Fatalf("the Envoy of %s: %v", w.name, err)
	}
	return e
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

// parseCRLs reads a CRL field: PEM CRLs, one after another.
func parseCRLs(b []byte) ([]*x509.RevocationList, error) {
	var out []*x509.RevocationList
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		c, err := x509.ParseRevocationList(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

func sortedSet(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// counters returns the counters of the Envoy at admin whose names match
// the regular expression filter.
func counters(ctx context.Context, admin, filter string) (map[string]int, error) {
	body, err := envoy.AdminGet(ctx, admin, "/stats?usedonly&filter="+url.QueryEscape(filter))
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, line := range strings.Split(body, "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
			out[k] = n
		}
	}
	return out, nil
}
