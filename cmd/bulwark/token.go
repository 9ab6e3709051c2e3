package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/bulwarkmesh/bulwark/identity/attest"
	"github.com/bulwarkmesh/bulwark/model"
)

func runToken(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "create" {
		return groupUsage(args, "Usage: bulwark token create --workload NAMESPACE/NAME (--ca-dir DIR | --token-dir DIR) [--ttl 1h]", stderr)
	}
	fs := newFlags("token create", "--workload NAMESPACE/NAME (--ca-dir DIR | --token-dir DIR) [--ttl 1h]", stderr)
	workload := fs.String("workload", "", "the workload the token is for (required)")
	caDir := fs.String("ca-dir", "", "the control plane's --ca-dir (tokens go to <ca-dir>/tokens)")
	tokenDir := fs.String("token-dir", "", "the control plane's --token-dir, if it has one")
	ttl := fs.Duration("ttl", attest.DefaultTokenTTL, "how long the token can be used")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if _, _, ok := model.ParseNodeID(*workload); !ok || (*caDir == "" && *tokenDir == "") {
		fs.Usage()
		return errUsage
	}
	dir := *tokenDir
	if dir == "" {
		dir = filepath.Join(*caDir, "tokens")
	}
	tokens, err := attest.NewJoinTokens(dir, nil)
	if err != nil {
		return err
	}
	tok, err := tokens.Create(*workload, *ttl)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "join token for %s, usable once until %s:\n", *workload, time.Now().Add(*ttl).Format(time.RFC3339))
	fmt.Fprintln(stdout, tok)
	return nil
}
