package connlimit

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Listener.
type Config struct {
	// Max is the most connections open at once; zero or negative means
	// no limit.
	Max int
	// MaxPerSource is the most connections open at once from one source
	// IP address; zero or negative means no limit. Addresses are compared
	// after unmapping IPv4-in-IPv6, so ::ffff:10.0.0.1 is 10.0.0.1.
	MaxPerSource int
	// Logger receives one line when connections start being refused and
	// then at most one per LogEvery, with the number refused since; nil
	// means slog.Default().
	Logger *slog.Logger
	// LogEvery defaults to a minute.
	LogEvery time.Duration
	// Registerer, when set, receives the metrics (see metrics.go).
	Registerer prometheus.Registerer
	// Now is the clock for the log's pacing; defaults to time.Now.
	Now func() time.Time
}

// Reasons a connection is refused: the only values of the refused
// metric's label.
const (
	ReasonMax          = "max_connections"
	ReasonMaxPerSource = "max_connections_per_source"
)

// Listener is a net.Listener that closes connections past its caps. It
// is safe for concurrent use. A connection it returns counts against the
// caps until its Close is first called.
type Listener struct {
	net.Listener
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	mu       sync.Mutex
	open     int
	bySource map[netip.Addr]int
	// refusals since the last log line, and when that line was written.
	unlogged int
	loggedAt time.Time
}

// New wraps inner. Registering the metrics twice on one Registerer
// panics, as prometheus.MustRegister does.
func New(inner net.Listener, cfg Config) *Listener {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.LogEvery <= 0 {
		cfg.LogEvery = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Listener{Listener: inner, cfg: cfg, log: cfg.Logger.With("component", "connlimit", "listener", inner.Addr().String()),
		metrics: newMetrics(cfg.Registerer), bySource: map[netip.Addr]int{}}
}

// Accept returns the next connection within the caps. Connections past
// a cap are closed here and never returned; Accept then waits for the
// next one. It returns an error only when the inner listener does.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := source(c.RemoteAddr())
		if reason := l.admit(src); reason != "" {
			// Counted before the close, so whoever sees the close sees
			// the count.
			l.refused(reason, src)
			c.Close()
			continue
		}
		return &conn{Conn: c, l: l, src: src}, nil
	}
}

// Open returns the number of connections open now, in total and from
// src (an IP address).
func (l *Listener) Open(src netip.Addr) (total, fromSource int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open, l.bySource[src.Unmap()]
}

// admit counts a new connection from src, or says which cap refuses it.
func (l *Listener) admit(src netip.Addr) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.cfg.Max > 0 && l.open >= l.cfg.Max:
		return ReasonMax
	case l.cfg.MaxPerSource > 0 && l.bySource[src] >= l.cfg.MaxPerSource:
		return ReasonMaxPerSource
	}
	l.open++
	l.bySource[src]++
	l.metrics.open.Set(float64(l.open))
	return ""
}

func (l *Listener) release(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if n := l.bySource[src] - 1; n > 0 {
		l.bySource[src] = n
	} else {
		delete(l.bySource, src)
	}
	l.metrics.open.Set(float64(l.open))
}

// refused counts a refusal and logs, paced: a flood of refused
// connections must not become a flood of log lines.
func (l *Listener) refused(reason string, src netip.Addr) {
	l.metrics.refused.WithLabelValues(reason).Inc()
	l.mu.Lock()
	l.unlogged++
	now := l.cfg.Now()
	if !l.loggedAt.IsZero() && now.Sub(l.loggedAt) < l.cfg.LogEvery {
		l.mu.Unlock()
		return
	}
	n := l.unlogged
	l.unlogged, l.loggedAt = 0, now
	l.mu.Unlock()
	l.log.Warn("connections refused: over the connection limit", "reason", reason, "last_source", src.String(),
		"refused", n, "max", l.cfg.Max, "max_per_source", l.cfg.MaxPerSource)
}

// source is the IP address a connection comes from; the zero Addr for an
// address that is not IP (a Unix socket), which then shares one count.
func source(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case nil:
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// conn gives its slot back on its first Close.
type conn struct {
	net.Conn
	l    *Listener
	src  netip.Addr
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.src) })
	return err
}
