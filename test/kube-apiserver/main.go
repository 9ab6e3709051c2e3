// Command kube-apiserver-test runs a real Kubernetes API server, backed by an
// embedded etcd, in a single process for integration tests. No container
// runtime and no downloaded binaries are needed.
//
// When the API server answers /readyz it prints one line of JSON to stdout
// (and to --ready-file if given) describing how to connect, then runs until
// SIGTERM or SIGINT. See README.md.
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // CronJob time zones, as in the real kube-apiserver binary

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

// saIssuer is the service-account token issuer, and one of the API audiences.
const saIssuer = "https://kubernetes.default.svc.cluster.local"

// readyInfo is the JSON line printed once the API server is ready.
type readyInfo struct {
	Host     string `json:"host"`
	Token    string `json:"token"`
	CAFile   string `json:"caFile"`
	SAIssuer string `json:"saIssuer"`
}

// stderr is the process's real stderr. Without -v, os.Stderr is pointed at
// a log file so that the API server's klog output does not go to stderr.
var stderr = os.Stderr

// logLevel is Info, or Debug with -v.
var logLevel slog.LevelVar

func main() {
	// Our own logger, bound to the real stderr. Do not use slog.Default:
	// the API server redirects it into klog.
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: &logLevel}))
	if err := run(log, os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		log.Error("kube-apiserver-test failed", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, args []string) (retErr error) {
	start := time.Now()
	fs := flag.NewFlagSet("kube-apiserver-test", flag.ContinueOnError)
	dir := fs.String("dir", "", "working directory for etcd data, certificates, keys and logs (default: a new temporary directory, removed on exit)")
	readyFile := fs.String("ready-file", "", "also write the ready JSON line to this file (written atomically, removed on exit)")
	port := fs.Int("port", 0, "API server secure port on 127.0.0.1 (0: pick a free port)")
	etcdPort := fs.Int("etcd-port", 0, "etcd client port on 127.0.0.1 (0: pick a free port)")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait for the API server to become ready")
	verbose := fs.Bool("v", false, "send API server and etcd logs to stderr instead of files in --dir")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}

	// The API server command installs the process's SIGTERM/SIGINT handler
	// and owns the context it cancels on the first signal (a second signal
	// exits at once). Create it first and use its context everywhere, so
	// that a signal at any time stops everything.
	cmd := app.NewAPIServerCommand()
	ctx := cmd.Context()

	workDir, tmpDir := *dir, ""
	if workDir == "" {
		var err error
		if tmpDir, err = os.MkdirTemp("", "kube-apiserver-test-"); err != nil {
			return err
		}
		workDir = tmpDir
	} else if err := os.MkdirAll(workDir, 0o700); err != nil {
		return err
	}
	if *readyFile != "" {
		if err := os.Remove(*readyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	// removeFiles removes what must not outlive the process. It runs last.
	removeFiles := func() {
		if *readyFile != "" {
			os.Remove(*readyFile)
		}
		if tmpDir != "" {
			os.RemoveAll(tmpDir)
		}
	}
	defer removeFiles()
	workDir, err := filepath.Abs(workDir)
	if err != nil {
		return err
	}

	etcdLog, etcdLogLevel := "stderr", "info"
	logPath := "" // the API server log file, without -v
	if *verbose {
		logLevel.Set(slog.LevelDebug)
	} else {
		etcdLog, etcdLogLevel = filepath.Join(workDir, "etcd.log"), "warn"
		logPath = filepath.Join(workDir, "kube-apiserver.log")
		f, err := os.Create(logPath)
		if err != nil {
			return err
		}
		defer f.Close()
		// klog and cobra write to whatever os.Stderr is when they log;
		// point it at the file. Our logger keeps the real stderr.
		os.Stderr = f
	}
	showLog := func() {
		if logPath != "" && ctx.Err() == nil { // not worth showing after a signal
			log.Error("last lines of the API server log:")
			printTail(logPath, 40)
		}
	}
	defer func() {
		if retErr != nil {
			showLog()
		}
	}()
	// The API server calls klog.Fatal (exit 255) when it cannot go on, for
	// example when a post-start hook fails because a signal arrived during
	// startup. Deferred functions do not run then, so clean up here.
	klog.OsExit = func(code int) {
		showLog()
		log.Error("kube-apiserver exited fatally", "code", code, "interrupted", ctx.Err() != nil)
		removeFiles()
		os.Exit(code)
	}

	etcd, etcdURL, err := startEtcd(ctx, filepath.Join(workDir, "etcd"), *etcdPort, etcdLog, etcdLogLevel)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	defer etcd.Close()
	log.Debug("etcd ready", "url", etcdURL)

	// A --dir used before keeps its admin token and service account key,
	// so clients and tokens from before a restart stay valid (etcd's data
	// and the serving certificate persist there too).
	tokenFile := filepath.Join(workDir, "tokens.csv")
	token, err := existingToken(tokenFile)
	if err != nil {
		if token, err = randomToken(); err != nil {
			return err
		}
		if err := os.WriteFile(tokenFile, []byte(token+",admin,admin,system:masters\n"), 0o600); err != nil {
			return err
		}
	}
	saKeyFile := filepath.Join(workDir, "sa.key")
	if _, err := os.Stat(saKeyFile); err != nil {
		if err := writeECKey(saKeyFile); err != nil {
			return err
		}
	}
	if *port == 0 {
		if *port, err = freePort(); err != nil {
			return err
		}
	}
	certDir := filepath.Join(workDir, "certs")

	cmd.SetArgs([]string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1", // default: the host's interface address, which may not exist
		"--secure-port=" + strconv.Itoa(*port),
		"--cert-dir=" + certDir,
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=" + saIssuer,
		"--service-account-key-file=" + saKeyFile,
		"--service-account-signing-key-file=" + saKeyFile,
		"--api-audiences=" + saIssuer + ",bulwark",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--endpoint-reconciler-type=none",
	})
	apiserverDone := make(chan error, 1)
	go func() { apiserverDone <- cli.RunNoErrOutput(cmd) }()

	host := "https://127.0.0.1:" + strconv.Itoa(*port)
	caFile := filepath.Join(workDir, "ca.crt")
	if err := waitReady(ctx, apiserverDone, host, token, filepath.Join(certDir, "apiserver.crt"), caFile, *timeout); err != nil {
		return err
	}

	line, err := json.Marshal(readyInfo{Host: host, Token: token, CAFile: caFile, SAIssuer: saIssuer})
	if err != nil {
		return err
	}
	line = append(line, '\n')
	if *readyFile != "" {
		if err := writeFileAtomic(*readyFile, line, 0o600); err != nil {
			return err
		}
	}
	if _, err := os.Stdout.Write(line); err != nil {
		return err
	}
	log.Info("kube-apiserver ready", "host", host, "dir", workDir, "startup", time.Since(start).Round(time.Millisecond))

	// Returns after SIGTERM/SIGINT, once the API server has shut down.
	if err := <-apiserverDone; err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	log.Info("kube-apiserver stopped, stopping etcd")
	return nil
}

// startEtcd starts a single-member etcd on 127.0.0.1 and waits until it
// serves. clientPort 0 picks a free port; the peer port is always free.
func startEtcd(ctx context.Context, dataDir string, clientPort int, logOutput, logLevel string) (*embed.Etcd, string, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, "", err
	}
	if clientPort == 0 {
		clientPort = ports[0]
	}
	clientURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(clientPort))}
	peerURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))}

	cfg := embed.NewConfig()
	cfg.Dir = dataDir
	cfg.UnsafeNoFsync = true // test data only; never restarted after a crash
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogOutputs = []string{logOutput}
	cfg.LogLevel = logLevel

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, clientURL.String(), nil
	case err := <-e.Err():
		e.Close()
		return nil, "", err
	case <-time.After(time.Minute):
		e.Close()
		return nil, "", errors.New("etcd did not become ready within a minute")
	case <-ctx.Done():
		e.Close()
		return nil, "", errors.New("interrupted while starting etcd")
	}
}

