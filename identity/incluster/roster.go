package incluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RosterKey is the key, in a replica's evidence ConfigMap beside
// EvidenceKey, of the roster of the proxies connected to that replica
// (rosterDoc): what the replica, restarted under the same holder name,
// waits for before its gates pass. Only the replica itself reads it.
const RosterKey = "roster.json"

// maxRosterBytes keeps the roster and the evidence (maxEvidenceBytes)
// together under the 1 MiB a ConfigMap may hold.
const maxRosterBytes = 192 << 10

// rosterDoc is the JSON kept under RosterKey.
type rosterDoc struct {
	Version int `json:"version"`
	// Total is how many proxies were connected; Nodes holds at most the
	// evidence's MaxProxies of them, and Truncated says some were left
	// out: such a roster cannot say who to wait for.
	Total     int      `json:"total"`
	Truncated bool     `json:"truncated,omitempty"`
	Nodes     []string `json:"nodes"`
}

// rosterRead is what readRoster found.
type rosterRead struct {
	nodes []string
	known bool
	err   error
}

// readRoster reads this replica's roster from its evidence ConfigMap.
// No ConfigMap: no proxy was ever connected to a replica of this name
// (or it was forgotten, its proxies long reconnected to the others),
// so the roster is known and empty. A ConfigMap without a roster (one
// written before rosters were kept, or by a replica stopped before its
// warm-up ended), or with a truncated one, is unknown; one that cannot
// be read or decoded is unknown with an error.
func (e *Evidence) readRoster(ctx context.Context) rosterRead {
	cm, err := e.cfg.Client.CoreV1().ConfigMaps(e.cfg.Namespace).Get(ctx, e.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return rosterRead{known: true}
	case err != nil:
		return rosterRead{err: fmt.Errorf("kube: read the roster in configmap %s/%s: %w", e.cfg.Namespace, e.name, err)}
	}
	data, ok := cm.Data[RosterKey]
	if !ok {
		return rosterRead{}
	}
	var d rosterDoc
	if err := json.Unmarshal([]byte(data), &d); err != nil {
		return rosterRead{err: fmt.Errorf("kube: configmap %s/%s: %s: %w", e.cfg.Namespace, e.name, RosterKey, err)}
	}
	if d.Version != 1 {
		return rosterRead{err: fmt.Errorf("kube: configmap %s/%s: %s: version: %d is not 1", e.cfg.Namespace, e.name, RosterKey, d.Version)}
	}
	if d.Truncated || len(d.Nodes) != d.Total {
		return rosterRead{}
	}
	e.mu.Lock()
	e.roster = []byte(data)
	e.mu.Unlock()
	return rosterRead{nodes: d.Nodes, known: true}
}

// saveRoster writes nodes as this replica's roster, in its evidence
// ConfigMap, unless the ConfigMap already holds that roster. Past
// MaxProxies nodes (or the size bound) it writes a truncated roster,
// which a restart reads as unknown. The ConfigMap must exist (Publish
// and announce make it): a replica forgotten by the others makes it
// again at its next Publish, and its roster is saved after.
func (e *Evidence) saveRoster(ctx context.Context, nodes []string) error {
	nodes = slices.Compact(slices.Sorted(slices.Values(nodes)))
	d := rosterDoc{Version: 1, Total: len(nodes), Nodes: nodes}
	if d.Nodes == nil {
		d.Nodes = []string{}
	}
	if len(d.Nodes) > e.cfg.MaxProxies {
		d.Nodes, d.Truncated = d.Nodes[:e.cfg.MaxProxies], true
	}
	data, err := json.Marshal(d)
	for err == nil && len(data) > maxRosterBytes && len(d.Nodes) > 0 {
		d.Nodes, d.Truncated = d.Nodes[:len(d.Nodes)/2], true
		data, err = json.Marshal(d)
	}
	if err != nil {
		return fmt.Errorf("kube: roster %s: %w", e.name, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if bytes.Equal(data, e.roster) {
		return nil
	}
	cms := e.cfg.Client.CoreV1().ConfigMaps(e.cfg.Namespace)
	cm, err := cms.Get(ctx, e.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		err = errors.New("not found (it is made again with this replica's next evidence)")
	}
	if err == nil {
		cm = cm.DeepCopy()
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[RosterKey] = string(data)
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("kube: save the roster of connected proxies in configmap %s/%s: %w", e.cfg.Namespace, e.name, err)
	}
	e.roster = data
	if d.Truncated {
		e.log.Warn("roster of connected proxies truncated: after a restart this replica waits the whole warm-up", "proxies", d.Total, "kept", len(d.Nodes))
	}
	return nil
}
