package model

import (
	"errors"
	"fmt"
	"strconv"
)

// Path is the location of a field inside an object, written the way an
// operator reads it in YAML: "spec.workloads[2].address".
type Path string

// Child returns the path of the named field below p.
func (p Path) Child(name string) Path {
	if p == "" {
		return Path(name)
	}
	return Path(string(p) + "." + name)
}

// Index returns the path of the i'th element of the list at p.
func (p Path) Index(i int) Path {
	return Path(string(p) + "[" + strconv.Itoa(i) + "]")
}

// Key returns the path of the map entry k of the map at p.
func (p Path) Key(k string) Path {
	return Path(string(p) + "[" + strconv.Quote(k) + "]")
}

// FieldError is one problem with one field. Validation returns every
// FieldError it finds, joined with errors.Join, so an operator can fix a
// file in one pass.
type FieldError struct {
	Path   Path
	Detail string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Detail
	}
	return string(e.Path) + ": " + e.Detail
}

func fieldErrorf(p Path, format string, args ...any) error {
	return &FieldError{Path: p, Detail: fmt.Sprintf(format, args...)}
}

// FieldErrors flattens err (a FieldError, or a tree of them joined with
// errors.Join) into its FieldErrors, in order. Errors that are not
// FieldErrors are reported with an empty path.
func FieldErrors(err error) []*FieldError {
	if err == nil {
		return nil
	}
	var out []*FieldError
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, c := range j.Unwrap() {
				walk(c)
			}
			return
		}
		var fe *FieldError
		if errors.As(e, &fe) {
			out = append(out, fe)
			return
		}
		out = append(out, &FieldError{Detail: e.Error()})
	}
	walk(err)
	return out
}
