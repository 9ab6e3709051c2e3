package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/bench/gen"
)

// TestMain runs the command itself when a test starts this binary with
// BULWARK_TEST_MAIN=1, so a test can send it signals.
func TestMain(m *testing.M) {
	if os.Getenv("BULWARK_TEST_MAIN") == "1" {
		os.Args = append([]string{"bulwark"}, os.Args[1:]...)
		main()
		return
	}
	os.Exit(m.Run())
}

// TestValidateStopsOnASignal: SIGINT or SIGTERM stops bulwark validate
// in the middle of a load that takes seconds, and it says so. Before, the
// signal was caught (main's context) and nothing looked at it: validate
// ran to the end and printed "ok".
func TestValidateStopsOnASignal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	// Near the size limit: 10,000 services, 18,000 workloads, a policy each.
	if err := (gen.Spec{Services: 10000, Proxies: 18000}).MeshFile(f, true); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if code, _, errOut := runCLI(t, "validate", path); code != 0 {
		t.Fatalf("validate: exit %d: %s", code, errOut)
	}
	full := time.Since(start)
	t.Logf("the load takes %v", full)
	const settle = 300 * time.Millisecond // for the child to start and begin the load
	if full < 2*settle {
		t.Fatalf("the load takes %v here, too short to be interrupted in the middle", full)
	}

	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "validate", path)
			cmd.Env = append(os.Environ(), "BULWARK_TEST_MAIN=1")
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(settle)
			signalled := time.Now()
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			err := cmd.Wait()
			took := time.Since(signalled)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 || stderr.String() != "bulwark validate: interrupted\n" || stdout.Len() != 0 {
				t.Errorf("after %v: %v, stdout %q, stderr %q; want exit 1 and \"bulwark validate: interrupted\"", sig, err, stdout.String(), stderr.String())
			}
			if took > full/3 {
				t.Errorf("it took %v to stop, of a load that takes %v", took, full)
			}
		})
	}
}
