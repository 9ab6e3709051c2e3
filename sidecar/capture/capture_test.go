package capture

import (
	"testing"

	"github.com/bulwarkmesh/bulwark/internal/golden"
)

func TestRulesGolden(t *testing.T) {
	out := golden.NewDir(t, "testdata")
	def, err := Rules(Config{})
	if err != nil {
		t.Fatal(err)
	}
	out.Compare("default.sh", []byte(Script(def)))
	excl, err := Rules(Config{ExcludeInboundPorts: []uint32{15021}, ExcludeOutboundPorts: []uint32{15010}, ExcludeOutboundCIDRs: []string{"10.77.0.1/32"}})
	if err != nil {
		t.Fatal(err)
	}
	out.Compare("exclusions.sh", []byte(Script(excl)))
	out.Finish()
	if _, err := Rules(Config{ExcludeOutboundCIDRs: []string{"10.0.0.0"}}); err == nil {
		t.Error("a CIDR without a prefix length was accepted")
	}
}
