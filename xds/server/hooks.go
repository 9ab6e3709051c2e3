package server

import "github.com/bulwarkmesh/bulwark/model"

// hooks are points where this package's tests can hold a goroutine, to
// show a race between goroutines without relying on timing. Every hook
// is nil outside those tests, and a nil hook costs a comparison.
type hooks struct {
	// beforeSnapshot runs on the Run goroutine in every publish pass,
	// just before the pass takes its snapshot of the model.
	beforeSnapshot func()
	// published runs on the Run goroutine at the end of every publish
	// pass, with the snapshot the pass published.
	published func(*model.Snapshot)
	// beforeClear runs on a closing stream's goroutine when that was the
	// node's last stream, after the server has forgotten the proxy and
	// before the node's configuration is cleared from the cache.
	beforeClear func(node string)
}
