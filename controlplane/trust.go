package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/bulwarkmesh/bulwark/ca/trust"
)

// TrustCoordinator is where the trust State lives and how replicas agree.
//
// In file mode it is a CA directory (trust.DirStore): one control plane,
// always leading, no other replicas. In Kubernetes mode it is the CA
// Secret, with the Lease deciding which replica leads and each replica's
// evidence published for the leader's gates.
type TrustCoordinator interface {
	Store() trust.Store
	// Leading: this replica drives rotations and automatic steps.
	Leading() bool
	// Publish shares this replica's evidence, for the others.
	Publish(ctx context.Context, acks []trust.ProxyAck) error
	// Others is the other replicas' evidence; missing names those whose
	// evidence is absent or stale.
	Others(ctx context.Context) (acks []trust.ProxyAck, missing []string, err error)
	// Changed is closed when the stored state may have changed (nil: poll).
	Changed() <-chan struct{}
}

// DirCoordinator is the file-mode TrustCoordinator: the State in a CA
// directory, one control plane that always leads, no other replicas. The
// control plane polls the directory (Changed is nil).
type DirCoordinator struct {
	Dir *trust.DirStore
}

var _ TrustCoordinator = DirCoordinator{}

// Store returns the directory store.
func (d DirCoordinator) Store() trust.Store { return d.Dir }

// Leading is always true: there is no other replica.
func (DirCoordinator) Leading() bool { return true }

// Publish has no one to publish to.
func (DirCoordinator) Publish(context.Context, []trust.ProxyAck) error { return nil }

// Others are none.
func (DirCoordinator) Others(context.Context) ([]trust.ProxyAck, []string, error) {
	return nil, nil, nil
}

// Changed is nil: poll.
func (DirCoordinator) Changed() <-chan struct{} { return nil }

// RosterKeeper may be implemented by a TrustCoordinator that remembers
// which proxies this replica had connected, across a restart of the
// process. A control plane that has just started knows nothing of the
// proxies until they reconnect: with no evidence, every gate would pass.
// So until its evidence is complete, each gate refuses (Evidence.Missing
// says why): with a roster, until every proxy on it is back, connected
// to this replica or reported by another (or Config.EvidenceWarmup has
// passed); without one, for the whole of Config.EvidenceWarmup. A
// roster that is known and empty waits for nothing.
type RosterKeeper interface {
	// Roster returns the proxies (namespace/name) last saved; known is
	// false when none was ever saved.
	Roster() (nodes []string, known bool, err error)
	// SaveRoster records the proxies connected now.
	SaveRoster(nodes []string) error
}

var _ RosterKeeper = DirCoordinator{}

// RosterFile is where a CA directory keeps the roster of its control
// plane's proxies.
const RosterFile = "trust-proxies.json"

type rosterDoc struct {
	Version int      `json:"version"`
	Nodes   []string `json:"nodes"`
}

// maxRosterBytes bounds the roster file read.
const maxRosterBytes = 16 << 20

func (d DirCoordinator) rosterPath() string {
	return filepath.Join(filepath.Dir(d.Dir.Path()), RosterFile)
}

// Roster reads the roster file of the CA directory.
func (d DirCoordinator) Roster() ([]string, bool, error) { return readRoster(d.rosterPath()) }

// SaveRoster writes the roster file of the CA directory, atomically.
func (d DirCoordinator) SaveRoster(nodes []string) error { return writeRoster(d.rosterPath(), nodes) }

func readRoster(path string) ([]string, bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxRosterBytes+1))
	if err != nil {
		return nil, false, err
	}
	if len(data) > maxRosterBytes {
		return nil, false, fmt.Errorf("%s: larger than %d bytes", path, maxRosterBytes)
	}
	var doc rosterDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, false, fmt.Errorf("%s: %w", path, err)
	}
	if doc.Version != 1 {
		return nil, false, fmt.Errorf("%s: version: %d is not 1", path, doc.Version)
	}
	return doc.Nodes, true, nil
}

func writeRoster(path string, nodes []string) error {
	if nodes == nil {
		nodes = []string{}
	}
	data, err := json.MarshalIndent(rosterDoc{Version: 1, Nodes: nodes}, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".roster-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}

// InitRoster records, for a CA directory just made, that no proxy was
// ever connected: a control plane started on it has no one to wait for.
// It leaves a roster that exists as it is.
func InitRoster(caDir string) error {
	path := filepath.Join(caDir, RosterFile)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	return writeRoster(path, nil)
}
