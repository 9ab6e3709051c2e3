package meshfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	yaml "go.yaml.in/yaml/v3"

	"github.com/bulwarkmesh/bulwark/api/v1alpha1"
	"github.com/bulwarkmesh/bulwark/internal/bounded"
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
	line      int        // where the document starts
	node      *yaml.Node // the document's mapping, for locating errors
	spec      any        // pointer to the decoded spec type
	// problems found while decoding the spec that did not stop it from
	// being decoded (unknown fields): reported together with validation.
	problems []error

	walk *walk
	// keys indexes large mappings by key, built when an error is located
	// in them (see lineOf).
	keys map[*yaml.Node]map[string]int
}

func (d *document) object() string {
	if d.namespace != "" {
		return d.kind + " " + d.namespace + "/" + d.name
	}
	return d.kind + " " + d.name
}

// errorAt locates a model.FieldError (or any error) inside the document:
// the first MaxProblems of them; the others are only counted.
func (d *document) errorAt(err error) error {
	var out []error
	all := model.FieldErrors(err)
	if len(all) > MaxProblems {
		out = append(out, omitted(len(all)-MaxProblems))
		all = all[:MaxProblems]
	}
	for _, fe := range all {
		out = append(out, &Error{
			File: d.file, Line: d.lineOf(string(fe.Path)), Object: d.object(),
			Path: clip(string(fe.Path), 256), Detail: clip(fe.Detail, 1024),
		})
	}
	return errors.Join(out...)
}

// lineOf returns the line of the deepest node on path (a field path such
// as spec.workloads[1].labels["app"]) that the document has: the line of
// a field's key, of a list item, of a map entry's value; the document's
// own line when not even the first field is there. It finds the nodes
// when asked, so a document costs nothing for its lines until one of its
// fields has a problem.
func (d *document) lineOf(path string) int {
	line, n := d.line, d.node
	for first := true; path != "" && n != nil; first = false {
		if n.Kind == yaml.AliasNode {
			n = n.Alias
		}
		switch {
		case path[0] == '[' && len(path) > 1 && path[1] == '"':
			key, err := strconv.QuotedPrefix(path[1:])
			if err != nil || !strings.HasPrefix(path[1+len(key):], "]") {
				return line
			}
			path = path[len(key)+2:]
			k, _ := strconv.Unquote(key)
			v := d.value(n, k)
			if v == nil {
				return line
			}
			n, line = v, v.Line
		case path[0] == '[':
			end := strings.IndexByte(path, ']')
			if end < 0 {
				return line
			}
			i, err := strconv.Atoi(path[1:end])
			if err != nil || n.Kind != yaml.SequenceNode || i < 0 || i >= len(n.Content) {
				return line
			}
			path = path[end+1:]
			n, line = n.Content[i], n.Content[i].Line
		default:
			path = strings.TrimPrefix(path, ".")
			end := strings.IndexAny(path, ".[")
			if end < 0 {
				end = len(path)
			}
			name := path[:end]
			path = path[end:]
			i := d.keyIndex(n, name)
			if i < 0 {
				return line
			}
			// A field is located at its key; the envelope's metadata and
			// spec at their contents.
			line, n = n.Content[i].Line, n.Content[i+1]
			if first && (name == "metadata" || name == "spec") {
				line = n.Line
			}
		}
	}
	return line
}

// value returns the value of key in the mapping n (the last one, when a
// key is set twice), or nil.
func (d *document) value(n *yaml.Node, key string) *yaml.Node {
	if i := d.keyIndex(n, key); i >= 0 {
		return n.Content[i+1]
	}
	return nil
}

