package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/bulwarkmesh/bulwark/localmesh/demoapp"
)

func runDemoApp(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlags("demo-app", "--name NAME --http ADDR [--tcp ADDR] [--upstream NAME=URL ...]", stderr)
	name := fs.String("name", "demo", "name the app answers with")
	var httpAddrs, tcpAddrs, ups listFlag
	fs.Var(&httpAddrs, "http", "serve HTTP on this address (repeatable)")
	fs.Var(&tcpAddrs, "tcp", "serve the TCP line echo on this address (repeatable)")
	fs.Var(&ups, "upstream", "an upstream the app can /call, NAME=URL of its sidecar listener (repeatable)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(httpAddrs) == 0 && len(tcpAddrs) == 0 {
		fmt.Fprintln(stderr, "bulwark demo-app: give at least one --http or --tcp address")
		return errUsage
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	upstreams := map[string]string{}
	for _, u := range ups {
		k, v, ok := strings.Cut(u, "=")
		if !ok || k == "" || v == "" {
			return fmt.Errorf("--upstream %q: want NAME=URL", u)
		}
		upstreams[k] = v
	}
	return demoapp.Run(ctx, demoapp.Config{Name: *name, HTTP: httpAddrs, TCP: tcpAddrs, Upstreams: upstreams, Logger: log})
}
