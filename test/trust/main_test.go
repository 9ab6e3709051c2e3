package trust

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// bulwarkBin is the bulwark binary the tests run as separate processes
// (the control plane, the agents and the CLI), built once by TestMain.
// Empty under -short, where every test skips before using it.
var bulwarkBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "bw-trust-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		bulwarkBin = filepath.Join(dir, "bulwark")
		cmd := exec.Command("go", "build", "-o", bulwarkBin, "./cmd/bulwark")
		cmd.Dir = "../.."
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "build bulwark: %v\n", err)
			return 1
		}
		return m.Run()
	}())
}
