//go:build !race

package meshfile

const raceDetector = false
