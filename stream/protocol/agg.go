package protocol

// Agg is what happened inside one coalescing window, as an update's
// "agg" carries it.
type Agg struct {
	N        int64   // ticks folded in
	O        float64 // first price
	H        float64 // highest price
	L        float64 // lowest price
	C        float64 // last price
	V        float64 // sum of size
	HasPrice bool    // whether any tick in the window carried a price
}

// FoldPrice adds one price to the OHLC.
func (a *Agg) FoldPrice(p float64) {
	if !a.HasPrice {
		a.O, a.H, a.L, a.C, a.HasPrice = p, p, p, p, true
		return
	}
	if p > a.H {
		a.H = p
	}
	if p < a.L {
		a.L = p
	}
	a.C = p
}

// Merge folds b, which happened after a, into a.
func (a *Agg) Merge(b Agg) {
	a.N += b.N
	a.V += b.V
	if !b.HasPrice {
		return
	}
	if !a.HasPrice {
		a.O, a.H, a.L, a.C, a.HasPrice = b.O, b.H, b.L, b.C, true
		return
	}
	if b.H > a.H {
		a.H = b.H
	}
	if b.L < a.L {
		a.L = b.L
	}
	a.C = b.C
}
