// Package feeds defines how ticks enter tickstream: the Tick value, the
// Source interface that every feed implements, the Sink a feed publishes
// into, and the Registry that builds sources by type name from the config
// file.
//
// Adapters live in sub-packages (feeds/sim, …) and register themselves from
// init, which does no I/O and starts no goroutines. Import feeds/all to get
// every built-in adapter.
//
// Concurrency: a Registry is safe for concurrent use. A Source's Run is
// called from one goroutine owned by whoever runs the feed; it must return
// when its context is cancelled (nil on cancel) and must not keep goroutines
// running after it returns. Sink.Publish is safe for concurrent use and never
// blocks on a subscriber.
package feeds
