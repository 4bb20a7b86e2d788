// Package record records a live tickstream server into the replay format:
// it subscribes to topics over the server's WebSocket (with stream/client)
// at throttle_ms 0 and writes every tick as one line of NDJSON in the tick
// format (feeds.ParseTick), which the replay feed plays back.
// `tickstream record` is a thin command around Run.
//
// An update that is exactly the next tick (agg.n 1, seq one past the last
// tick written) is written as it is. Anything else is filled in from the
// server's /api/history, raw tick by raw tick, up to the update's seq: an
// update merged while the server had stepped the recorder down (agg.n > 1;
// its data is no single tick), a seq gap, or the snapshot after a reset.
// So the recording holds every tick once, in seq order per topic, as long
// as the server's history still has it; ticks it no longer has are left
// out, and each such hole is logged (LogMissing) with its count.
//
// A dropped connection is redialled with backoff and the subscription
// resumes from the (epoch, seq) of the last tick written per topic, so the
// server replays what was missed. If it no longer can (the gap outgrew its
// history, or it restarted without its store), it sends a reset and a
// snapshot, and Run fills in from history as above.
//
// Concurrency: Run writes to Options.Out from the calling goroutine only,
// and returns only after the connection has been closed.
package record
