// Package demoapp is the small application the local mesh and the tests
// run behind each sidecar. Over HTTP it answers every request with a JSON
// description of the request as it arrived (which workload answered, what
// the sidecar added, and who called, from the client certificate details
// the sidecar forwards); GET /call/<upstream>/<path> makes it call one of
// its upstreams through its own sidecar and report both hops. Over TCP it
// echoes each line prefixed with its name.
//
// It is a test fixture and a demo, not a component of the control plane;
// it trusts whatever its sidecar tells it.
package demoapp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"
)

// Config configures an app.
type Config struct {
	// Name identifies the app in its answers (the workload name).
	Name string
	// HTTP lists addresses (host:port) to serve HTTP on.
	HTTP []string
	// TCP lists addresses to serve the line echo on.
	TCP []string
	// Upstreams maps an upstream name to the base URL the app calls it at
	// (its sidecar's outbound listener).
	Upstreams map[string]string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Reply is the JSON body of every HTTP answer that is not a /call.
type Reply struct {
	Workload string `json:"workload"`
	Method   string `json:"method"`
	Path     string `json:"path"`
	Host     string `json:"host"`
	// Caller is the SPIFFE ID of the calling workload, as the sidecar
	// reports it in x-forwarded-client-cert; empty without mTLS.
	Caller string `json:"caller,omitempty"`
	// RequestID is the x-request-id the sidecars attach.
	RequestID string `json:"requestID,omitempty"`
	// Peer is the address the connection came from (the sidecar).
	Peer    string            `json:"peer"`
	Headers map[string]string `json:"headers,omitempty"`
}

// CallReply is the JSON body of a /call answer.
type CallReply struct {
	Workload string          `json:"workload"`
	Upstream string          `json:"upstream"`
	URL      string          `json:"url"`
	Status   int             `json:"status"`
	Error    string          `json:"error,omitempty"`
	Body     json.RawMessage `json:"body,omitempty"`
	Text     string          `json:"text,omitempty"`
}

// Run serves until ctx ends. It returns an error if any address cannot be
// bound.
func Run(ctx context.Context, cfg Config) error {
	a, err := Start(cfg)
	if err != nil {
		return err
	}
	<-ctx.Done()
	a.Close()
	return nil
}

// App is a running demo app.
type App struct {
	servers   []*http.Server
	listeners []net.Listener
	wg        sync.WaitGroup
}

// Start binds every address and serves in the background.
func Start(cfg Config) (*App, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	a := &App{}
	h := &handler{cfg: cfg, client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	for _, addr := range cfg.HTTP {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("demo app %s: %w", cfg.Name, err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		a.servers = append(a.servers, srv)
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				cfg.Logger.Error("demo app stopped serving", "app", cfg.Name, "addr", addr, "err", err)
			}
		}()
	}
	for _, addr := range cfg.TCP {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("demo app %s: %w", cfg.Name, err)
		}
		a.listeners = append(a.listeners, l)
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			echo(l, cfg.Name)
		}()
	}
	return a, nil
}

// Close stops serving and waits for the servers to return.
func (a *App) Close() {
	for _, s := range a.servers {
		_ = s.Close()
	}
	for _, l := range a.listeners {
		_ = l.Close()
	}
	a.wg.Wait()
}

func echo(l net.Listener, name string) {
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(time.Minute))
			r := bufio.NewScanner(c)
			for r.Scan() {
				if _, err := fmt.Fprintf(c, "%s: %s\n", name, r.Text()); err != nil {
					return
				}
			}
		}()
	}
}

type handler struct {
	cfg    Config
	client *http.Client
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rest, ok := strings.CutPrefix(r.URL.Path, "/call/"); ok {
		h.call(w, r, rest)
		return
	}
	reply := Reply{
		Workload:  h.cfg.Name,
		Method:    r.Method,
		Path:      r.URL.RequestURI(),
		Host:      r.Host,
		Caller:    callerFromXFCC(r.Header.Get("X-Forwarded-Client-Cert")),
		RequestID: r.Header.Get("X-Request-Id"),
		Peer:      r.RemoteAddr,
		Headers:   map[string]string{},
	}
	for k, v := range r.Header {
		reply.Headers[strings.ToLower(k)] = strings.Join(v, ", ")
	}
	writeJSON(w, http.StatusOK, reply)
}

func (h *handler) call(w http.ResponseWriter, r *http.Request, rest string) {
	name, path, _ := strings.Cut(rest, "/")
	base, ok := h.cfg.Upstreams[name]
	if !ok {
		known := make([]string, 0, len(h.cfg.Upstreams))
		for k := range h.cfg.Upstreams {
			known = append(known, k)
		}
		sort.Strings(known)
		writeJSON(w, http.StatusNotFound, CallReply{Workload: h.cfg.Name, Upstream: name,
			Error: fmt.Sprintf("no upstream %q; this app knows %s", name, strings.Join(known, ", "))})
		return
	}
	target := strings.TrimSuffix(base, "/") + "/" + path
	if r.URL.RawQuery != "" {
		target += "?" + r.URL.RawQuery
	}
	out := CallReply{Workload: h.cfg.Name, Upstream: name, URL: target}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, target, nil)
	if err != nil {
		out.Error = err.Error()
		writeJSON(w, http.StatusBadGateway, out)
		return
	}
	resp, err := h.client.Do(req)
	if err != nil {
		out.Error = err.Error()
		writeJSON(w, http.StatusBadGateway, out)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	out.Status = resp.StatusCode
	if json.Valid(body) {
		out.Body = body
	} else {
		out.Text = string(body)
	}
	writeJSON(w, http.StatusOK, out)
}

// callerFromXFCC returns the URI of the first element of an
// x-forwarded-client-cert header: the identity of the immediate caller.
// An element with several URIs names no one: a workload identity is
// exactly one URI SAN, and picking one of several would tell the app an
// identity the sidecar may not have authorized on (the sidecars refuse
// such certificates; this is the app not relying on it).
func callerFromXFCC(xfcc string) string {
	if xfcc == "" {
		return ""
	}
	first, _, _ := strings.Cut(xfcc, ",")
	caller := ""
	for _, kv := range strings.Split(first, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "URI") {
			continue
		}
		if caller != "" {
			return ""
		}
		u, err := url.Parse(strings.Trim(strings.TrimSpace(v), `"`))
		if err != nil {
			return ""
		}
		caller = u.String()
	}
	return caller
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
