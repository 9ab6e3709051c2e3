// Package attest checks the credentials workloads present to prove who
// they are before they get a certificate. In file mode that is a join
// token: one-time, expiring, bound to one workload, created by an
// operator with `bulwark token create`.
//
// It decides which workload a credential speaks for; it never decides
// what certificate that workload gets, and it knows nothing of Envoy.
package attest
