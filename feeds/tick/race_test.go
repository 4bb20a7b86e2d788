//go:build race

package tick

const raceEnabled = true
