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

	"github.com/bulwarkmesh/bulwark/internal/bounded"
	"github.com/bulwarkmesh/bulwark/xds/server"
)

// maxStatusBytes bounds what FetchProxies reads: far more than the
// status of the largest mesh, far less than a misbehaving endpoint could
// send.
const maxStatusBytes = 256 << 20

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
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxStatusBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxStatusBytes {
		return nil, fmt.Errorf("%s/debug/proxies: the answer is larger than %d bytes", addr, maxStatusBytes)
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
// certificate), then every rejection with Envoy's message. A node with
// several ADS streams open gets a line per stream, each with its own
// state, and a note naming them. Every value is printed escaped
// (internal/bounded): what a proxy sent cannot move the cursor, clear
// the screen or forge a line.
func WriteProxyStatus(out io.Writer, reports []ProxyReport, now time.Time) {
	if len(reports) == 0 {
		fmt.Fprintln(out, "No proxy is connected.")
		return
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tIDENTITY\tCDS\tEDS\tLDS\tRDS\tCERTIFICATE\tBUNDLE\tCONNECTED")
	var notes, nacks []string
	synced := 0
	for _, r := range reports {
		node := name(r.Node)
		streams := append([]server.StreamStatus{{Stream: r.Stream, Peer: r.Peer, ConnectedAt: r.ConnectedAt, Types: r.Types, Synced: r.Synced}},
			r.OtherStreams...)
		allSynced := true
		var peers []string
		for i, st := range streams {
			label := node
			if len(streams) > 1 {
				label = fmt.Sprintf("%s (stream %d)", node, st.Stream)
				peer := fmt.Sprintf("stream %d from %s", st.Stream, name(st.Peer))
				if i == 0 {
					peer += " (its status is the node's)"
				}
				peers = append(peers, peer)
			}
			cols := []string{label, name(r.Identity)}
			for _, typ := range []string{"cds", "eds", "lds", "rds"} {
				ts, ok := st.Types[typ]
				cols = append(cols, typeState(ts, ok, now))
				if ok && ts.NackError != "" {
					nacks = append(nacks, fmt.Sprintf("%s rejected %s version %s %s ago: %s",
						label, typ, name(ts.NackedVersion), ago(now, ts.NackedAt), bounded.Text(ts.NackError, bounded.Message)))
				}
			}
			cols = append(cols, certState(r, now), bundleState(r.Bundle), ago(now, st.ConnectedAt)+" ago")
			fmt.Fprintln(tw, strings.Join(cols, "\t"))
			allSynced = allSynced && st.Synced && !nacked(st)
		}
		if len(streams) > 1 {
			notes = append(notes, fmt.Sprintf("%s has %d ADS streams open: %s. An Envoy restarting has two for a while; "+
				"otherwise another process holds the workload's key.", node, len(streams), strings.Join(peers, ", ")))
		}
		if allSynced {
			synced++
		}
	}
	_ = tw.Flush()
	fmt.Fprintf(out, "\n%d of %d proxies run everything they were sent.\n", synced, len(reports))
	for _, n := range notes {
		fmt.Fprintln(out, n)
	}
	for _, n := range nacks {
		fmt.Fprintln(out, n)
	}
}

// name is a value of a report as printed: escaped, and cut to what any
// valid one needs.
func name(s string) string { return bounded.Text(s, bounded.Name) }

// nacked reports whether a stream rejected the last version of a type
// it was sent.
func nacked(st server.StreamStatus) bool {
	for _, ts := range st.Types {
		if ts.NackError != "" && ts.NackedVersion == ts.SentVersion {
			return true
		}
	}
	return false
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

// bundleState is the trust bundle sequence the proxy's agent and its
// Envoy hold, agent/proxy, marked BEHIND when the Envoy's is not the
// current one: the proxies that hold up an activation.
func bundleState(b *BundleStatus) string {
	switch {
	case b == nil:
		return "-"
	case !b.Reported:
		return fmt.Sprintf("? BEHIND (no report; current %d)", b.Current)
	case min(b.AgentSeq, b.ProxySeq) < b.Current:
		return fmt.Sprintf("%d/%d BEHIND (current %d)", b.AgentSeq, b.ProxySeq, b.Current)
	default:
		return fmt.Sprintf("%d/%d", b.AgentSeq, b.ProxySeq)
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
