// Package archtest holds the tests that keep the module's dependency
// rules true: which of our packages may depend on which, and which
// third-party stacks (client-go, Envoy's protos) stay out of the
// packages that must not need them. The rules are a table in
// archtest_test.go, read from `go list -deps -json`, so a forbidden
// import fails `go test` with the chain of imports that brought it in.
//
// It has no code outside its tests, and no other package may import it.
package archtest
