package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/internal/envoy"
	"github.com/bulwarkmesh/bulwark/internal/envoy/envoytest"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
	"github.com/bulwarkmesh/bulwark/localmesh"
	"github.com/bulwarkmesh/bulwark/localmesh/demoapp"
)

// TestExampleMesh runs what `make run` runs, the example mesh with its
// policies, and checks the calls the banner suggests: frontend -> api is
// allowed over mTLS, other -> api is denied, api -> db (TCP) works.
func TestExampleMesh(t *testing.T) {
	bin := envoytest.Bin(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m, err := localmesh.Start(ctx, localmesh.Config{
		MeshPaths: []string{"../../examples/local/mesh.yaml"}, XDSAddress: "127.0.0.1:0", HTTPAddress: "127.0.0.1:0",
		EnvoyBin: bin, WorkDir: filepath.Join(t.TempDir(), "work"), Logger: testlog.New(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := m.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	}()
	var banner bytes.Buffer
	m.Banner(&banner)
	for _, want := range []string{"frontend-1 -> api: allowed by demo/api-from-frontend/0", "other-1 -> api: denied (403) by ~default-deny", "8080 STRICT",
		"bulwark proxy-status --http-address " + m.ControlPlane().HTTPAddr.String()} {
		if !strings.Contains(banner.String(), want) {
			t.Errorf("banner lacks %q:\n%s", want, banner.String())
		}
	}

	callAPI := func(app string) demoapp.CallReply {
		t.Helper()
		resp, err := http.Get("http://" + app + "/call/api/hello")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r demoapp.CallReply
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := callAPI("127.0.2.1:8080"); r.Status != 200 || !strings.Contains(string(r.Body), `"caller": "spiffe://cluster.local/ns/demo/sa/frontend"`) {
		t.Errorf("frontend -> api: %+v", r)
	}
	if r := callAPI("127.0.2.5:8080"); r.Status != 403 {
		t.Errorf("other -> api: status %d, want 403", r.Status)
	}

	// api's app reaches db through its sidecar's TCP listener.
	conn, err := net.DialTimeout("tcp", "127.0.2.2:15432", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("select 1\n")); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || line != "db-1: select 1\n" {
		t.Errorf("api -> db: %q, %v", line, err)
	}

	// `bulwark proxy-status`: every sidecar is connected and runs what it
	// was sent, and the certificate the control plane reports for it is
	// the one its Envoy holds.
	var reports []controlplane.ProxyReport
	testwait.Until(t, "every sidecar connected and synced", 10*time.Second, func() bool {
		reports, err = controlplane.FetchProxies(ctx, m.ControlPlane().HTTPAddr.String())
		if err != nil || len(reports) != len(m.Sidecars()) {
			return false
		}
		for _, r := range reports {
			if !r.Synced {
				return false
			}
		}
		return true
	})
	byWorkload := map[string]controlplane.ProxyReport{}
	for _, r := range reports {
		byWorkload[r.Workload] = r
	}
	for _, sc := range m.Sidecars() {
		r, ok := byWorkload[sc.Workload.Key()]
		if !ok || r.Certificate == nil {
			t.Errorf("%s: no certificate in the status: %+v", sc.Workload.Key(), r)
			continue
		}
		if held := envoySerial(t, sc.Admin); !strings.EqualFold(strings.TrimLeft(held, "0"), strings.TrimLeft(r.Certificate.Serial, "0")) {
			t.Errorf("%s: status reports certificate %s, Envoy holds %s", sc.Workload.Key(), r.Certificate.Serial, held)
		}
		if left := time.Until(r.Certificate.Expires); left < 23*time.Hour || left > 24*time.Hour {
			t.Errorf("%s: certificate expires in %s, want about 24h", sc.Workload.Key(), left)
		}
	}
	var table bytes.Buffer
	controlplane.WriteProxyStatus(&table, reports, time.Now())
	if want := fmt.Sprintf("%d of %d proxies run everything they were sent", len(reports), len(reports)); !strings.Contains(table.String(), want) ||
		strings.Contains(table.String(), "NACKED") || !strings.Contains(table.String(), "demo/frontend-1  spiffe://cluster.local/ns/demo/sa/frontend  SYNCED") {
		t.Errorf("proxy status table:\n%s", table.String())
	}
}

// envoySerial returns the serial of the workload certificate an Envoy
// holds, from its admin interface.
func envoySerial(t *testing.T, admin string) string {
	t.Helper()
	body, err := envoy.AdminGet(context.Background(), admin, "/certs")
	if err != nil {
		t.Fatalf("certs from %s: %v", admin, err)
	}
	serial, err := envoy.CertSerial(body, "spiffe://")
	if err != nil || serial == "" {
		t.Fatalf("%s holds no workload certificate (%v):\n%s", admin, err, body)
	}
	return serial
}
