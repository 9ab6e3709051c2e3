package server

import (
	"context"
	"fmt"
	"log/slog"

	gcplog "github.com/envoyproxy/go-control-plane/pkg/log"
)

// cacheLogger adapts slog to go-control-plane's logger. The cache's own
// chatter is debug level, and so are its warnings: the only one it gives
// ("ADS mode: not responding") is routine while a proxy's subscriptions
// catch up with a new snapshot. Errors stay errors.
type cacheLogger struct{ l *slog.Logger }

var _ gcplog.Logger = cacheLogger{}

func (c cacheLogger) Debugf(format string, args ...any) {
	if c.l.Enabled(context.Background(), slog.LevelDebug) {
		c.l.Debug(fmt.Sprintf(format, args...))
	}
}
func (c cacheLogger) Infof(format string, args ...any) {
	if c.l.Enabled(context.Background(), slog.LevelDebug) {
		c.l.Debug(fmt.Sprintf(format, args...))
	}
}
func (c cacheLogger) Warnf(format string, args ...any)  { c.Debugf(format, args...) }
func (c cacheLogger) Errorf(format string, args ...any) { c.l.Error(fmt.Sprintf(format, args...)) }
