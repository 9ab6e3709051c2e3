// Package supplychain tests what the build says about what is in it: the
// CycloneDX SBOM that make sbom writes of the bulwark binary, the one the
// kind example's image build records, and bulwark version, against the
// modules go.mod requires and the binary holds.
package supplychain