// keyIndex returns the index in n.Content of the last key named key, or
// -1. Large mappings are indexed once, so locating many errors in one
// stays linear.
func (d *document) keyIndex(n *yaml.Node, key string) int {
	if n.Kind != yaml.MappingNode {
		return -1
	}
	if len(n.Content) <= 32 {
		for i := len(n.Content) - 2; i >= 0; i -= 2 {
			if n.Content[i].Value == key {
				return i
			}
		}
		return -1
	}
	idx := d.keys[n]
	if idx == nil {
		if d.keys == nil {
			d.keys = map[*yaml.Node]map[string]int{}
		}
		idx = make(map[string]int, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			idx[n.Content[i].Value] = i
		}
		d.keys[n] = idx
	}
	if i, ok := idx[key]; ok {
		return i
	}
	return -1
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

var envelopeNames = keys(envelopeFields)

// walk is the state of decoding the files of one load: what stops it (a
// cancelled context) and how many nodes it may visit. Aliases let a small
// file name a node many times over (a few kilobytes can stand for
// billions of nodes), so every visit counts, aliased or not, against a
// budget of one node per byte read plus aliasAllowance for the whole
// load (not per file: many small files would multiply it). Files without
// aliases visit each node once and stay well inside it.
type walk struct {
	ctx    context.Context
	budget int
	visits int
	// stop is why the walk ended early: the context's error or an *Error
	// about aliases. Every check returns at once after it is set.
	stop error
}

// aliasAllowance is how many nodes, beyond one per byte read, the
// aliases of a load's files may stand for.
const aliasAllowance = 10000

// visit counts one node and reports whether the walk may go on.
func (w *walk) visit(file string, n *yaml.Node) bool {
	if w.stop != nil {
		return false
	}
	w.visits++
	if w.visits%1024 == 0 {
		if err := w.ctx.Err(); err != nil {
			w.stop = err
			return false
		}
	}
	if w.visits > w.budget {
		w.stop = &Error{File: file, Line: n.Line, Detail: fmt.Sprintf(
			"its aliases expand the mesh files past %d nodes (one per byte, plus %d); write the repeated parts out", w.budget, aliasAllowance)}
		return false
	}
	return true
}

// decodeFile splits data into documents and decodes each strictly: an
// unknown field, a value of the wrong type or an unknown kind is an error
// naming the file, line and field. It reports every problem it finds. It
// takes time and memory in proportion to the size of data, counts the
// nodes it visits in w (whose budget grows by len(data)), and returns
// w.ctx's error soon after that context ends.
func decodeFile(w *walk, file string, data []byte) ([]*document, error) {
	ctx := w.ctx
	dec := yaml.NewDecoder(bytes.NewReader(data))
	w.budget += len(data)
	var docs []*document
	var errs []error
	for {
		var root yaml.Node
		err := parseNext(ctx, dec, &root)
		if errors.Is(err, io.EOF) {
			break
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			errs = append(errs, &Error{File: file, Line: yamlErrorLine(err), Detail: clip(cleanYAMLError(err), 512)})
			break // the decoder cannot resynchronise after a syntax error
		}
		if len(root.Content) == 0 {
			continue
		}
		n := root.Content[0]
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			continue // an empty document, e.g. after a trailing ---
		}
		doc, err := decodeDocument(file, n, w)
		if w.stop != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, errors.Join(append(errs, w.stop)...)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		docs = append(docs, doc)
	}
	return docs, errors.Join(errs...)
}

// parseNext parses the next YAML document into root. The parser cannot
// be interrupted, so it runs on its own goroutine and parseNext returns
// when ctx ends without waiting for it: what is left of one document of
// a file under MaxFileSize takes it a second or two at most, and nothing
// reads its result.
func parseNext(ctx context.Context, dec *yaml.Decoder, root *yaml.Node) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- dec.Decode(root) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func decodeDocument(file string, n *yaml.Node, w *walk) (*document, error) {
	d := &document{file: file, line: n.Line, node: n, walk: w}
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
			errs = append(errs, fail(k.Line, text(k.Value), "unknown field %s%s", quote(k.Value), suggest(k.Value, envelopeNames)))
			continue
		}
		fields[k.Value] = v
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
		errs = append(errs, fail(fields["apiVersion"].Line, "apiVersion", "%s is not supported; use %s", quote(apiVersion), APIVersion))
	}
	specType, known := specTypes[d.kind]
	if !known {
		d.kind = text(d.kind) // it is printed; a known kind is short
	}
	switch {
	case fields["kind"] == nil:
		errs = append(errs, fail(n.Line, "kind", "required: one of %s", strings.Join(keys(specTypes), ", ")))
	case d.kind != "" && !known:
		errs = append(errs, fail(fields["kind"].Line, "kind", "unknown kind \"%s\"; expected one of %s", d.kind, strings.Join(keys(specTypes), ", ")))
	}

	var meta metadata
	if m := fields["metadata"]; m == nil {
		errs = append(errs, fail(n.Line, "metadata", "required: metadata.name"))
	} else {
		merrs := d.check(m, reflect.ValueOf(&meta).Elem(), "metadata")
		errs = append(errs, merrs...)
		if meta.Name == "" && !slices.ContainsFunc(merrs, func(e error) bool { return !isUnknownField(e) }) {
			errs = append(errs, fail(m.Line, "metadata.name", "required"))
		}
	}
	d.name, d.namespace = meta.Name, meta.Namespace
	if d.kind == KindMesh && d.namespace != "" {
		errs = append(errs, fail(d.lineOf("metadata"), "metadata.namespace", "a Mesh has no namespace"))
	}
	if d.kind != KindMesh && d.namespace == "" {
		d.namespace = model.DefaultNamespace
	}
	if w.stop != nil || len(errs) > 0 || !known {
		return nil, errors.Join(errs...)
	}

	spec := fields["spec"]
	if spec == nil {
		return nil, fail(n.Line, "spec", "required")
	}
	v := reflect.New(specType)
	errs = d.check(spec, v.Elem(), "spec")
	for _, e := range errs {
		if !isUnknownField(e) {
			// A value of the wrong type: the spec cannot be decoded.
			return nil, errors.Join(errs...)
		}
	}
	// Only unknown fields: the rest is decoded, so validation can report
	// its problems in the same pass.
	d.spec = v.Interface()
	d.problems = errs
	return d, nil
}

func isUnknownField(err error) bool {
	var e *Error
	return errors.As(err, &e) && strings.HasPrefix(e.Detail, "unknown field ")
}

