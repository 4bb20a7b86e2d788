// Package record records a live tickstream server into the replay format:
// it subscribes to topics over the server's WebSocket with throttle_ms 0,
// so that every update is exactly one tick, and writes each update as one
// line of NDJSON in the tick format (feeds.ParseTick), which the replay
// feed plays back. `tickstream record` is a thin command around Run.
//
// A dropped connection is redialled with backoff and the subscription
// resumes from the last (epoch, seq) of every topic, so the server replays
// what was missed: nothing lost, nothing twice. If the server no longer
// has that history (it restarted, or the gap outgrew its history), it
// sends a reset; Run logs it and goes on from the new snapshot.
//
// Concurrency: Run writes to Options.Out from the calling goroutine only,
// and returns only after the connection's goroutines have stopped.
package record
