package controlplane

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/identity/issuer"
	"github.com/bulwarkmesh/bulwark/xds/server"
)

func TestWriteProxyStatus(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	synced := func(v string) server.TypeStatus {
		return server.TypeStatus{SentVersion: v, SentAt: now.Add(-time.Minute), AckedVersion: v, AckedAt: now.Add(-time.Minute)}
	}
	reports := []ProxyReport{
		{ProxyStatus: server.ProxyStatus{Node: "demo/api-1", Workload: "demo/api-1", Identity: "spiffe://td/ns/demo/sa/api",
			ConnectedAt: now.Add(-2 * time.Hour), Synced: false,
			Types: map[string]server.TypeStatus{
				"cds": synced("c1"),
				"eds": {SentVersion: "e2", SentAt: now.Add(-3 * time.Second), AckedVersion: "e1"},
				"lds": {SentVersion: "l2", AckedVersion: "l1", NackedVersion: "l2", NackError: "duplicate filter chain", NackedAt: now.Add(-90 * time.Second)},
			}},
			Certificate: &issuer.Issued{Serial: "ab", Expires: now.Add(-5 * time.Minute)},
			Bundle:      &BundleStatus{Reported: true, AgentSeq: 6, ProxySeq: 5, Current: 6}},
		{ProxyStatus: server.ProxyStatus{Node: "demo/db-1", Workload: "demo/db-1", Identity: "spiffe://td/ns/demo/sa/db",
			ConnectedAt: now.Add(-30 * time.Second), Synced: true,
			Types: map[string]server.TypeStatus{"cds": synced("c"), "lds": synced("l")}},
			Certificate: &issuer.Issued{Serial: "cd", Expires: now.Add(12*time.Hour + 30*time.Minute)},
			Bundle:      &BundleStatus{Reported: true, AgentSeq: 6, ProxySeq: 6, Current: 6}},
		{ProxyStatus: server.ProxyStatus{Node: "demo/new-1", Workload: "demo/new-1", Identity: "spiffe://td/ns/demo/sa/new",
			ConnectedAt: now.Add(-time.Second), Synced: true, Types: map[string]server.TypeStatus{}},
			Bundle: &BundleStatus{Current: 6}},
		{ProxyStatus: server.ProxyStatus{Node: "demo/web-1", Workload: "demo/web-1", Identity: "spiffe://td/ns/demo/sa/web",
			ConnectedAt: now.Add(-time.Second), Synced: true, Types: map[string]server.TypeStatus{}}},
	}
	var out bytes.Buffer
	WriteProxyStatus(&out, reports, now)
	lines := strings.Split(out.String(), "\n")
	fields := func(prefix string) []string {
		for _, l := range lines {
			if strings.HasPrefix(l, prefix+" ") {
				return strings.Fields(l)
			}
		}
		t.Fatalf("no line for %s:\n%s", prefix, out.String())
		return nil
	}
	for _, tc := range []struct {
		node string
		want []string
	}{
		// node, identity, cds, eds, lds, rds, certificate..., bundle..., connected
		{"demo/api-1", []string{"demo/api-1", "spiffe://td/ns/demo/sa/api", "SYNCED", "STALE", "3s", "NACKED", "-", "EXPIRED", "5m0s", "ago",
			"6/5", "BEHIND", "(current", "6)", "2h0m0s", "ago"}},
		{"demo/db-1", []string{"demo/db-1", "spiffe://td/ns/demo/sa/db", "SYNCED", "-", "SYNCED", "-", "expires", "in", "12h30m0s", "6/6", "30s", "ago"}},
		{"demo/new-1", []string{"demo/new-1", "spiffe://td/ns/demo/sa/new", "-", "-", "-", "-", "-", "(not", "issued", "here)",
			"?", "BEHIND", "(no", "report;", "current", "6)", "1s", "ago"}},
		{"demo/web-1", []string{"demo/web-1", "spiffe://td/ns/demo/sa/web", "-", "-", "-", "-", "-", "(not", "issued", "here)", "-", "1s", "ago"}},
	} {
		if got := fields(tc.node); strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("%s:\n got %q\nwant %q", tc.node, got, tc.want)
		}
	}
	for _, want := range []string{
		"3 of 4 proxies run everything they were sent.",
		"demo/api-1 rejected lds version l2 1m30s ago: duplicate filter chain",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}

	out.Reset()
	WriteProxyStatus(&out, nil, now)
	if out.String() != "No proxy is connected.\n" {
		t.Errorf("no proxies: %q", out.String())
	}
}