// waitReady polls host/readyz with the admin token until it answers "ok".
// It trusts only the CA of the API server's self-signed serving
// certificate, which it extracts from certFile into caFile.
func waitReady(ctx context.Context, apiserverDone <-chan error, host, token, certFile, caFile string, timeout time.Duration) error {
	deadline := time.After(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var client *http.Client
	lastErr := errors.New("no attempt yet")
	for {
		select {
		case err := <-apiserverDone:
			if err == nil {
				err = errors.New("exited without error")
			}
			return fmt.Errorf("kube-apiserver stopped before it was ready: %w", err)
		case <-ctx.Done():
			// Let the API server stop before etcd goes away under it.
			select {
			case <-apiserverDone:
			case <-time.After(30 * time.Second):
			}
			return errors.New("interrupted while waiting for kube-apiserver")
		case <-deadline:
			return fmt.Errorf("kube-apiserver not ready after %v: %w", timeout, lastErr)
		case <-tick.C:
		}
		if client == nil {
			// The API server writes certFile during startup.
			pool, err := extractCA(certFile, caFile)
			if err != nil {
				lastErr = err
				continue
			}
			client = &http.Client{
				Timeout:   2 * time.Second,
				Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
			}
		}
		if lastErr = checkReadyz(client, host, token); lastErr == nil {
			return nil
		}
	}
}

func checkReadyz(client *http.Client, host, token string) error {
	req, err := http.NewRequest(http.MethodGet, host+"/readyz", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "ok" {
		return fmt.Errorf("/readyz: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

// extractCA reads the API server's self-signed serving certificate file
// (the serving certificate followed by the CA that signed it), writes the
// CA certificate alone to caFile, and returns a pool holding it.
func extractCA(certFile, caFile string) (*x509.CertPool, error) {
	data, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("no CA certificate in %s", certFile)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil || !cert.IsCA {
			continue
		}
		if err := writeFileAtomic(caFile, pem.EncodeToMemory(block), 0o644); err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		pool.AddCert(cert)
		return pool, nil
	}
}

// writeECKey writes a new ECDSA P-256 private key (PEM, "EC PRIVATE KEY")
// used both to sign and to verify service-account tokens.
func writeECKey(path string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

// existingToken reads the admin token of an earlier run from a token file.
func existingToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	token, _, ok := strings.Cut(string(b), ",")
	if !ok || token == "" {
		return "", fmt.Errorf("%s: no token", path)
	}
	return token, nil
}

func randomToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

func freePort() (int, error) {
	ports, err := freePorts(1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

// freePorts returns n distinct TCP ports that were free on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// writeFileAtomic writes data to path via a temporary file and a rename, so
// readers never see a partial file.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// printTail copies the last n lines of the file at path to stderr.
func printTail(path string, n int) {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	fmt.Fprintln(stderr, strings.Join(lines[max(0, len(lines)-n):], "\n"))
}
