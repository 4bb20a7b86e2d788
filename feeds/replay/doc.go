// Package replay is the replay feed: it plays a CSV or NDJSON file
// (optionally gzipped) as ticks, paced by the file's timestamps at a speed
// factor, once or in a loop with timestamps shifted forward each pass.
//
// NDJSON in the tick format is what `tickstream record` writes, so any
// recorded session replays as it was. CSV columns (and NDJSON keys) map to
// the topic, the timestamp and tick fields through options; see README.md.
//
// Concurrency: Run reads the file on the calling goroutine and starts no
// other; a Source may be Run again after Run returns (each Run re-opens the
// file), but not twice at once.
package replay
