package meshfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v3"

	"github.com/bulwarkmesh/bulwark/api/v1alpha1"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/source/kinds"
)

// APIVersion is the only apiVersion this version of Bulwark reads.
const APIVersion = v1alpha1.APIVersion

// KindMesh is the one document every mesh has; the other kinds are the
// policy kinds of package kinds.
const KindMesh = v1alpha1.KindMesh

// document is one YAML document of a mesh file, decoded and checked.
type document struct {
	file      string
	kind      string
	name      string
	namespace string
	line      int            // where the document starts
	spec      any            // pointer to the decoded spec type
	lines     map[string]int // field path -> line, for locating later errors
	// problems found while decoding the spec that did not stop it from
	// being decoded (unknown fields): reported together with validation.
	problems []error
}

func (d *document) object() string {
	if d.namespace != "" {
		return d.kind + " " + d.namespace + "/" + d.name
	}
	return d.kind + " " + d.name
}

// errorAt locates a model.FieldError (or any error) inside the document.
func (d *document) errorAt(err error) error {
	var out []error
	for _, fe := range model.FieldErrors(err) {
		out = append(out, &Error{
			File: d.file, Line: d.lineOf(string(fe.Path)), Object: d.object(),
			Path: string(fe.Path), Detail: fe.Detail,
		})
	}
	return errors.Join(out...)
}

// lineOf returns the line of the longest recorded prefix of path.
func (d *document) lineOf(path string) int {
	for p := path; p != ""; {
		if l, ok := d.lines[p]; ok {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return d.line
}

// specTypes maps a kind to the API type of its spec: the Mesh document
// and every registered policy kind.
var specTypes = func() map[string]reflect.Type {
	m := map[string]reflect.Type{KindMesh: reflect.TypeFor[v1alpha1.MeshSpec]()}
	for _, k := range kinds.Policies {
		m[k.Name] = k.SpecType()
	}
	return m
}()

type metadata struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
}

// envelope is the part every document shares. Its fields are checked by
// hand so the errors can point at them.
var envelopeFields = map[string]bool{"apiVersion": true, "kind": true, "metadata": true, "spec": true}

// decodeFile splits data into documents and decodes each strictly: an
// unknown field, a value of the wrong type or an unknown kind is an error
// naming the file, line and field. It reports every problem it finds.
func decodeFile(file string, data []byte) ([]*document, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []*document
	var errs []error
	for {
		var root yaml.Node
		err := dec.Decode(&root)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, &Error{File: file, Line: yamlErrorLine(err), Detail: cleanYAMLError(err)})
			break // the decoder cannot resynchronise after a syntax error
		}
		if len(root.Content) == 0 {
			continue
		}
		n := root.Content[0]
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			continue // an empty document, e.g. after a trailing ---
		}
		doc, err := decodeDocument(file, n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		docs = append(docs, doc)
	}
	return docs, errors.Join(errs...)
}

func decodeDocument(file string, n *yaml.Node) (*document, error) {
	d := &document{file: file, line: n.Line, lines: map[string]int{}}
	fail := func(line int, path, format string, args ...any) error {
		obj := ""
		if _, known := specTypes[d.kind]; known {
			obj = d.object()
		}
		return &Error{File: file, Line: line, Object: obj, Path: path, Detail: fmt.Sprintf(format, args...)}
	}
	if n.Kind != yaml.MappingNode {
		return nil, fail(n.Line, "", "a document must be a mapping with apiVersion, kind, metadata and spec")
	}
	fields := map[string]*yaml.Node{}
	var errs []error
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if !envelopeFields[k.Value] {
			errs = append(errs, fail(k.Line, k.Value, "unknown field %q%s", k.Value, suggest(k.Value, keys(envelopeFields))))
			continue
		}
		fields[k.Value] = v
		d.lines[k.Value] = k.Line
	}
	str := func(name string) string {
		v := fields[name]
		if v == nil {
			return ""
		}
		if v.Kind != yaml.ScalarNode || v.Tag != "!!str" {
			errs = append(errs, fail(v.Line, name, "must be a string"))
			return ""
		}
		return v.Value
	}
	apiVersion := str("apiVersion")
	d.kind = str("kind")
	switch {
	case fields["apiVersion"] == nil:
		errs = append(errs, fail(n.Line, "apiVersion", "required: %s", APIVersion))
	case apiVersion != "" && apiVersion != APIVersion:
		errs = append(errs, fail(fields["apiVersion"].Line, "apiVersion", "%q is not supported; use %s", apiVersion, APIVersion))
	}
	specType, known := specTypes[d.kind]
	switch {
	case fields["kind"] == nil:
		errs = append(errs, fail(n.Line, "kind", "required: one of %s", strings.Join(keys(specTypes), ", ")))
	case d.kind != "" && !known:
		errs = append(errs, fail(fields["kind"].Line, "kind", "unknown kind %q; expected one of %s", d.kind, strings.Join(keys(specTypes), ", ")))
	}

	var meta metadata
	if m := fields["metadata"]; m == nil {
		errs = append(errs, fail(n.Line, "metadata", "required: metadata.name"))
	} else {
		errs = append(errs, d.check(m, reflect.TypeFor[metadata](), "metadata")...)
		if err := decodeNode(m, &meta); err != nil {
			errs = append(errs, fail(m.Line, "metadata", "%v", err))
		} else if meta.Name == "" {
			errs = append(errs, fail(m.Line, "metadata.name", "required"))
		}
	}
	d.name, d.namespace = meta.Name, meta.Namespace
	if d.kind == KindMesh && d.namespace != "" {
		errs = append(errs, fail(d.lines["metadata"], "metadata.namespace", "a Mesh has no namespace"))
	}
	if d.kind != KindMesh && d.namespace == "" {
		d.namespace = model.DefaultNamespace
	}
	if len(errs) > 0 || !known {
		return nil, errors.Join(errs...)
	}

	spec := fields["spec"]
	if spec == nil {
		return nil, fail(n.Line, "spec", "required")
	}
	errs = d.check(spec, specType, "spec")
	for _, e := range errs {
		if !isUnknownField(e) {
			// A value of the wrong type: the spec cannot be decoded.
			return nil, errors.Join(errs...)
		}
	}
	// Only unknown fields: decode the rest so validation can report its
	// problems in the same pass.
	v := reflect.New(specType)
	if err := decodeNode(spec, v.Interface()); err != nil {
		return nil, fail(spec.Line, "spec", "%v", err)
	}
	d.spec = v.Interface()
	d.problems = errs
	return d, nil
}

