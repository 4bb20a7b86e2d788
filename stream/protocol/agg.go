package protocol

import "github.com/tickstream/tickstream/feeds/tick"

// PartMS is the candle bucket of an agg's parts: one second. Every candle
// interval (1s, 1m, 5m, 1h) is a whole number of them, so parts rebuild
// any of those bars exactly.
const PartMS = 1000

// Agg is what happened inside one coalescing window, as an update's
// "agg" carries it. Prices are the ticks' own decimals; V is their exact
// decimal sum.
//
// The window's priced ticks also fold into runs: consecutive ticks (in
// the order the bus accepted them) whose ts falls in the same one-second
// bucket. A run is what those ticks add to each candle bar, so a client
// that folds the runs in order into its bars builds exactly the candles
// the server keeps. In the common case, one run holding every tick of
// the window, the run is the agg itself in the bucket of the update's ts
// and is not sent; otherwise the update carries every run in "b" (see
// docs/protocol.md, "Candles from updates").
type Agg struct {
	N        int64    // ticks folded in
	O        tick.Num // first price
	H        tick.Num // highest price
	L        tick.Num // lowest price
	C        tick.Num // last price
	V        tick.Num // sum of size
	HasPrice bool     // whether any tick in the window carried a price

	PN  int64  // ticks that carried a price
	B   []Part // runs before Cur, oldest first; owned by this Agg
	Cur Part   // the latest run (N == 0: no priced tick yet)
}

// Part is one run of an agg: ticks with a price whose ts falls in the
// one-second bucket starting at T, in a row.
type Part struct {
	T int64    `json:"t"` // bucket start, Unix ms (a multiple of PartMS)
	N int64    `json:"n"` // ticks
	O tick.Num `json:"o"` // first price
	H tick.Num `json:"h"` // highest price
	L tick.Num `json:"l"` // lowest price
	C tick.Num `json:"c"` // last price
	V tick.Num `json:"v"` // sum of size
}

// PartBucket returns the start of ts's part bucket.
func PartBucket(ts int64) int64 {
	if ts < 0 {
		return ts - (PartMS+ts%PartMS)%PartMS
	}
	return ts - ts%PartMS
}

// Fold adds one tick: its ts, its price if priced, and its size (zero if
// none).
func (a *Agg) Fold(ts int64, price tick.Num, priced bool, size tick.Num) {
	a.N++
	a.V = a.V.Add(size)
	if !priced {
		return
	}
	a.PN++
	a.FoldPrice(price)
	a.pushRun(Part{T: PartBucket(ts), N: 1, O: price, H: price, L: price, C: price, V: size})
}

// FoldPrice adds one price to the window's OHLC (not to its runs; Fold
// does both).
func (a *Agg) FoldPrice(p tick.Num) {
	if !a.HasPrice {
		a.O, a.H, a.L, a.C, a.HasPrice = p, p, p, p, true
		return
	}
	if p.Cmp(a.H) > 0 {
		a.H = p
	}
	if p.Cmp(a.L) < 0 {
		a.L = p
	}
	a.C = p
}

// pushRun appends r after the runs so far, joining the latest if r is in
// its bucket.
func (a *Agg) pushRun(r Part) {
	switch {
	case a.Cur.N == 0:
		a.Cur = r
	case a.Cur.T == r.T:
		a.Cur.merge(r)
	default:
		a.B = append(a.B, a.Cur)
		a.Cur = r
	}
}

// merge folds r, which came after p in the same bucket, into p.
func (p *Part) merge(r Part) {
	p.N += r.N
	p.V = p.V.Add(r.V)
	if r.H.Cmp(p.H) > 0 {
		p.H = r.H
	}
	if r.L.Cmp(p.L) < 0 {
		p.L = r.L
	}
	p.C = r.C
}

// Parts returns whether the runs must be sent ("b"): there is a priced
// tick and the window is not a single run of priced ticks only.
func (a *Agg) Parts() bool {
	return a.Cur.N > 0 && (len(a.B) > 0 || a.PN != a.N)
}

// Merge folds b, which happened after a, into a. It may append to a.B,
// which a must own; b is not changed.
func (a *Agg) Merge(b Agg) {
	a.N += b.N
	a.PN += b.PN
	a.V = a.V.Add(b.V)
	if !b.HasPrice {
		return
	}
	for _, r := range b.B {
		a.pushRun(r)
	}
	if b.Cur.N > 0 {
		a.pushRun(b.Cur)
	}
	if !a.HasPrice {
		a.O, a.H, a.L, a.C, a.HasPrice = b.O, b.H, b.L, b.C, true
		return
	}
	if b.H.Cmp(a.H) > 0 {
		a.H = b.H
	}
	if b.L.Cmp(a.L) < 0 {
		a.L = b.L
	}
	a.C = b.C
}
