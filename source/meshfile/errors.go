package meshfile

import (
	"errors"
	"fmt"
	"strings"
)

// ErrNoMesh is returned when no file holds a Mesh document.
var ErrNoMesh = errors.New("no Mesh document found")

// Error is one problem in a mesh file, located as precisely as the file
// allows.
type Error struct {
	File   string
	Line   int    // 1-based; 0 when unknown
	Object string // "Kind name", empty before the object is known
	Path   string // field path inside the object, e.g. spec.workloads[1].address
	Detail string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	}
	if e.Object != "" {
		b.WriteString(e.Object)
		b.WriteString(": ")
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Detail)
	return b.String()
}

// Errors flattens an error returned by this package into its *Error
// values, in order.
func Errors(err error) []*Error {
	var out []*Error
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, c := range j.Unwrap() {
				walk(c)
			}
			return
		}
		var fe *Error
		if errors.As(e, &fe) {
			out = append(out, fe)
			return
		}
		out = append(out, &Error{Detail: e.Error()})
	}
	walk(err)
	return out
}