func isUnknownField(err error) bool {
	var e *Error
	return errors.As(err, &e) && strings.HasPrefix(e.Detail, "unknown field ")
}

// decodeNode decodes n into out through JSON, so the json tags of the
// API types (which the Kubernetes CRDs are generated from) are the schema.
func decodeNode(n *yaml.Node, out any) error {
	var v any
	if err := n.Decode(&v); err != nil {
		return err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	// Unknown fields were already reported, with their lines, by check.
	return json.Unmarshal(b, out)
}

// check walks n against the Go type t, recording the line of every field
// and reporting unknown fields and values of the wrong kind.
func (d *document) check(n *yaml.Node, t reflect.Type, path string) []error {
	d.lines[path] = n.Line
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // absent
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	bad := func(format string, args ...any) []error {
		return []error{&Error{File: d.file, Line: n.Line, Object: d.object(), Path: path, Detail: fmt.Sprintf(format, args...)}}
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return bad("must be a mapping")
		}
		fields := jsonFields(t)
		errs := d.duplicateKeys(n, path)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			f, ok := fields[k.Value]
			child := joinPath(path, k.Value)
			if !ok {
				d.lines[child] = k.Line
				errs = append(errs, &Error{File: d.file, Line: k.Line, Object: d.object(), Path: child,
					Detail: fmt.Sprintf("unknown field %q%s", k.Value, suggest(k.Value, keys(fields)))})
				continue
			}
			errs = append(errs, d.check(v, f.Type, child)...)
			d.lines[child] = k.Line
		}
		return errs
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return bad("must be a list")
		}
		var errs []error
		for i, c := range n.Content {
			errs = append(errs, d.check(c, t.Elem(), path+"["+strconv.Itoa(i)+"]")...)
		}
		return errs
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return bad("must be a mapping")
		}
		errs := d.duplicateKeys(n, path)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			child := path + "[" + strconv.Quote(k.Value) + "]"
			d.lines[child] = k.Line
			errs = append(errs, d.check(v, t.Elem(), child)...)
		}
		return errs
	case reflect.String:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
			return bad("must be a string (quote it: %q)", n.Value)
		}
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			return bad("must be true or false")
		}
	case reflect.Uint32, reflect.Uint64, reflect.Int, reflect.Int32, reflect.Int64:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			return bad("must be a whole number, not %q", n.Value)
		}
		bits := t.Bits()
		var err error
		if t.Kind() == reflect.Uint32 || t.Kind() == reflect.Uint64 {
			_, err = strconv.ParseUint(n.Value, 0, bits)
		} else {
			_, err = strconv.ParseInt(n.Value, 0, bits)
		}
		if err != nil {
			return bad("%s is out of range", n.Value)
		}
	}
	return nil
}

// duplicateKeys reports keys that a mapping sets more than once; YAML
// forbids it and the later value would silently win.
func (d *document) duplicateKeys(n *yaml.Node, path string) []error {
	var errs []error
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if line, dup := seen[k.Value]; dup {
			errs = append(errs, &Error{File: d.file, Line: k.Line, Object: d.object(), Path: joinPath(path, k.Value),
				Detail: fmt.Sprintf("%q is set twice (first on line %d)", k.Value, line)})
		}
		seen[k.Value] = k.Line
	}
	return errs
}

func joinPath(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

// jsonFields maps the json names of t's fields to the fields.
func jsonFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f
	}
	return out
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// suggest returns " (did you mean "x"?)" when a known name is close to
// the unknown one.
func suggest(unknown string, known []string) string {
	if len(unknown) > 64 {
		return "" // no field name is that long; not worth a quadratic comparison
	}
	best, bestDist := "", 3
	for _, k := range known {
		if d := editDistance(strings.ToLower(unknown), strings.ToLower(k)); d < bestDist {
			best, bestDist = k, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// yamlErrorLine digs the line number out of a yaml.v3 syntax error.
func yamlErrorLine(err error) int {
	msg := err.Error()
	if i := strings.Index(msg, "line "); i >= 0 {
		rest := msg[i+5:]
		end := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
		if end < 0 {
			end = len(rest)
		}
		if n, err := strconv.Atoi(rest[:end]); err == nil {
			return n
		}
	}
	return 0
}

func cleanYAMLError(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	// "line 4: did not find expected key" -> "did not find expected key"
	if strings.HasPrefix(msg, "line ") {
		if _, rest, ok := strings.Cut(msg, ": "); ok {
			msg = rest
		}
	}
	return "invalid YAML: " + msg
}
