package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/bulwarkmesh/bulwark/controlplane"
)

// TestKindExampleKeepsDebugOnLoopback: the control plane of the kind
// example serves its unauthenticated /debug endpoints on loopback only
// (kubectl port-forward reaches them); what the kubelet probes and
// Prometheus scrapes is the metrics listener, which has no /debug.
func TestKindExampleKeepsDebugOnLoopback(t *testing.T) {
	data, err := os.ReadFile("../../examples/kind/03-controlplane.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c *corev1.Container
	for _, doc := range bytes.Split(data, []byte("\n---\n")) {
		var d appsv1.Deployment
		if err := yaml.Unmarshal(doc, &d); err != nil {
			t.Fatal(err)
		}
		if d.Kind == "Deployment" && d.Name == "bulwark" {
			c = &d.Spec.Template.Spec.Containers[0]
		}
	}
	if c == nil {
		t.Fatal("no bulwark Deployment")
	}
	flags := map[string]string{}
	for _, a := range c.Args {
		if k, v, ok := strings.Cut(a, "="); ok {
			flags[k] = v
		}
	}
	port := func(flag string) int32 {
		host, p, err := net.SplitHostPort(flags[flag])
		if err != nil {
			t.Fatalf("%s=%q: %v", flag, flags[flag], err)
		}
		if flag == "--http-address" {
			if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
				t.Errorf("--http-address=%s: the debug endpoints are not on loopback", flags[flag])
			}
		}
		n, _ := strconv.Atoi(p)
		return int32(n)
	}
	debug, metrics := port("--http-address"), port("--metrics-address")
	for _, p := range c.Ports {
		if p.ContainerPort == debug {
			t.Errorf("container port %s exposes the debug listener", p.Name)
		}
	}
	if pr := c.ReadinessProbe; pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Port.IntVal != metrics {
		t.Errorf("the readiness probe is not on the metrics listener (%d): %+v", metrics, pr)
	}
	// The admin socket's directory is a volume: the root filesystem is
	// read-only.
	mounted := false
	for _, m := range c.VolumeMounts {
		if m.MountPath == filepath.Dir(controlplane.DefaultKubeAdminSocket) && !m.ReadOnly {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("no writable volume at %s for the admin socket", filepath.Dir(controlplane.DefaultKubeAdminSocket))
	}
	// And serve knows the flag the example uses.
	if _, out, errOut := runCLI(t, "serve", "--help"); !strings.Contains(out+errOut, "-metrics-address") {
		t.Errorf("serve has no --metrics-address:\n%s%s", out, errOut)
	}
}
