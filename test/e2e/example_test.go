package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/demoapp"
	"github.com/bulwarkmesh/bulwark/internal/envoy/envoytest"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/localmesh"
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
	for _, want := range []string{"frontend-1 -> api: allowed by demo/api-from-frontend/0", "other-1 -> api: denied (403) by ~default-deny", "8080 STRICT"} {
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
}
