package server

import (
	"context"
	"fmt"
	"log/slog"

	gcplog "github.com/envoyproxy/go-control-plane/pkg/log"

	"github.com/bulwarkmesh/bulwark/internal/bounded"
)

// cacheLogger adapts slog to go-control-plane's logger. The ADS server's
// chatter (a stale nonce skipped, a new subscription) is debug level, and
// so are its warnings. Errors stay errors. Its messages quote what
// clients sent (type URLs), so each is cut and escaped.
type cacheLogger struct{ l *slog.Logger }

var _ gcplog.Logger = cacheLogger{}

func (c cacheLogger) Debugf(format string, args ...any) {
	if c.l.Enabled(context.Background(), slog.LevelDebug) {
		c.l.Debug(bounded.Text(fmt.Sprintf(format, args...), bounded.Message))
	}
}
func (c cacheLogger) Infof(format string, args ...any) {
	if c.l.Enabled(context.Background(), slog.LevelDebug) {
		c.l.Debug(bounded.Text(fmt.Sprintf(format, args...), bounded.Message))
	}
}
func (c cacheLogger) Warnf(format string, args ...any) { c.Debugf(format, args...) }
func (c cacheLogger) Errorf(format string, args ...any) {
	c.l.Error(bounded.Text(fmt.Sprintf(format, args...), bounded.Message))
}
