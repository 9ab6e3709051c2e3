package meshfile

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/internal/testfs"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
)

// TestAnEditIsNotHeldBehindABigFile: in bulwark serve, a valid edit made
// while a big file is being loaded is applied without waiting for that
// load, which it makes stale, and a file over the limit is refused at
// once. Before, every edit waited for the load before it: seconds for a
// few megabytes, minutes for a file of the shapes.
func TestAnEditIsNotHeldBehindABigFile(t *testing.T) {
	size := 6 << 20
	if raceDetector {
		size /= 10
	}
	big := bigMesh(size) + "    - {name: w-bad, namespace: bench, address: nope}\n" // refused at its end
	bigPath := writeFile(t, big)
	start := time.Now()
	if _, err := Load(context.Background(), []string{bigPath}); err == nil {
		t.Fatal("the big file loads; it should be refused at its end")
	}
	slow := time.Since(start)
	t.Logf("the big file takes %v to be refused", slow)

	for _, tt := range []struct {
		name  string
		body  string
		after time.Duration // wait this long before the edit
		log   string
	}{
		{"a file under the limit", big, slow / 10, ""},
		{"a file over the limit", big + strings.Repeat("#\n", MaxFileSize/2), slow / 10, "the limit for one mesh file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, header+validSpec)
			store, logs := runSource(t, path)

			testfs.Replace(t, path, tt.body)
			time.Sleep(20*time.Millisecond + tt.after) // its load has started, or is over
			edited := time.Now()
			testfs.Replace(t, path, header+validSpec+"    - {name: api-2, namespace: demo, address: 10.0.0.3, services: [api]}\n")
			testwait.Until(t, "the valid edit", 30*time.Second, func() bool { return len(store.Snapshot().Endpoints("demo", "api")) == 2 })
			if took := time.Since(edited); took > slow/2 {
				t.Errorf("the edit took %v to apply, behind a load that takes %v", took, slow)
			}
			if tt.log != "" && !strings.Contains(logs.String(), tt.log) {
				t.Errorf("the refusal is not logged with the limit:\n%s", logs.String())
			}
		})
	}
}
