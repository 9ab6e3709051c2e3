package controlplane

import (
	"bytes"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/bulwarkmesh/bulwark/identity/issuer"
	"github.com/bulwarkmesh/bulwark/xds/server"
)

// TestWriteProxyStatusEscapesWhatItPrints: nothing a proxy (or a
// control plane that did not escape it) put in a status reaches the
// terminal raw: escapes, carriage returns, newlines, tabs and bidi
// overrides are printed escaped, and each proxy stays on its own line.
func TestWriteProxyStatusEscapesWhatItPrints(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	const evil = "\x1b]0;owned\x07\x1b[2J\r\n\tfake line\u202e\x7f\u009b"
	synced := server.TypeStatus{SentVersion: "v1", SentAt: now.Add(-time.Minute), AckedVersion: "v1"}
	for _, tc := range []struct {
		name   string
		report ProxyReport
		want   []string // substrings of the output
	}{
		{"NACK message", ProxyReport{ProxyStatus: server.ProxyStatus{Node: "demo/a-1", Identity: "spiffe://td/ns/demo/sa/a", Streams: 1,
			ConnectedAt: now, Types: map[string]server.TypeStatus{"lds": {SentVersion: "v2", AckedVersion: "v1", NackedVersion: "v2", NackError: evil, NackedAt: now}}}},
			[]string{`demo/a-1 rejected lds version v2 0s ago: \x1b]0;owned\a\x1b[2J\r\n\tfake line\u202e\x7f\u009b`}},
		{"node, identity and versions", ProxyReport{ProxyStatus: server.ProxyStatus{Node: "demo/" + evil, Identity: "spiffe://" + evil, Streams: 1,
			ConnectedAt: now, Types: map[string]server.TypeStatus{"cds": {SentVersion: evil, AckedVersion: "x", NackedVersion: evil, NackError: "no", NackedAt: now}}}},
			[]string{`demo/\x1b]0;owned\a`, `spiffe://\x1b]0;owned\a`, `version \x1b]0;owned\a`}},
		{"another stream's peer", ProxyReport{ProxyStatus: server.ProxyStatus{Node: "demo/b-1", Identity: "spiffe://td/ns/demo/sa/b", Streams: 2, Stream: 9,
			Peer: "10.0.0.9:1", ConnectedAt: now, Types: map[string]server.TypeStatus{"cds": synced},
			OtherStreams: []server.StreamStatus{{Stream: 3, Peer: evil, ConnectedAt: now, Types: map[string]server.TypeStatus{"cds": synced}}}}},
			[]string{`stream 3 from \x1b]0;owned\a`}},
		{"certificate serial", ProxyReport{ProxyStatus: server.ProxyStatus{Node: "demo/c-1", Identity: "spiffe://td/ns/demo/sa/c", Streams: 1, ConnectedAt: now},
			Certificate: &issuer.Issued{Serial: evil, Expires: now.Add(time.Hour)}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			WriteProxyStatus(&out, []ProxyReport{tc.report}, now)
			s := out.String()
			for _, r := range s {
				if r != '\n' && !unicode.IsPrint(r) {
					t.Errorf("a raw %U reaches the terminal:\n%q", r, s)
					break
				}
			}
			if strings.Contains(s, "fake line\n") || strings.Contains(s, "\nfake line") {
				t.Errorf("a newline in a value started a line of its own:\n%s", s)
			}
			for _, w := range tc.want {
				if !strings.Contains(s, w) {
					t.Errorf("output lacks %q:\n%s", w, s)
				}
			}
		})
	}
}

// TestWriteProxyStatusShowsEveryStreamOfANode: a node with two streams
// is shown as two rows, one per stream, each with its own state; the
// NACK of one is not the other's, and the node does not count as synced.
func TestWriteProxyStatusShowsEveryStreamOfANode(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	synced := server.TypeStatus{SentVersion: "c1", SentAt: now.Add(-time.Minute), AckedVersion: "c1"}
	r := ProxyReport{ProxyStatus: server.ProxyStatus{Node: "demo/frontend-1", Workload: "demo/frontend-1",
		Identity: "spiffe://td/ns/demo/sa/frontend", Streams: 2, Stream: 9, Peer: "10.0.0.66:4000", ConnectedAt: now.Add(-2 * time.Second),
		Types:  map[string]server.TypeStatus{"cds": {SentVersion: "c1", AckedVersion: "c1", NackedVersion: "c1", NackError: "forged", NackedAt: now.Add(-time.Second)}},
		Synced: true,
		OtherStreams: []server.StreamStatus{{Stream: 3, Peer: "10.0.0.1:5000", ConnectedAt: now.Add(-time.Hour), Synced: true,
			Types: map[string]server.TypeStatus{"cds": synced, "eds": synced, "lds": synced, "rds": synced}}}}}
	var out bytes.Buffer
	WriteProxyStatus(&out, []ProxyReport{r}, now)
	s := out.String()
	row := func(prefix string) []string {
		for _, l := range strings.Split(s, "\n") {
			if strings.HasPrefix(l, prefix) {
				return strings.Fields(strings.TrimPrefix(l, prefix))
			}
		}
		t.Fatalf("no row %q:\n%s", prefix, s)
		return nil
	}
	// identity, cds, eds, lds, rds, certificate..., bundle, connected
	if got := strings.Join(row("demo/frontend-1 (stream 9)"), " "); got != "spiffe://td/ns/demo/sa/frontend NACKED - - - - (not issued here) - 2s ago" {
		t.Errorf("stream 9: %s", got)
	}
	if got := strings.Join(row("demo/frontend-1 (stream 3)"), " "); got != "spiffe://td/ns/demo/sa/frontend SYNCED SYNCED SYNCED SYNCED - (not issued here) - 1h0m0s ago" {
		t.Errorf("stream 3: %s", got)
	}
	for _, want := range []string{
		"0 of 1 proxies run everything they were sent.",
		"demo/frontend-1 has 2 ADS streams open: stream 9 from 10.0.0.66:4000 (its status is the node's), stream 3 from 10.0.0.1:5000.",
		"demo/frontend-1 (stream 9) rejected cds version c1 1s ago: forged",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "(stream 3) rejected") {
		t.Errorf("stream 3 is shown with a NACK it did not send:\n%s", s)
	}
}
