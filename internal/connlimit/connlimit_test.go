package connlimit_test

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulwarkmesh/bulwark/internal/connlimit"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
)

// server accepts on a limited listener and keeps what it accepts, as a
// server whose clients never finish their handshake would.
type server struct {
	l        *connlimit.Listener
	mu       sync.Mutex
	accepted []net.Conn
}

func serve(t *testing.T, cfg connlimit.Config) *server {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{l: connlimit.New(inner, cfg)}
	go func() {
		for {
			c, err := s.l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.accepted = append(s.accepted, c)
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		s.l.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, c := range s.accepted {
			c.Close()
		}
	})
	return s
}

// dial connects from the loopback address from (Linux routes all of
// 127/8 to loopback, so each is a source of its own).
func dial(t *testing.T, s *server, from string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", s.l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// refused reports whether the server closed c at once: a read sees EOF
// (or a reset) instead of waiting.
func refused(t *testing.T, c net.Conn) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	if err == nil {
		t.Fatal("the server sent a byte; it never writes")
	}
	return true
}

func waitOpen(t *testing.T, s *server, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if total, _ := s.l.Open(netip.Addr{}); total == want {
			return
		}
		if time.Now().After(deadline) {
			total, _ := s.l.Open(netip.Addr{})
			t.Fatalf("%d connections open, want %d", total, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCapsRefuseAtOnceAndFreeOnClose(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := serve(t, connlimit.Config{Max: 5, MaxPerSource: 3, Registerer: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})

	// Three from one source; the fourth from it is refused.
	var a []net.Conn
	for range 3 {
		a = append(a, dial(t, s, "127.0.0.1"))
	}
	waitOpen(t, s, 3)
	if !refused(t, dial(t, s, "127.0.0.1")) {
		t.Error("a fourth connection from 127.0.0.1 was accepted; the cap per source is 3")
	}
	// Another source still gets in, up to the total of 5.
	b1, b2 := dial(t, s, "127.0.0.2"), dial(t, s, "127.0.0.2")
	for _, c := range append(a, b1, b2) {
		if refused(t, c) {
			t.Fatal("a connection within the caps was closed")
		}
	}
	if !refused(t, dial(t, s, "127.0.0.3")) {
		t.Error("a sixth connection was accepted; the total cap is 5")
	}
	if got := refusedCount(t, reg, connlimit.ReasonMaxPerSource); got != 1 {
		t.Errorf("refused per source = %v, want 1", got)
	}
	if got := refusedCount(t, reg, connlimit.ReasonMax); got != 1 {
		t.Errorf("refused over the total = %v, want 1", got)
	}

	// A connection the server closes gives its slot back.
	s.mu.Lock()
	first := s.accepted[0]
	s.mu.Unlock()
	first.Close()
	first.Close() // twice: counted once
	waitOpen(t, s, 4)
	if total, from := s.l.Open(netip.MustParseAddr("127.0.0.1")); total != 4 || from != 2 {
		t.Errorf("after one close: %d open, %d from 127.0.0.1; want 4 and 2", total, from)
	}
	if refused(t, dial(t, s, "127.0.0.1")) {
		t.Error("a connection was refused after a slot came free")
	}
}

func TestNoCapsMeansNoLimit(t *testing.T) {
	s := serve(t, connlimit.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	for range 50 {
		dial(t, s, "127.0.0.1")
	}
	waitOpen(t, s, 50)
}

// TestRefusalsAreLoggedPaced: a flood of refused connections is one log
// line, then one per LogEvery with the count since.
func TestRefusalsAreLoggedPaced(t *testing.T) {
	var buf testlog.Lines
	now := time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)
	var clockMu sync.Mutex
	clock := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	s := serve(t, connlimit.Config{Max: 1, Logger: slog.New(slog.NewTextHandler(&buf, nil)), LogEvery: time.Minute, Now: clock})
	dial(t, s, "127.0.0.1")
	waitOpen(t, s, 1)
	for range 20 {
		if !refused(t, dial(t, s, "127.0.0.1")) {
			t.Fatal("accepted past the cap")
		}
	}
	if n := strings.Count(buf.String(), "connections refused"); n != 1 {
		t.Fatalf("%d log lines for 20 refusals in the same minute, want 1:\n%s", n, buf.String())
	}
	clockMu.Lock()
	now = now.Add(time.Minute)
	clockMu.Unlock()
	refused(t, dial(t, s, "127.0.0.1"))
	out := buf.String()
	if n := strings.Count(out, "connections refused"); n != 2 || !strings.Contains(out, "refused=20") {
		t.Errorf("after a minute: want a second line counting 20 refusals since the first, got:\n%s", out)
	}
}

// refusedCount reads the refused counter for reason from reg.
func refusedCount(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "bulwark_grpc_refused_connections_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no refused series for %s", reason)
	return 0
}
