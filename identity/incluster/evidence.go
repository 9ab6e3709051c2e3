package incluster

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/internal/bounded"
)

// Evidence ConfigMaps: one per replica, in the control plane's namespace.
const (
	// EvidenceLabel marks them; the replicas known are the ConfigMaps
	// carrying it.
	EvidenceLabel = "bulwark.dev/trust-evidence"
	// EvidencePrefix starts their names; the replica's holder name
	// follows.
	EvidencePrefix = "bulwark-trust-evidence-"
	// EvidenceKey is the key of the JSON document (evidenceDoc).
	EvidenceKey = "evidence.json"
)

// Defaults of EvidenceConfig.
const (
	DefaultPublishPeriod = 5 * time.Second
	DefaultForgetAfter   = 10 * time.Minute
	DefaultMaxProxies    = 2000
	// MaxLeavesPerProxy bounds the leaves kept per proxy: an agent
	// presents one, two while it replaces it.
	MaxLeavesPerProxy = 4
	// maxEvidenceBytes keeps the document well under the 1 MiB a
	// ConfigMap may hold.
	maxEvidenceBytes = 768 << 10
)

// EvidenceConfig configures an Evidence.
type EvidenceConfig struct {
	Client    kubernetes.Interface // required
	Namespace string               // required: the control plane's namespace
	Holder    string               // required: this replica's name, as in the Lease
	// Period is how often the caller publishes; defaults to
	// DefaultPublishPeriod. A replica's evidence older than StaleAfter
	// (default 3 periods) is reported missing.
	Period, StaleAfter time.Duration
	// ForgetAfter: the ConfigMap of a replica silent for that long
	// (default DefaultForgetAfter) is deleted; that replica is no longer
	// known, so it no longer holds the gates.
	ForgetAfter time.Duration
	// MaxProxies caps the proxies one replica publishes (default
	// DefaultMaxProxies); a replica with more says so, and the others
	// report it missing, since they cannot vouch for the rest.
	MaxProxies int
	// Now is the clock; defaults to time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Evidence publishes this replica's proxies and reads the other
// replicas'. Safe for concurrent use.
type Evidence struct {
	cfg  EvidenceConfig
	name string // this replica's ConfigMap
	log  *slog.Logger

	mu   sync.Mutex
	last struct { // the last document written
		proxies []byte // its proxies, as JSON: unchanged ones are written only every Period
		at      time.Time
		doc     bool // false: the last one written was not a Publish
	}
	// roster is the roster (RosterKey) the ConfigMap holds, as read or
	// last written: an unchanged one is not written again.
	roster []byte
}

// evidenceDoc is the JSON kept under EvidenceKey.
type evidenceDoc struct {
	Holder    string    `json:"holder"`
	Published time.Time `json:"published"`
	// Period is how often the holder publishes, for a reader's
	// information; staleness is judged by the reader's own setting.
	Period string `json:"period"`
	// Pending: the replica has started and not reported its proxies yet.
	Pending bool `json:"pending,omitempty"`
	// Leaving: the replica shut down at Published; its proxies are
	// reconnecting to the others.
	Leaving bool `json:"leaving,omitempty"`
	// Total is how many proxies the replica has; Proxies holds at most
	// Cap of them (the laggards first), and Truncated says some (or some
	// of their leaves) were left out.
	Total     int              `json:"total"`
	Cap       int              `json:"cap"`
	Truncated bool             `json:"truncated,omitempty"`
	Proxies   []trust.ProxyAck `json:"proxies"`
}

// NewEvidence checks cfg and fills in its defaults.
func NewEvidence(cfg EvidenceConfig) (*Evidence, error) {
	if cfg.Client == nil || cfg.Namespace == "" || cfg.Holder == "" {
		return nil, errors.New("kube: evidence: Client, Namespace and Holder are required")
	}
	if cfg.Period <= 0 {
		cfg.Period = DefaultPublishPeriod
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = 3 * cfg.Period
	}
	if cfg.ForgetAfter <= 0 {
		cfg.ForgetAfter = DefaultForgetAfter
	}
	if cfg.MaxProxies <= 0 {
		cfg.MaxProxies = DefaultMaxProxies
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	name := EvidenceConfigMapName(cfg.Holder)
	return &Evidence{cfg: cfg, name: name, log: cfg.Logger.With("component", "trust-evidence", "configmap", cfg.Namespace+"/"+name)}, nil
}

// EvidenceConfigMapName is the name of holder's evidence ConfigMap: the
// prefix, then holder made a DNS subdomain (lower case; anything else
// than letters, digits and '-' becomes '-'), within 253 characters.
func EvidenceConfigMapName(holder string) string {
	var b strings.Builder
	b.WriteString(EvidencePrefix)
	for _, r := range strings.ToLower(holder) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '-' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	name := b.String()
	if len(name) > 253 {
		name = name[:253]
	}
	return strings.TrimRight(name, "-")
}

// Publish replaces this replica's evidence with acks (each one's Replica
// set to the holder), stamped now. Past MaxProxies (or the size bound)
// the laggards are kept first and the document says it was truncated.
// It may be called more often than Period: the same proxies as last time
// are written again only once Period has passed (the timestamp is what
// keeps this replica from being stale).
func (e *Evidence) Publish(ctx context.Context, acks []trust.ProxyAck) error {
	d := e.doc(acks)
	proxies, err := json.Marshal(d.Proxies)
	if err != nil {
		return fmt.Errorf("kube: evidence %s: %w", e.name, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.last.doc && bytes.Equal(proxies, e.last.proxies) && d.Published.Sub(e.last.at) < e.cfg.Period {
		return nil
	}
	if err := e.write(ctx, d); err != nil {
		return err
	}
	e.last.proxies, e.last.at, e.last.doc = proxies, d.Published, true
	return nil
}

// announce publishes a pending document: this replica is known, and
// reported missing, until its first Publish. It is written before the
// replica serves, so no proxy can connect to a replica the gates do not
// know about.
func (e *Evidence) announce(ctx context.Context) error {
	d := e.doc(nil)
	d.Pending = true
	e.mu.Lock()
	defer e.mu.Unlock()
	e.last.doc = false
	return e.write(ctx, d)
}

// leave says, on shutdown, that this replica is going: the others report
// it missing for StaleAfter more (its proxies reconnect to them
// meanwhile, and are then reported by them), then forget it. A replica
// that left in good order does not hold the gates for ForgetAfter.
func (e *Evidence) leave(ctx context.Context) error {
	d := e.doc(nil)
	d.Leaving = true
	e.mu.Lock()
	defer e.mu.Unlock()
	e.last.doc = false
	return e.write(ctx, d)
}

func (e *Evidence) doc(acks []trust.ProxyAck) *evidenceDoc {
	d := &evidenceDoc{Holder: e.cfg.Holder, Published: e.cfg.Now().UTC(), Period: e.cfg.Period.String(),
		Total: len(acks), Cap: e.cfg.MaxProxies, Proxies: make([]trust.ProxyAck, 0, min(len(acks), e.cfg.MaxProxies))}
	for _, a := range acks {
		a.Replica = e.cfg.Holder
		if len(a.Leaves) > MaxLeavesPerProxy {
			a.Leaves = a.Leaves[:MaxLeavesPerProxy]
			d.Truncated = true
		}
		d.Proxies = append(d.Proxies, a)
	}
	// Laggards first: the proxies that would hold a gate are the ones a
	// truncated list must keep.
	slices.SortStableFunc(d.Proxies, func(a, b trust.ProxyAck) int {
		return cmp.Or(cmp.Compare(held(a), held(b)), cmp.Compare(a.Node, b.Node))
	})
	if len(d.Proxies) > d.Cap {
		d.Proxies, d.Truncated = d.Proxies[:d.Cap], true
	}
	return d
}

// held is the bundle sequence a proxy can be counted for: the lower of
// its agent's and its Envoy's, 0 when it reported nothing.
func held(a trust.ProxyAck) uint64 {
	if !a.Reported {
		return 0
	}
	return min(a.AgentSeq, a.ProxySeq)
}

// write stores d under EvidenceKey in this replica's ConfigMap, leaving
// the roster beside it as it is. The caller holds e.mu.
func (e *Evidence) write(ctx context.Context, d *evidenceDoc) error {
	data, err := json.Marshal(d)
	for err == nil && len(data) > maxEvidenceBytes && len(d.Proxies) > 0 {
		d.Proxies, d.Truncated = d.Proxies[:len(d.Proxies)/2], true
		data, err = json.Marshal(d)
	}
	if err != nil {
		return fmt.Errorf("kube: evidence %s: %w", e.name, err)
	}
	cms := e.cfg.Client.CoreV1().ConfigMaps(e.cfg.Namespace)
	cm, err := cms.Get(ctx, e.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: e.name, Namespace: e.cfg.Namespace,
				Labels: map[string]string{EvidenceLabel: "true", "app.kubernetes.io/part-of": "bulwark"}},
			Data: map[string]string{EvidenceKey: string(data)},
		}, metav1.CreateOptions{})
		if err == nil {
			e.roster = nil // made anew, without one: the next roster is written
		}
	case err == nil:
		// The roster beside it stays: it is written only when it changes.
		cm = cm.DeepCopy()
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[EvidenceKey] = string(data)
		if cm.Labels == nil {
			cm.Labels = map[string]string{}
		}
		cm.Labels[EvidenceLabel] = "true"
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("kube: publish trust evidence in configmap %s/%s: %w", e.cfg.Namespace, e.name, err)
	}
	if d.Truncated {
		e.log.Warn("trust evidence truncated: the other replicas will report this one missing", "proxies", d.Total, "kept", len(d.Proxies))
	}
	return nil
}

// Others returns the proxies every other known replica reports, and the
// replicas whose evidence cannot be counted, by name with the reason:
// stale (older than StaleAfter), from the future (published more than
// StaleAfter ahead of this replica's clock), pending (started, not reported yet),
// truncated, leaving (for StaleAfter after it shut down), or unreadable.
// The ConfigMap of a replica silent for ForgetAfter, or gone for
// StaleAfter after it said it was leaving, is deleted, and that replica
// is forgotten.
func (e *Evidence) Others(ctx context.Context) (acks []trust.ProxyAck, missing []string, err error) {
	cms := e.cfg.Client.CoreV1().ConfigMaps(e.cfg.Namespace)
	list, err := cms.List(ctx, metav1.ListOptions{LabelSelector: EvidenceLabel + "=true"})
	if err != nil {
		return nil, nil, fmt.Errorf("kube: list the replicas' trust evidence in %s: %w", e.cfg.Namespace, err)
	}
	now := e.cfg.Now()
	slices.SortFunc(list.Items, func(a, b corev1.ConfigMap) int { return strings.Compare(a.Name, b.Name) })
	for i := range list.Items {
		cm := &list.Items[i]
		if cm.Name == e.name {
			continue
		}
		var d evidenceDoc
		if err := json.Unmarshal([]byte(cm.Data[EvidenceKey]), &d); err != nil || d.Holder == "" || d.Published.IsZero() {
			if now.Sub(cm.CreationTimestamp.Time) > e.cfg.ForgetAfter {
				e.forget(ctx, cm, "unreadable")
				continue
			}
			why := "no holder or timestamp"
			if err != nil {
				why = bounded.Text(err.Error(), 200)
			}
			missing = append(missing, fmt.Sprintf("replica %s: unreadable trust evidence (configmap %s: %s)", strings.TrimPrefix(cm.Name, EvidencePrefix), cm.Name, why))
			continue
		}
		age := now.Sub(d.Published)
		holder := bounded.Text(d.Holder, bounded.Name)
		switch {
		case age > e.cfg.ForgetAfter, d.Leaving && age > e.cfg.StaleAfter:
			e.forget(ctx, cm, holder)
		case d.Leaving:
			missing = append(missing, fmt.Sprintf("replica %s: shut down %s ago; its proxies are reconnecting to the others", holder, age.Round(time.Second)))
		case age > e.cfg.StaleAfter:
			missing = append(missing, fmt.Sprintf("replica %s: trust evidence %s old (stale after %s)", holder, age.Round(time.Second), e.cfg.StaleAfter))
		case -age > e.cfg.StaleAfter:
			// Its clock is ahead of ours: judged on our clock, the
			// document would stay fresh for as long as the skew, whether
			// or not its replica still publishes.
			missing = append(missing, fmt.Sprintf("replica %s: trust evidence published %s ahead of this replica's clock (more than the %s tolerated); fix the clocks",
				holder, (-age).Round(time.Second), e.cfg.StaleAfter))
		case d.Pending:
			missing = append(missing, fmt.Sprintf("replica %s: has not reported its proxies yet", holder))
		case d.Truncated:
			missing = append(missing, fmt.Sprintf("replica %s: trust evidence truncated (%d proxies, at most %d published, at most %d leaves each)", holder, d.Total, d.Cap, MaxLeavesPerProxy))
		default:
			for _, a := range d.Proxies {
				// Another replica's words, bounded before they reach a
				// refusal or a log.
				a.Node, a.Replica = bounded.Text(a.Node, bounded.Name), holder
				acks = append(acks, a)
			}
		}
	}
	return acks, missing, nil
}

// forget deletes the ConfigMap of a replica that left or has long been
// silent, unless it changed since it was read (the replica came back).
func (e *Evidence) forget(ctx context.Context, cm *corev1.ConfigMap, holder string) {
	err := e.cfg.Client.CoreV1().ConfigMaps(e.cfg.Namespace).Delete(ctx, cm.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &cm.UID, ResourceVersion: &cm.ResourceVersion}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		e.log.Warn("cannot delete a gone replica's trust evidence", "replica", holder, "configmap", cm.Name, "err", err)
		return
	}
	e.log.Info("forgot a replica that left or has been silent too long", "replica", holder, "configmap", cm.Name)
}
