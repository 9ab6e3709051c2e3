package meshfile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/bulwarkmesh/bulwark/model"
	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Source.
type Config struct {
	// Paths are mesh files or directories of them. Required.
	Paths []string
	// Store receives the state. Required.
	Store *model.Store
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the source's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Debounce is how long the files must stay quiet after a change
	// before they are read again (editors write in several steps).
	// Defaults to 200ms.
	Debounce time.Duration
	// Now is the clock; defaults to time.Now.
	Now func() time.Time
	// Check, when set, may refuse a valid state for reasons outside the
	// files (a trust domain other than the CA's); a refused state is
	// handled like an invalid file.
	Check func(*model.State) error
}

// Source keeps the store in line with the mesh files.
type Source struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
}

// New loads the files once and writes them to the store. An invalid file
// at start is an error: there is no last good state to fall back on. It
// gives up when ctx ends.
func New(ctx context.Context, cfg Config) (*Source, error) {
	if len(cfg.Paths) == 0 || cfg.Store == nil {
		return nil, fmt.Errorf("meshfile: Paths and Store are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 200 * time.Millisecond
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Source{cfg: cfg, log: cfg.Logger.With("source", "meshfile"), metrics: newMetrics(cfg.Registerer)}
	if err := s.reload(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// reload reads the files and, if they are valid, replaces the store's
// state with theirs. On error the store is left as it was; a load that
// ctx cancelled counts as neither success nor failure.
func (s *Source) reload(ctx context.Context) error {
	st, err := Load(ctx, s.cfg.Paths)
	if err != nil && ctx.Err() != nil {
		return err
	}
	if err == nil && s.cfg.Check != nil {
		err = s.cfg.Check(st)
	}
	if err != nil {
		s.metrics.reloads.WithLabelValues("failure").Inc()
		s.metrics.lastOK.Set(0)
		return err
	}
	changed, err := s.cfg.Store.ReplaceState(st)
	if err != nil {
		s.metrics.reloads.WithLabelValues("failure").Inc()
		s.metrics.lastOK.Set(0)
		return fmt.Errorf("meshfile: store: %w", err)
	}
	s.metrics.reloads.WithLabelValues("success").Inc()
	s.metrics.lastOK.Set(1)
	s.metrics.lastSuccess.Set(float64(s.cfg.Now().Unix()))
	level := slog.LevelInfo
	if len(changed) == 0 {
		level = slog.LevelDebug // read again, nothing different
	}
	s.log.Log(context.Background(), level, "mesh files loaded", "paths", s.cfg.Paths, "services", len(st.Services),
		"workloads", len(st.Workloads), "changed", changed)
	return nil
}

// Run watches the files until ctx ends, applying each valid edit. An
// invalid edit is logged, one line per problem, and the last good state
// keeps serving. Run returns an error only if the files cannot be
// watched at all.
func (s *Source) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("meshfile: watch: %w", err)
	}
	defer w.Close()
	// Watch directories, not files: editors and Kubernetes ConfigMaps
	// replace files by renaming, which ends a watch on the file itself.
	dirs := map[string]bool{}
	files, err := expand(s.cfg.Paths)
	if err != nil {
		return err
	}
	for _, p := range append(files, s.cfg.Paths...) {
		dir := p
		if !isDir(p) {
			dir = filepath.Dir(p)
		}
		if !dirs[dir] {
			if err := w.Add(dir); err != nil {
				return fmt.Errorf("meshfile: watch %s: %w", dir, err)
			}
			dirs[dir] = true
		}
	}

	// The files may have changed between New reading them and the
	// watches starting: read them once more.
	timer := time.NewTimer(s.cfg.Debounce)
	fire := timer.C
	// A load runs beside the loop, so that an edit made while it runs
	// cancels it: its result would be stale, and the edit should not wait
	// for it (a load may take a second or two near the size limits).
	type load struct {
		done   chan error
		cancel context.CancelFunc
	}
	var running *load
	var loaded <-chan error // running's result; nil when none runs
	finish := func() {
		if running != nil {
			running.cancel()
			<-running.done
			running, loaded = nil, nil
		}
	}
	defer finish()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			if running != nil {
				running.cancel() // it ends soon; the next load waits for it
			}
			timer.Reset(s.cfg.Debounce)
			fire = timer.C
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			s.log.Warn("mesh file watch error", "err", err)
		case <-fire:
			fire = nil
			finish()
			lctx, cancel := context.WithCancel(ctx)
			running = &load{done: make(chan error, 1), cancel: cancel}
			loaded = running.done
			go func(l *load) { l.done <- s.reload(lctx) }(running)
		case err := <-loaded:
			running.cancel()
			running, loaded = nil, nil
			cancelled := errors.Is(err, context.Canceled)
			switch {
			case err == nil:
			case cancelled:
				s.log.Debug("mesh file load given up: the files changed while it ran")
			default:
				s.log.Error("mesh files refused; the last good configuration keeps serving", "problems", len(Errors(err)))
				for _, e := range Errors(err) {
					s.log.Error("mesh file problem", "file", e.File, "line", e.Line, "object", e.Object, "field", e.Path, "problem", e.Detail)
				}
			}
		}
	}
}
