package fanout_test

import (
	"slices"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bulwarkmesh/bulwark/xds"
	"github.com/bulwarkmesh/bulwark/xds/fanout"
)

// withTimeout is a cluster changed in a way that does not touch its
// load assignment, as a new revocation epoch or TLS context does.
func withTimeout(name string, d time.Duration) *clusterv3.Cluster {
	c := cluster(name)
	c.ConnectTimeout = durationpb.New(d)
	return c
}

func prepare(t *testing.T, clusters []*clusterv3.Cluster, clas ...*endpointv3.ClusterLoadAssignment) fanout.Config {
	t.Helper()
	cfg, err := fanout.NewPreparer().Prepare([]*xds.Part{{Resources: xds.Resources{Clusters: clusters, Endpoints: clas}}})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestChangedClusterGetsItsLoadAssignmentAgain: Envoy keeps a changed
// EDS cluster warming until its load assignment arrives, changed or
// not, so a stream that is sent a changed cluster is sent that
// cluster's load assignment again right behind it: at once when its
// endpoints request is waiting, else on the next one. Unchanged
// clusters' load assignments are not resent.
func TestChangedClusterGetsItsLoadAssignmentAgain(t *testing.T) {
	clas := []*endpointv3.ClusterLoadAssignment{cla("a", "10.0.0.1"), cla("b", "10.0.0.2")}
	c := fanout.NewCache()
	c.SetNode(node, prepare(t, []*clusterv3.Cluster{cluster("a"), cluster("b")}, clas...))
	w := newWatcher(t, c)
	w.request(resourcev3.ClusterType, "")
	cds := w.recv()
	w.request(resourcev3.EndpointType, "", "a", "b")
	eds := w.recv()
	cancelCDS := w.request(resourcev3.ClusterType, cds.GetVersionInfo())
	cancelEDS := w.request(resourcev3.EndpointType, eds.GetVersionInfo(), "a", "b")
	w.none()

	// Cluster a changes, its endpoints do not: the waiting endpoints
	// request is answered with a's, after the clusters.
	c.SetNode(node, prepare(t, []*clusterv3.Cluster{withTimeout("a", time.Second), cluster("b")}, clas...))
	if cds = w.recv(); cds.GetTypeUrl() != resourcev3.ClusterType {
		t.Fatalf("first response is %s, want the clusters", cds.GetTypeUrl())
	}
	cancelCDS()
	cancelCDS = w.request(resourcev3.ClusterType, cds.GetVersionInfo())
	eds = w.recv()
	if got := names(t, eds); eds.GetTypeUrl() != resourcev3.EndpointType || !slices.Equal(got, []string{"a"}) {
		t.Fatalf("after the changed cluster: %s %v, want a's load assignment", eds.GetTypeUrl(), got)
	}
	cancelEDS()
	// Envoy's own request for the warming cluster's endpoints, or the
	// ACK: nothing more to send.
	cancelEDS = w.request(resourcev3.EndpointType, eds.GetVersionInfo(), "a", "b")
	w.none()

	// No endpoints request waiting (a response in flight): the next one
	// gets b's.
	cancelEDS()
	c.SetNode(node, prepare(t, []*clusterv3.Cluster{withTimeout("a", time.Second), withTimeout("b", time.Second)}, clas...))
	if cds = w.recv(); cds.GetTypeUrl() != resourcev3.ClusterType {
		t.Fatalf("got %s, want the clusters", cds.GetTypeUrl())
	}
	cancelCDS()
	w.request(resourcev3.ClusterType, cds.GetVersionInfo())
	w.none()
	w.request(resourcev3.EndpointType, eds.GetVersionInfo(), "a", "b")
	if got := names(t, w.recv()); !slices.Equal(got, []string{"b"}) {
		t.Errorf("after b changed: %v, want b's load assignment", got)
	}
}
