package controlplane

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bulwarkmesh/bulwark/xds/server"
)

// FetchProxies asks the control plane serving HTTP at addr (its
// --http-address) for its /debug/proxies.
func FetchProxies(ctx context.Context, addr string) ([]ProxyReport, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/proxies", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ask the control plane: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s/debug/proxies: %s", addr, resp.Status)
	}
	var reports []ProxyReport
	if err := json.Unmarshal(body, &reports); err != nil {
		return nil, fmt.Errorf("%s/debug/proxies: %w", addr, err)
	}
	return reports, nil
}

// WriteProxyStatus prints one line per proxy (its xDS types and its
// certificate), then every rejection with Envoy's message.
func WriteProxyStatus(out io.Writer, reports []ProxyReport, now time.Time) {
	if len(reports) == 0 {
		fmt.Fprintln(out, "No proxy is connected.")
		return
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tIDENTITY\tCDS\tEDS\tLDS\tRDS\tCERTIFICATE\tCONNECTED")
	var nacks []string
	synced := 0
	for _, r := range reports {
		cols := []string{r.Node, r.Identity}
		for _, typ := range []string{"cds", "eds", "lds", "rds"} {
			ts, ok := r.Types[typ]
			cols = append(cols, typeState(ts, ok, now))
			if ok && ts.NackError != "" {
				nacks = append(nacks, fmt.Sprintf("%s rejected %s version %s %s ago: %s",
					r.Node, typ, ts.NackedVersion, ago(now, ts.NackedAt), ts.NackError))
			}
		}
		cols = append(cols, certState(r, now), ago(now, r.ConnectedAt)+" ago")
		fmt.Fprintln(tw, strings.Join(cols, "\t"))
		if r.Synced {
			synced++
		}
	}
	_ = tw.Flush()
	fmt.Fprintf(out, "\n%d of %d proxies run everything they were sent.\n", synced, len(reports))
	for _, n := range nacks {
		fmt.Fprintln(out, n)
	}
}

// typeState is SYNCED when the proxy ACKed the last version it was sent,
// NACKED when it rejected it (it keeps running the version before), and
// STALE while the ACK is outstanding.
func typeState(ts server.TypeStatus, ok bool, now time.Time) string {
	switch {
	case !ok || ts.SentVersion == "":
		return "-"
	case ts.NackError != "" && ts.NackedVersion == ts.SentVersion:
		return "NACKED"
	case ts.AckedVersion == ts.SentVersion:
		return "SYNCED"
	default:
		return "STALE " + ago(now, ts.SentAt)
	}
}

func certState(r ProxyReport, now time.Time) string {
	c := r.Certificate
	switch {
	case c == nil:
		return "- (not issued here)"
	case !c.Expires.After(now):
		return "EXPIRED " + ago(now, c.Expires) + " ago"
	default:
		return "expires in " + c.Expires.Sub(now).Round(time.Minute).String()
	}
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "?"
	}
	d := now.Sub(t)
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	default:
		return d.Round(time.Minute).String()
	}
}
