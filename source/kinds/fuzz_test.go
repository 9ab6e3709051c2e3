package kinds

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/bulwarkmesh/bulwark/model"
)

// maxConditionMessage is the longest message the API server takes in a
// metav1.Condition.
const maxConditionMessage = 32768

// FuzzPolicyObject takes a policy custom resource of arbitrary JSON, as
// a namespace admin may write one (the CRD schema prunes and checks much
// of it, but nothing here may rely on that), the way the Kubernetes
// source does: the spec decoded as DecodeSpec does it, then accepted over
// a last good generation, then checked against the workloads. Nothing
// panics; the status it asks for is one the API server takes (a message
// that says something, in UTF-8, within the API's length); a refused
// generation leaves the last good one in force; and what is in force
// validates on its own and stores. (Here rather than in source/kube: a
// test binary with client-go takes minutes to build for fuzzing.)
func FuzzPolicyObject(f *testing.F) {
	giant := strings.Repeat("a", 40000)
	for _, s := range []struct {
		kind uint8
		obj  string
	}{
		{0, `{"spec":{"selector":{"service":"api"},"action":"ALLOW","rules":[{"from":[{"serviceAccounts":["frontend"]}],"to":[{"ports":[8080],"methods":["GET"],"paths":["/v1/*","/a/**/b"]}]}]}}`},
		{0, `{"spec":{"selector":{"matchLabels":{"app":"api"}},"action":"DENY","rules":[{"from":[{"namespaces":["*"]}],"to":[{"paths":["/admin","/;/admin","/%3b/admin","/x/..\\admin","/beta/**"]}]}]}}`},
		{0, `{"spec":{"selector":{"service":"api"},"action":"ALLOW","rules":[{"from":[{"spiffeIDs":["spiffe://cluster.local/ns/demo/sa/a","spiffe://evil/ns/x/sa/y"]},{"unauthenticated":true}]}]}}`},
		{0, `{"spec":{"selector":{"service":"` + giant + `"},"action":"ALLOW","rules":[{"from":[{"serviceAccounts":["` + giant + `"]}]}]}}`},
		{0, `{"spec":{"selector":{"service":"api"},"action":"ALLOW","rules":[{"from":[{"serviceAccounts":["` + strings.Repeat(`\u00e9`, 3000) + `"]}]}]}}`},
		{0, `{"spec":{"selector":{"service":"api"},"action":"ALLOW","rules":[{"from":[{"serviceAccounts":["x` + strings.Repeat(`\u00e9`, 3000) + `"]}]}]}}`},
		{0, `{"spec":{"selector":{"service":"api"},"action":"\u001b[31mALLOW\r\n","rules":[]}}`},
		{0, `{"spec":{"selector":{"service":"api"},"action":"ALLOW","rules":[{"from":[{"serviceAccounts":["bulwark-system/bulwark"]}],"to":[{"ports":[0,65536,-1]}]}]}}`},
		{0, `{"spec":"not an object"}`},
		{0, `{"metadata":{}}`},
		{1, `{"spec":{"selector":{"matchLabels":{"app":"api"}},"mode":"PERMISSIVE","portModes":{"8080":"DISABLE","http":"LAX"},"exception":{"reason":"legacy","expires":"2027-02-30"}}}`},
		{1, `{"spec":{"mode":"DISABLE","exception":{"reason":" "}}}`},
		{1, `{"spec":{"mode":"STRICT","exception":{"reason":"` + giant + `","owner":"` + strings.Repeat(`\u00e9`, 3000) + `"}}}`},
		{1, `{"spec":{"selector":{"matchLabels":{"` + giant + `":"x"}},"mode":"STRICT"}}`},
		{1, `{"spec":{"selector":{"matchLabels":{"app":"web"}},"mode":null,"portModes":{"99999":"STRICT"}}}`},
	} {
		f.Add(s.kind, []byte(s.obj))
	}
	good := map[*Kind]string{
		AccessPolicy: `{"selector":{"service":"api"},"action":"ALLOW","rules":[{"from":[{"serviceAccounts":["frontend"]}]}]}`,
		MTLSPolicy:   `{"selector":{"matchLabels":{"app":"api"}},"mode":"STRICT"}`,
	}
	mesh := &model.Mesh{Name: "kubernetes", TrustDomain: "cluster.local"}
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		var obj map[string]any
		if json.Unmarshal(data, &obj) != nil {
			return
		}
		k := Policies[int(kind)%len(Policies)]
		meta := Meta{Namespace: "demo", Name: "p", Generation: 2}

		// Generation 1 was good.
		lg := NewLastGood()
		first := k.NewSpec()
		if err := json.Unmarshal([]byte(good[k]), first); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := lg.Decide(k, Meta{Namespace: "demo", Name: "p", Generation: 1}, first, nil, mesh); !ok {
			t.Fatal("the good generation is refused")
		}

		spec := k.NewSpec()
		var decodeErr error
		if raw, ok := obj["spec"]; !ok {
			decodeErr = &model.FieldError{Path: "spec", Detail: "required"}
		} else {
			decodeErr = DecodeSpec(raw, spec)
		}
		inForce, ok, v := lg.Decide(k, meta, spec, decodeErr, mesh)
		if !ok {
			t.Fatal("nothing in force, with a good generation before")
		}
		c := v.Condition()
		if c.Message == "" || len(c.Message) > maxConditionMessage || !utf8.ValidString(c.Message) {
			t.Fatalf("a status the API server would not take (%d bytes, UTF-8 %v): %.200q", len(c.Message), utf8.ValidString(c.Message), c.Message)
		}
		if v.Err != nil && (v.Kept != 1 || inForce.Meta.Generation != 1 || !strings.HasSuffix(c.Message, "(generation 1 stays in force)")) {
			t.Fatalf("refused (%v), and in force: generation %d, kept %d, message %q", v.Err, inForce.Meta.Generation, v.Kept, c.Message)
		}

		switch p := inForce.Value.(type) {
		case *model.AccessPolicy:
			if err := p.Validate("spec", mesh.TrustDomain); err != nil {
				t.Fatalf("in force but invalid: %v", err)
			}
		case *model.MTLSPolicy:
			if err := p.Validate("spec"); err != nil {
				t.Fatalf("in force but invalid: %v", err)
			}
		default:
			t.Fatalf("in force: a %T", inForce.Value)
		}
		st := &model.State{Mesh: *mesh, Workloads: []*model.Workload{
			{Namespace: "demo", Name: "api-1", ServiceAccount: "api", Address: "10.0.0.1", LocalAddress: "127.0.0.1", Labels: map[string]string{"app": "api"}},
			{Namespace: "demo", Name: "web-1", ServiceAccount: "web", Address: "10.0.0.2", LocalAddress: "127.0.0.1", Labels: map[string]string{"app": "web"}},
		}}
		Settle(st, []Object{inForce})
		if _, err := model.NewStore().ReplaceState(st); err != nil {
			t.Fatalf("the state does not store: %v", err)
		}
	})
}
