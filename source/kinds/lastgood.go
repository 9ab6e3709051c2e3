package kinds

import "github.com/bulwarkmesh/bulwark/model"

// LastGood remembers, per object, the last generation that was accepted,
// so an invalid edit leaves the previous one in force instead of
// removing the policy. It is not safe for concurrent use.
type LastGood struct {
	m    map[Ref]Object
	seen map[Ref]bool
}

// NewLastGood returns an empty memory.
func NewLastGood() *LastGood { return &LastGood{m: map[Ref]Object{}, seen: map[Ref]bool{}} }

// Decide accepts the object's current spec or, when it is invalid (or
// could not be decoded: decodeErr), falls back to its last good
// generation. It returns what is in force (ok false: nothing) and the
// verdict to report.
func (l *LastGood) Decide(k *Kind, meta Meta, spec any, decodeErr error, mesh *model.Mesh) (Object, bool, Verdict) {
	ref := Ref{k.Name, meta.Namespace, meta.Name}
	l.seen[ref] = true
	err := decodeErr
	var obj Object
	if err == nil {
		obj, err = k.Accept(meta, spec, mesh)
	}
	v := Verdict{Generation: meta.Generation, Err: err}
	if err == nil {
		l.m[ref] = obj
		return obj, true, v
	}
	prev, had := l.m[ref]
	if !had {
		return Object{}, false, v
	}
	v.Kept = prev.Meta.Generation
	return prev, true, v
}

// Sweep forgets the objects Decide was not asked about since the last
// Sweep: they were deleted.
func (l *LastGood) Sweep() {
	for ref := range l.m {
		if !l.seen[ref] {
			delete(l.m, ref)
		}
	}
	clear(l.seen)
}
