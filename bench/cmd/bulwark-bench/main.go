// Command bulwark-bench is Bulwark's load harness. It measures Bulwark's
// xDS server against a baseline built directly on stock go-control-plane
// (a SnapshotCache with per-node snapshots of the same resources), each
// in a server process of its own, with simulated sidecars that speak
// ADS; and the CA's signing rate through its gRPC API against the
// in-process cost; and a mesh of real Envoys. It prints every figure
// with its ratio to the baseline and writes them to results.json, with
// charts.
//
//	bulwark-bench [-short] [-out dir]   run every figure
//	bulwark-bench serve ...             a server process (used by the above)
package main

import (
	"flag"
	"fmt"
	"os"
	"syscall"

	"github.com/bulwarkmesh/bulwark/bench/gen"
)

func main() {
	var err error
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		err = serve(os.Args[2:])
	} else {
		err = run(os.Args[1:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bulwark-bench:", err)
		os.Exit(1)
	}
}

func specFlags(fs *flag.FlagSet) *gen.Spec {
	s := &gen.Spec{}
	fs.IntVar(&s.Services, "services", 1000, "services in the generated mesh")
	fs.IntVar(&s.Endpoints, "endpoints", 5, "endpoints per service")
	fs.IntVar(&s.Proxies, "proxies", 1000, "connected sidecars")
	return s
}

// raiseFileLimit lets a process hold thousands of connections.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}
