package trust

import (
	"context"

	"github.com/bulwarkmesh/bulwark/ca"
)

// Init makes a new CA in cfg.Dir (ca.Init: it refuses a directory that
// holds CA material) and records it as the trust State's first
// authority, Origin "init", at sequence 1, with who made it as the first
// event, so that the lifecycle and its audit trail start from it instead
// of from a migration.
func Init(cfg ca.InitConfig, who string) error {
	if err := ca.Init(cfg); err != nil {
		return err
	}
	store := NewDirStore(cfg.Dir, cfg.TrustDomain)
	legacy, err := store.Load(context.Background())
	if err != nil {
		return err
	}
	l := legacy.Active()
	a, err := NewAuthority(l.Root, l.RootKey, l.Chain, l.Key, "init")
	if err != nil {
		return err
	}
	return store.Save(context.Background(), New(cfg.TrustDomain, a, Operation{Who: who}))
}
