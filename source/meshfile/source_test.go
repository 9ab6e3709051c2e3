package meshfile

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/internal/testfs"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
	"github.com/bulwarkmesh/bulwark/model"
)

func TestWatchAppliesValidEditsAndKeepsLastGood(t *testing.T) {
	path := writeFile(t, header+validSpec)
	store, logs := runSource(t, path)

	// A valid edit: a second api workload, written the way editors do
	// (to a temporary file, renamed over the original). It may land
	// before the watch has started; Run reads the files once more then.
	added := header + validSpec + "    - {name: api-2, namespace: demo, address: 10.0.0.3, services: [api]}\n"
	testfs.Replace(t, path, added)
	testwait.Until(t, "the new endpoint", 5*time.Second, func() bool { return len(store.Snapshot().Endpoints("demo", "api")) == 2 })

	// An invalid edit is refused: the store keeps both endpoints, and the
	// log names the file, line and field.
	broken := strings.Replace(added, "address: 10.0.0.3", "address: 10.0.0.300", 1)
	testfs.Replace(t, path, broken)
	testwait.Until(t, "the refusal to be logged with its field", 5*time.Second, func() bool {
		return strings.Contains(logs.String(), `field=spec.workloads[2].address`)
	})
	if !strings.Contains(logs.String(), "mesh files refused") || !strings.Contains(logs.String(), "line=22") {
		t.Errorf("log does not locate the problem:\n%s", logs.String())
	}
	if n := len(store.Snapshot().Endpoints("demo", "api")); n != 2 {
		t.Errorf("after an invalid edit the store has %d api endpoints, want the last good 2", n)
	}

	// Fixing the file applies it.
	testfs.Replace(t, path, header+validSpec)
	testwait.Until(t, "the fix", 5*time.Second, func() bool { return len(store.Snapshot().Endpoints("demo", "api")) == 1 })
}

// TestEditBeforeTheWatchStartsIsApplied: a file changed after New read it
// but before Run's watches exist produces no event; Run reads it again.
func TestEditBeforeTheWatchStartsIsApplied(t *testing.T) {
	path := writeFile(t, header+validSpec)
	store := model.NewStore()
	src, err := New(context.Background(), Config{Paths: []string{path}, Store: store, Debounce: 20 * time.Millisecond, Logger: testlog.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	testfs.Replace(t, path, header+validSpec+"    - {name: api-2, namespace: demo, address: 10.0.0.3, services: [api]}\n")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testwait.Until(t, "the edit made before Run", 5*time.Second, func() bool { return len(store.Snapshot().Endpoints("demo", "api")) == 2 })
}

func TestNewRefusesAnInvalidFileAtStart(t *testing.T) {
	path := writeFile(t, header+strings.Replace(validSpec, "10.0.0.2", "nope", 1))
	_, err := New(context.Background(), Config{Paths: []string{path}, Store: model.NewStore(), Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), `spec.workloads[1].address: "nope" is not an IP address`) {
		t.Fatalf("New = %v, want the address error", err)
	}
}

// runSource runs a source watching path with a short debounce until the
// test ends, and returns its store and what it logged.
func runSource(t *testing.T, path string) (*model.Store, *testlog.Lines) {
	t.Helper()
	store := model.NewStore()
	logs := &testlog.Lines{}
	src, err := New(context.Background(), Config{Paths: []string{path}, Store: store, Debounce: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return store, logs
}
