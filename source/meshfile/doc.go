// Package meshfile is the source for a mesh without Kubernetes: it reads
// mesh files (YAML documents in the bulwark.dev/v1alpha1 schema), checks
// them strictly, and writes what they describe to the model store. It
// watches the files and applies every valid edit; an invalid edit is
// refused with errors that name the file, line, object and field, and the
// last good state stays in the store.
//
// It must never know about Envoy or xDS: it describes intent only.
package meshfile
