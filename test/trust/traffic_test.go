package trust

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/localmesh/demoapp"
)

// pair is one call of the topology: from's app calling to's service
// through from's sidecar.
type pair struct{ from, to *workload }

func (p pair) String() string { return p.from.name + "->" + p.to.name }

// pairs returns every call of the topology, in topology order.
func (m *mesh) pairs() []pair {
	var out []pair
	for _, from := range m.workloads {
		for _, svc := range from.calls {
			for _, to := range m.workloads {
				if to.service == svc {
					out = append(out, pair{from, to})
				}
			}
		}
	}
	return out
}

// involves reports whether w is either end of p.
func (p pair) involves(w *workload) bool { return p.from == w || p.to == w }

// newKeepAliveClient keeps one connection to the caller's sidecar open
// across requests; the sidecar keeps its pooled mTLS connection to the
// callee's sidecar open behind it.
func newKeepAliveClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
}

// httpOnce makes one HTTP request of p and checks that the callee's app
// answered it and that the callee's sidecar saw the caller's identity.
func (p pair) httpOnce(c *http.Client, n uint64) error {
	h, _ := localPorts(p.to.service)
	resp, err := c.Get(fmt.Sprintf("http://%s:%d/trust/%d", p.from.local, h, n))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d: %.200s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	var rep demoapp.Reply
	if err := json.Unmarshal(body, &rep); err != nil {
		return fmt.Errorf("answer: %w", err)
	}
	if rep.Workload != p.to.name || rep.Caller != p.from.id() {
		return fmt.Errorf("answered by %q for caller %q, want %s for %s", rep.Workload, rep.Caller, p.to.name, p.from.id())
	}
	return nil
}

// tcpOnce opens a new connection to p's TCP port through the caller's
// sidecar, which opens a new mTLS connection (a full handshake: session
// resumption is off) to the callee's sidecar, and checks the echo.
func (p pair) tcpOnce(n uint64) error {
	_, port := localPorts(p.to.service)
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(p.from.local, strconv.Itoa(port)), 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	if _, err := fmt.Fprintf(conn, "%d\n", n); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("no echo (the sidecars closed the connection): %w", err)
	}
	if want := fmt.Sprintf("%s: %d\n", p.to.name, n); line != want {
		return fmt.Errorf("echo %q, want %q", line, want)
	}
	return nil
}

// kind is how a stream makes its requests.
type kind string

const (
	// keepAlive: HTTP requests on one kept-alive connection; the caller's
	// sidecar reuses its pooled mTLS connection, so no new handshake.
	keepAlive kind = "http-keepalive"
	// fresh: a new TCP connection per request, so a new mTLS handshake
	// between the sidecars every time.
	fresh kind = "tcp-fresh"
)

// interval is how often each stream makes a request.
const interval = 20 * time.Millisecond

// result is one request.
type result struct {
	start time.Time
	took  time.Duration
	err   error
}

// stream is the requests of one kind of one pair, made one at a time
// every interval.
type stream struct {
	pair pair
	kind kind

	mu      sync.Mutex
	results []result
}

func (s *stream) String() string { return s.pair.String() + " " + string(s.kind) }

func (s *stream) add(r result) {
	s.mu.Lock()
	s.results = append(s.results, r)
	s.mu.Unlock()
}

// between returns the requests that started in [from, to).
func (s *stream) between(from, to time.Time) []result {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []result
	for _, r := range s.results {
		if !r.start.Before(from) && r.start.Before(to) {
			out = append(out, r)
		}
	}
	return out
}

// traffic is every stream of a mesh, running until stop.
type traffic struct {
	streams []*stream
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	stopped atomic.Bool
}

// startTraffic starts a keep-alive stream and a fresh-connection stream
// for every pair of the topology. It is stopped when the test ends, if
// not before.
func (m *mesh) startTraffic(t testing.TB) *traffic {
	ctx, cancel := context.WithCancel(context.Background())
	tr := &traffic{cancel: cancel}
	for _, p := range m.pairs() {
		for _, k := range []kind{keepAlive, fresh} {
			s := &stream{pair: p, kind: k}
			tr.streams = append(tr.streams, s)
			tr.wg.Add(1)
			go func() {
				defer tr.wg.Done()
				s.run(ctx)
			}()
		}
	}
	t.Cleanup(tr.stop)
	return tr
}

