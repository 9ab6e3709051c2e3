package meshfile

import (
	"context"
	"errors"
	"fmt"
	"io"
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

// The limits on what Load reads, checked before it parses. Loading takes
// time and memory in proportion to the input, but a lot of both: about a
// second and 250 MB for 6 MiB of mesh files like bench/gen's, and up to
// ten times that for a file of nothing but one-character list items
// (YAML's node tree and the problems found in it dominate). The largest
// mesh the load harness runs, 10,000 services with a sidecar workload
// each, is a 3.5 MiB Mesh document in block style, and 6.2 MiB with an
// AccessPolicy per service (bench/gen's MeshFile; a test loads it): the
// limits are twice that.
const (
	// MaxFileSize is the most one mesh file may hold.
	MaxFileSize = 8 << 20
	// MaxTotalSize is the most all the mesh files of a load may hold
	// together.
	MaxTotalSize = 16 << 20
	// MaxProblems is how many problems Load reports; one more says how
	// many were left out.
	MaxProblems = 1000
)

// Load reads the files and directories in paths and returns the state
// they describe. The error, when not nil, lists every problem found (up
// to MaxProblems), each an *Error naming file, line, object and field. A
// file over MaxFileSize, or files over MaxTotalSize together, are refused
// before they are parsed. When ctx ends, Load stops soon after and
// returns an error that wraps ctx's.
func Load(ctx context.Context, paths []string) (*model.State, error) {
	files, err := expand(paths)
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s: %w (no .yaml files)", strings.Join(paths, ", "), ErrNoMesh)
	}
	var docs []*document
	var errs []error
	total := 0
	w := &walk{ctx: ctx, budget: aliasAllowance}
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("loading %s: %w", f, err)
		}
		data, over, err := readFile(f, MaxTotalSize-total)
		if err != nil {
			errs = append(errs, err)
			if over {
				break
			}
			continue
		}
		total += len(data)
		d, err := decodeFile(w, f, data)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("loading %s: %w", f, ctx.Err())
		}
		docs = append(docs, d...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, limitProblems(errors.Join(errs...))
	}
	st, err := build(ctx, docs, files)
	if ctx.Err() != nil {
		return nil, fmt.Errorf("loading %s: %w", strings.Join(files, ", "), ctx.Err())
	}
	if err != nil {
		return nil, limitProblems(err)
	}
	return st, nil
}

// readFile reads the file at path, which may hold at most MaxFileSize
// bytes, and at most left. It looks at the size before it reads and reads
// no more than the limit, in case the file grows or is no regular file.
// over says that the limit crossed was left, the total's.
func readFile(path string, left int) (data []byte, over bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	limit := min(MaxFileSize, left)
	st, err := f.Stat()
	if err != nil {
		return nil, false, err
	}
	if st.Size() <= int64(limit) {
		data, err = io.ReadAll(io.LimitReader(f, int64(limit)+1))
		if err != nil {
			return nil, false, err
		}
		if len(data) <= limit {
			return data, false, nil
		}
	}
	if limit == MaxFileSize {
		return nil, false, &Error{File: path, Detail: fmt.Sprintf("the file is larger than %s, the limit for one mesh file; split it into several (together they may hold %s)",
			mib(MaxFileSize), mib(MaxTotalSize))}
	}
	return nil, true, &Error{File: path, Detail: fmt.Sprintf("with this file the mesh files hold more than %s, the limit for all of them together",
		mib(MaxTotalSize))}
}

func mib(n int) string { return fmt.Sprintf("%d MiB", n>>20) }

// build validates the decoded documents together and turns them into a
// model state.
func build(ctx context.Context, docs []*document, files []string) (*model.State, error) {
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
	for i, d := range docs {
		if i%256 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
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
	if ctx.Err() != nil {
		return nil, ctx.Err()
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

// limitProblems keeps the first MaxProblems problems of err and says how
// many more there were: each is printed, or logged on its own line.
func limitProblems(err error) error {
	var shown []error
	more := 0
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, c := range j.Unwrap() {
				walk(c)
			}
			return
		}
		if n, ok := e.(omitted); ok {
			more += int(n)
		} else if len(shown) < MaxProblems {
			shown = append(shown, e)
		} else {
			more++
		}
	}
	walk(err)
	if more == 0 {
		return err
	}
	return errors.Join(append(shown, &Error{Detail: fmt.Sprintf("%d more problems not shown; fix these first", more)})...)
}

// omitted stands for problems left out before they were located.
type omitted int

func (n omitted) Error() string { return fmt.Sprintf("%d more problems", int(n)) }
