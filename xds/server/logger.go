package server

import (
	"context"
	"fmt"
	"log/slog"

	gcplog "github.com/envoyproxy/go-control-plane/pkg/log"
)

// cacheLogger adapts slog to go-control-plane's logger. The ADS server's
// chatter (a stale nonce skipped, a new subscription) is debug level, and
// so are its warnings. Errors stay errors.
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
