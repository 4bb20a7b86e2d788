// Package sim is the built-in simulator feed: a random-walk market
// (geometric Brownian motion) for a set of symbols, with trades, bid/ask,
// sizes and a running volume. It is the default feed, so that
// `go run ./cmd/tickstream` shows a live market with no other setup.
//
// Options (all optional):
//
//	symbols:    [BTC-USD, ETH-USD, …]  symbols to simulate (default: 8 crypto and equity symbols)
//	rate:       25                     ticks per second per symbol
//	volatility: 0.8                    annualised volatility (σ of GBM)
//	seed:       0                      random seed; 0 means random
//
// Concurrency: Run publishes from the caller's goroutine only and starts
// none of its own.
package sim
