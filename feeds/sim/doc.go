// Package sim is the built-in simulator feed: a plausible market for a set
// of symbols, with trades, bid/ask, sizes and a running volume. It is the
// default feed, so that `go run ./cmd/tickstream` shows a live market with
// no other setup.
//
// Each symbol has a profile (Profiles): starting price, annualised
// volatility, mean tick rate, price and size decimals, median trade size
// and typical spread (BTC-USD ticks about 12 times a second at 0.55
// volatility with 2-decimal prices and 5-decimal sizes; AAPL 6 times at
// 0.25 in whole shares; EUR-USD 3 times at 0.07 with 5 decimals). Ticks
// arrive as a Poisson process whose rate switches between normal
// activity, bursts (5× the ticks, 2× the volatility, a few seconds) and
// lulls (a fifth of the ticks); the mid price is a geometric Brownian
// motion over the real time between ticks; each tick is a trade at the
// bid or the ask of a spread that fits the price and the tick size.
//
// At start the feed generates the last hours (history, default 3h) at a
// gentler pace (history_interval per symbol, default 2s) and publishes
// them with their past ts, oldest first, before going live, so that the
// dashboard's chart is full on first load. History must stay within the
// server's max_tick_age_ms (24h by default); it is published once per
// process, not again when the supervisor restarts the feed.
//
// Options (all optional):
//
//	symbols:          [BTC-USD, ETH-USD, …]  symbols (default: 8 crypto, equity and FX symbols)
//	rate:             0                      mean ticks per second of every symbol; 0 = per profile
//	volatility:       0                      annualised volatility of every symbol; 0 = per profile
//	history:          3h                     past generated at start; negative = none
//	history_interval: 2s                     mean time between two history ticks of a symbol
//	seed:             0                      random seed; 0 means random
//
// Concurrency: Run publishes from the caller's goroutine only and starts
// none of its own.
package sim