// check walks n against v, the Go value it describes, and decodes n into
// v while it goes: it reports unknown fields, keys set twice and values
// of the wrong kind, each with its line and field path. Field names are
// the json tags of the API types (which the Kubernetes CRDs are generated
// from), so those tags are the schema. It visits each node once per
// reference to it, in time proportional to the visits (YAML's own
// decoder compares every pair of keys of a mapping, so a map of many
// labels takes time in the square of their number).
func (d *document) check(n *yaml.Node, v reflect.Value, path string) []error {
	if !d.walk.visit(d.file, n) {
		return nil
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // absent
	}
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		v = v.Elem()
	}
	bad := func(format string, args ...any) []error {
		return []error{&Error{File: d.file, Line: n.Line, Object: d.object(), Path: path, Detail: fmt.Sprintf(format, args...)}}
	}
	switch v.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return bad("must be a mapping")
		}
		fields := schemaOf(v.Type())
		errs := d.duplicateKeys(n, path)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			f, ok := fields.byName[k.Value]
			if !ok {
				errs = append(errs, &Error{File: d.file, Line: k.Line, Object: d.object(), Path: joinPath(path, text(k.Value)),
					Detail: fmt.Sprintf("unknown field %s%s", quote(k.Value), suggest(k.Value, fields.names))})
				continue
			}
			errs = append(errs, d.check(val, v.FieldByIndex(f.Index), joinPath(path, k.Value))...)
		}
		return errs
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return bad("must be a list")
		}
		var errs []error
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			errs = append(errs, d.check(c, s.Index(i), path+"["+strconv.Itoa(i)+"]")...)
		}
		v.Set(s)
		return errs
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return bad("must be a mapping")
		}
		if v.Type().Key().Kind() != reflect.String {
			return bad("internal error: a map keyed by %s", v.Type().Key())
		}
		errs := d.duplicateKeys(n, path)
		m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			e := reflect.New(v.Type().Elem()).Elem()
			errs = append(errs, d.check(val, e, path+"["+quote(k.Value)+"]")...)
			m.SetMapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key()), e)
		}
		v.Set(m)
		return errs
	case reflect.String:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
			return bad("must be a string (quote it: %s)", quote(n.Value))
		}
		v.SetString(n.Value)
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&b) != nil {
			return bad("must be true or false")
		}
		v.SetBool(b)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			return bad("must be a whole number, not %s", quote(n.Value))
		}
		u, err := strconv.ParseUint(n.Value, 0, v.Type().Bits())
		if err != nil {
			return bad("%s is out of range", text(n.Value))
		}
		v.SetUint(u)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			return bad("must be a whole number, not %s", quote(n.Value))
		}
		i, err := strconv.ParseInt(n.Value, 0, v.Type().Bits())
		if err != nil {
			return bad("%s is out of range", text(n.Value))
		}
		v.SetInt(i)
	default:
		// The API types use none of the other kinds; one added to them
		// fails here, and in the tests, until check learns it.
		return bad("internal error: no decoding for a %s", v.Type())
	}
	return nil
}

// duplicateKeys reports keys that a mapping sets more than once; YAML
// forbids it and the later value would silently win.
func (d *document) duplicateKeys(n *yaml.Node, path string) []error {
	var errs []error
	seen := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if line, dup := seen[k.Value]; dup {
			errs = append(errs, &Error{File: d.file, Line: k.Line, Object: d.object(), Path: joinPath(path, text(k.Value)),
				Detail: fmt.Sprintf("%s is set twice (first on line %d)", quote(k.Value), line)})
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

// schema is what check needs of a struct type: its fields by json name,
// and the names sorted for suggestions.
type schema struct {
	byName map[string]reflect.StructField
	names  []string
}

// schemas caches schemaOf; there are few types, and Load may run on
// several goroutines.
var schemas sync.Map // reflect.Type -> *schema

// schemaOf maps the json names of t's fields to the fields.
func schemaOf(t reflect.Type) *schema {
	if s, ok := schemas.Load(t); ok {
		return s.(*schema)
	}
	s := &schema{byName: map[string]reflect.StructField{}}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		s.byName[name] = f
	}
	s.names = keys(s.byName)
	schemas.Store(t, s)
	return s
}

// quote quotes a value from the file for a message: escaped, and at most
// 64 bytes of it (a file may hold a value of megabytes, and messages are
// printed and logged).
func quote(s string) string { return bounded.Quote(s, 64) }

// text is quote without the quotes, for a key from the file in a field
// path or a value in a message.
func text(s string) string { return bounded.Text(s, 64) }

// clip shortens a message that is already readable (a model's, which
// quotes the values in it, or the YAML parser's) to at most n bytes, cut
// between characters, and escapes any character a terminal would act on.
func clip(s string, n int) string {
	marker := ""
	if len(s) > n {
		cut := n
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s, marker = s[:cut], fmt.Sprintf(" (+%d bytes cut)", len(s)-cut)
	}
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		var b strings.Builder
		for _, r := range s {
			if unicode.IsPrint(r) {
				b.WriteRune(r)
			} else {
				q := strconv.QuoteRune(r)
				b.WriteString(q[1 : len(q)-1])
			}
		}
		s = b.String()
	}
	return s + marker
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
