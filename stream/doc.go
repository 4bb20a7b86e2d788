// Package stream is tickstream's topic bus and delivery engine.
//
// A Bus keeps, per topic, the sequence (epoch, seq), the latest value of
// every field, a bounded ring of raw ticks for resume and /api/history, and
// bounded OHLCV candles at 1s, 1m, 5m and 1h. Publish folds a tick into
// every open coalescing window of the topic and returns; it never waits for
// a subscriber.
//
// Subscribers of a topic are grouped by throttle interval. Each (topic,
// interval) group has one open window; one flusher goroutine per distinct
// interval closes the dirty windows, encodes each update once and puts the
// same bytes on every member's queue. Throttle 0 encodes each tick once and
// shares it the same way; the ticks that came since a topic's last pass go
// on each queue as one update run (one entry, the bytes joined once).
// There is no goroutine or timer per (subscriber, topic).
//
// A Subscriber is one connection's view: its subscriptions and one bounded
// outbound queue. Deliver drains the queue into a Transport, several
// messages per write. When the Transport is a DirectTransport, the flusher
// that queued to an idle subscriber writes its queue itself at the end of
// its pass, without blocking (a long pass's subscribers are split over the
// flusher's writer goroutines), and Deliver's goroutine only finishes
// what a socket did not take and writes the rest (control messages,
// lagging clients); one batch at a time, in queue order, either way. When the queue passes BusConfig.MaxPendingBytes the
// subscriber steps down: pending updates merge per topic (aggregates stay
// exact), writes are paced at BusConfig.LagThrottle and a status message
// tells the client. Only a transport stuck past its write deadline, or a
// subscriber whose queue passes four times the bound, is closed.
//
// Concurrency contract: every exported method of Bus and Subscriber is safe
// for concurrent use. The Bus owns every goroutine it starts (flushers and
// their writers);
// Close stops them and disconnects every subscriber. Deliver runs on the
// caller's goroutine and returns when the subscriber is closed, the
// transport fails or the context ends. Lock order: Bus.mu → topic.mu →
// Subscriber.subMu → Subscriber.mu → flusher.mu. Bus.mu is held only for
// lookups, map updates and copies, never across a scan of the topics or
// a join: a publish never waits for a subscribe, and the first tick of a
// new topic waits only for that topic's joins (under its topic.mu).
//
// A subscribe's joins (snapshot or replay, then membership) are made while
// the subscriber's queue is under half of MaxPendingBytes; the rest wait
// on the subscriber and are made as Deliver writes, so that a subscribe to
// thousands of topics is paced like any other backlog. A named topic with
// no tick yet is a pending interest (bounded per subscriber, not a topic)
// that its creation turns into a membership.
//
// With a Store (BusConfig.Store), NewBus loads the epoch and every topic's
// seq, fields, history ring and candles from it, and Publish appends each
// accepted tick to it under the topic's lock (Store.Append only queues;
// the store's own lock comes after topic.mu), then waits for Store.Settle
// unlocked. Seqs come from a Sequencer (LocalSequencer in-process).
//
// With a Forwarder (BusConfig.Forward, a cluster: stream/cluster), Publish
// validates a tick and hands it to the cluster holding no lock; the tick
// comes back, on every node, through Apply with the cluster's seq, and is
// folded like a local one (under topic.mu, never waiting for a
// subscriber).
package stream
