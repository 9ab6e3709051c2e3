package main

import (
	"runtime/debug"
	"strings"
	"testing"
)

// TestVersionPrintsWhatItWasBuiltFrom: bulwark version names the Go
// version, the main module and every module compiled into the binary
// with its version and checksum, as go version -m does, so a binary can
// be checked against advisories without its source.
func TestVersionPrintsWhatItWasBuiltFrom(t *testing.T) {
	code, out, errOut := runCLI(t, "version")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		t.Fatal("the test binary has no build information")
	}
	want := []string{"bulwark " + version + "\n", "go\t" + info.GoVersion + "\n", "mod\tgithub.com/bulwarkmesh/bulwark\t"}
	for _, dep := range info.Deps {
		if dep.Path == "github.com/envoyproxy/go-control-plane" || dep.Path == "google.golang.org/grpc" || dep.Path == "k8s.io/client-go" {
			want = append(want, "dep\t"+dep.Path+"\t"+dep.Version+"\t"+dep.Sum+"\n")
		}
	}
	if len(want) != 6 {
		t.Fatalf("the build information lacks a module the test looks for: %v", want)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("bulwark version does not print %q:\n%s", w, out)
		}
	}
	if n := strings.Count(out, "\ndep\t"); n != len(info.Deps) {
		t.Errorf("%d modules printed, the binary has %d", n, len(info.Deps))
	}
}
