//go:build race

package meshfile

// raceDetector: the race detector makes loading about ten times slower,
// and the tests of size and time scale down under it (make test runs
// them at full size without it).
const raceDetector = true
