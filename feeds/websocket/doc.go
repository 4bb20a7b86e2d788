// Package websocket is the websocket feed: a client (github.com/coder/websocket)
// that connects to an exchange-style WebSocket, sends subscribe messages and
// maps the messages it receives to ticks. Coinbase Exchange and Binance
// message formats are built in; format generic maps any JSON message with
// JSON paths. See README.md for the options.
//
// Reconnecting is the supervisor's job: Run is one connection, and returns
// an error when it fails, so that the feed shows as restarting with its
// last error and is redialled (and resubscribed) with backoff.
//
// Concurrency: Run reads and maps messages on the calling goroutine; the
// connection's own goroutines end before Run returns. A Source may be Run
// again after Run returns, but not twice at once.
package websocket