func (s *stream) run(ctx context.Context) {
	client := newKeepAliveClient()
	defer client.CloseIdleConnections()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var n uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n++
		start := time.Now()
		var err error
		if s.kind == keepAlive {
			err = s.pair.httpOnce(client, n)
		} else {
			err = s.pair.tcpOnce(n)
		}
		if ctx.Err() != nil {
			return // stopped mid-request: not a result
		}
		s.add(result{start: start, took: time.Since(start), err: err})
	}
}

// stop stops every stream and waits for them.
func (tr *traffic) stop() {
	if tr.stopped.Swap(true) {
		return
	}
	tr.cancel()
	tr.wg.Wait()
}

// stream returns the stream of kind k of pair p.
func (tr *traffic) stream(p pair, k kind) *stream {
	for _, s := range tr.streams {
		if s.pair == p && s.kind == k {
			return s
		}
	}
	panic(fmt.Sprintf("no %s stream for %s", k, p))
}

// summary counts the requests of every stream in [from, to), for the
// log, and returns how many failed in all.
func (tr *traffic) summary(t testing.TB, what string, from, to time.Time, only func(*stream) bool) (total, failed int) {
	t.Helper()
	var lines []string
	for _, s := range tr.streams {
		if only != nil && !only(s) {
			continue
		}
		rs := s.between(from, to)
		nf := 0
		for _, r := range rs {
			if r.err != nil {
				nf++
			}
		}
		total += len(rs)
		failed += nf
		lines = append(lines, fmt.Sprintf("  %-36s %5d requests, %4d failed", s, len(rs), nf))
	}
	t.Logf("traffic %s (%s): %d requests, %d failed\n%s", what, to.Sub(from).Round(time.Millisecond), total, failed, strings.Join(lines, "\n"))
	return total, failed
}

// requireNoFailures fails the test, listing the failures (time and
// error, the first 20 of each stream), if any request of the streams
// selected by only (nil: all) that started in [from, to) failed; and
// if any of them made no request at all.
func (tr *traffic) requireNoFailures(t testing.TB, what string, from, to time.Time, only func(*stream) bool) {
	t.Helper()
	total, failed := tr.summary(t, what, from, to, only)
	var b strings.Builder
	for _, s := range tr.streams {
		if only != nil && !only(s) {
			continue
		}
		rs := s.between(from, to)
		if len(rs) == 0 {
			fmt.Fprintf(&b, "  %s: no request at all\n", s)
		}
		shown := 0
		for _, r := range rs {
			if r.err == nil {
				continue
			}
			if shown++; shown <= 20 {
				fmt.Fprintf(&b, "  %s at %s (+%s): %v\n", s, r.start.Format("15:04:05.000"), r.start.Sub(from).Round(time.Millisecond), r.err)
			}
		}
		if shown > 20 {
			fmt.Fprintf(&b, "  %s: %d more\n", s, shown-20)
		}
	}
	if b.Len() > 0 {
		t.Errorf("%s: %d of %d requests failed, want none:\n%s", what, failed, total, b.String())
	}
}

// freshHandshakes returns how many TLS handshakes the sidecars have
// completed on their inbound TCP ports (where only fresh-connection
// requests arrive) since they started.
func (m *mesh) freshHandshakes() int {
	m.t.Helper()
	n := 0
	for _, w := range m.workloads {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := counters(ctx, w.admin(), fmt.Sprintf(`^listener\..*_%d\.ssl\.handshake$`, tcpPort))
		cancel()
		if err != nil {
			m.t.Fatalf("the Envoy of %s: %v", w.name, err)
		}
		for _, v := range c {
			n += v
		}
	}
	return n
}

// verifyErrors returns how many peer certificates w's Envoy has refused
// (chain verification failed, a revoked leaf included) over all its
// listeners and clusters since it started.
func (w *workload) verifyErrors() int {
	w.m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := counters(ctx, w.admin(), `ssl\.fail_verify_error$`)
	if err != nil {
		w.m.t.Fatalf("the Envoy of %s: %v", w.name, err)
	}
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}
