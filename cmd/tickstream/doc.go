// Command tickstream streams live market data and dashboard metrics to
// browsers over WebSocket and SSE. Run it with no flags for the built-in
// simulator and the dashboard at http://localhost:8080/.
//
// Usage:
//
//	tickstream [--config tickstream.yaml] [flags]
//	tickstream record --topics BTC-USD,ETH-USD --out day.ndjson [--url ws://localhost:8080/ws]
//
// Run tickstream --help for every flag.
package main
