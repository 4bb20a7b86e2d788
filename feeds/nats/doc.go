// Package nats is the nats feed: it subscribes to NATS subjects (wildcards
// allowed) that carry ticks as JSON in the tick format
// (`{"topic":"BTC-USD","ts":1700000000000,"price":1.5}`, see
// feeds.ParseTick). The topic comes from the JSON, or from the subject when
// the JSON has none and subject_topic is set. See README.md for options.
//
// Any language can feed tickstream this way: publish JSON on a subject.
//
// Concurrency: messages arrive on a channel and are published from the
// goroutine that called Run; the NATS client's own goroutines stop when Run
// closes the connection. Run is one connection: on disconnect it returns an
// error and the supervisor reconnects with backoff, so the feed's state
// shows the outage. A Source may be Run again after Run returns.
package nats
