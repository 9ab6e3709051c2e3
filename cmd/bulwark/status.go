package main

import (
	"context"
	"encoding/json"
	"io"
	"time"

	"github.com/bulwarkmesh/bulwark/controlplane"
)

// runProxyStatus prints, for every proxy connected to a control plane,
// whether it runs what it was sent and when its certificate expires.
func runProxyStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("proxy-status", "[--http-address HOST:PORT] [--json]", stderr)
	addr := fs.String("http-address", "127.0.0.1:15014", "the control plane's --http-address")
	asJSON := fs.Bool("json", false, "print the reports as JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return errUsage
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	reports, err := controlplane.FetchProxies(ctx, *addr)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(reports)
	}
	controlplane.WriteProxyStatus(stdout, reports, time.Now())
	return nil
}
