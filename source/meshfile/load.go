package meshfile

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/bulwarkmesh/bulwark/api/v1alpha1"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/source/kinds"
)

// expand turns the configured paths into the list of files to read: a
// file as it is, a directory as its *.yaml and *.yml files, sorted.
func expand(paths []string) ([]string, error) {
	var files []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			ext := strings.ToLower(filepath.Ext(e.Name()))
			if !e.IsDir() && (ext == ".yaml" || ext == ".yml") && !strings.HasPrefix(e.Name(), ".") {
				files = append(files, filepath.Join(p, e.Name()))
			}
		}
	}
	slices.Sort(files)
	return slices.Compact(files), nil
}

// Load reads the files and directories in paths and returns the state
// they describe. The error, when not nil, lists every problem found, each
// an *Error naming file, line, object and field.
func Load(paths []string) (*model.State, error) {
	files, err := expand(paths)
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s: %w (no .yaml files)", strings.Join(paths, ", "), ErrNoMesh)
	}
	var docs []*document
	var errs []error
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		d, err := decodeFile(f, data)
		docs = append(docs, d...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return build(docs, files)
}

// build validates the decoded documents together and turns them into a
// model state.
func build(docs []*document, files []string) (*model.State, error) {
	var meshDoc *document
	var errs []error
	for _, d := range docs {
		if d.kind != KindMesh {
			continue
		}
		if meshDoc != nil {
			errs = append(errs, &Error{File: d.file, Line: d.line, Object: d.object(),
				Detail: fmt.Sprintf("a mesh has one Mesh document; another is %s at %s:%d", meshDoc.object(), meshDoc.file, meshDoc.line)})
			continue
		}
		meshDoc = d
	}
	if meshDoc == nil {
		return nil, fmt.Errorf("%s: %w", strings.Join(files, ", "), ErrNoMesh)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	spec := kinds.MeshSpec(meshDoc.spec.(*v1alpha1.MeshSpec))
	spec.Default()
	errs = append(errs, meshDoc.problems...)
	specErr := spec.Validate("spec")
	st := &model.State{}
	if specErr != nil {
		errs = append(errs, meshDoc.errorAt(specErr))
	} else {
		st = stateOf(meshDoc.name, spec)
	}

	// Every policy kind, the same way: each object on its own, then the
	// checks across objects against the workloads.
	placed := map[kinds.Ref]*document{}
	var objs []kinds.Object
	for _, d := range docs {
		k := kinds.Lookup(d.kind)
		if k == nil {
			continue
		}
		ref := kinds.Ref{Kind: k.Name, Namespace: d.namespace, Name: d.name}
		if prev := placed[ref]; prev != nil {
			errs = append(errs, &Error{File: d.file, Line: d.line, Object: d.object(),
				Detail: fmt.Sprintf("defined twice; the other is at %s:%d", prev.file, prev.line)})
			continue
		}
		placed[ref] = d
		errs = append(errs, d.problems...)
		obj, err := k.Accept(kinds.Meta{Namespace: d.namespace, Name: d.name}, d.spec, &model.Mesh{TrustDomain: spec.TrustDomain})
		if err != nil {
			errs = append(errs, d.errorAt(err))
			continue
		}
		objs = append(objs, obj)
	}
	refused := kinds.Settle(st, objs) // no workloads if the spec is invalid
	for _, ref := range slices.SortedFunc(maps.Keys(refused), func(a, b kinds.Ref) int { return strings.Compare(a.String(), b.String()) }) {
		errs = append(errs, placed[ref].errorAt(refused[ref]))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return st, nil
}

// stateOf turns a valid mesh spec into model objects. Each workload is an
// endpoint of every service it backs: the file plays the part that
// EndpointSlices play in Kubernetes.
func stateOf(name string, spec *model.MeshSpec) *model.State {
	st := &model.State{Mesh: model.Mesh{Name: name, TrustDomain: spec.TrustDomain, MTLS: spec.MTLS, Authorization: spec.Authorization}}
	services := map[string]*model.Service{}
	for i := range spec.Services {
		s := spec.Services[i]
		st.Services = append(st.Services, &s)
		services[s.Key()] = &s
	}
	for i := range spec.Workloads {
		w := spec.Workloads[i]
		st.Workloads = append(st.Workloads, &w)
		for _, name := range w.Services {
			svc := services[w.Namespace+"/"+name]
			ep := &model.Endpoint{Namespace: w.Namespace, Service: name, Address: w.Address, Ready: true, Workload: w.Name}
			for _, p := range svc.Ports {
				ep.Ports = append(ep.Ports, model.EndpointPort{Name: p.Name, Port: p.TargetPort})
			}
			st.Endpoints = append(st.Endpoints, ep)
		}
	}
	return st
}
