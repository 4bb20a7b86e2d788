package client

import (
	"sort"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream/protocol"
)

// Bar is one OHLCV candle, as /api/candles serves it: T is the bar's
// start (Unix ms), prices are the ticks' own decimals, V is their exact
// sum and N the ticks with a price.
type Bar struct {
	T int64    `json:"t"`
	O tick.Num `json:"o"`
	H tick.Num `json:"h"`
	L tick.Num `json:"l"`
	C tick.Num `json:"c"`
	V tick.Num `json:"v"`
	N int64    `json:"n"`
}

// Bars keeps one topic's candles of one interval exact from updates, at
// any throttle and lag (docs/protocol.md, "Candles from updates"). Seed it
// with /api/candles, then Fold every update after the X-Tickstream-Seq of
// that answer (or fold every update from the topic's first tick). The zero
// value is not usable: make one with NewBars.
type Bars struct {
	ms   int64
	bars []Bar // oldest first
}

// NewBars returns empty bars of interval ms (1000, 60000, 300000, 3600000
// or any multiple of 1000), seeded with seed (oldest first), if any.
func NewBars(intervalMS int64, seed []Bar) *Bars {
	return &Bars{ms: intervalMS, bars: append([]Bar(nil), seed...)}
}

// Fold folds one update (any other message is ignored).
func (b *Bars) Fold(m protocol.WireMessage) {
	if m.Type != protocol.TypeUpdate || m.Agg == nil {
		return
	}
	for _, p := range m.Agg.Runs(m.TS) {
		b.FoldPart(p)
	}
}

// FoldPart folds one run of an update (protocol.WireAgg.Runs), with the
// server's rule: a new bar after the newest, the newest bar extended, or
// a late run into its own older bar (created in order if missing), whose
// open and close stay.
func (b *Bars) FoldPart(p protocol.Part) {
	if p.N == 0 || p.T < 0 {
		return
	}
	t := p.T - p.T%b.ms
	nb := Bar{T: t, O: p.O, H: p.H, L: p.L, C: p.C, V: p.V, N: p.N}
	n := len(b.bars)
	if n == 0 || t > b.bars[n-1].T {
		b.bars = append(b.bars, nb)
		return
	}
	i := sort.Search(n, func(i int) bool { return b.bars[i].T >= t })
	if b.bars[i].T != t {
		b.bars = append(b.bars[:i], append([]Bar{nb}, b.bars[i:]...)...)
		return
	}
	bar := &b.bars[i]
	if p.H.Cmp(bar.H) > 0 {
		bar.H = p.H
	}
	if p.L.Cmp(bar.L) < 0 {
		bar.L = p.L
	}
	bar.V = bar.V.Add(p.V)
	bar.N += p.N
	if i == n-1 {
		bar.C = p.C
	}
}

// Last returns up to limit newest bars, oldest first (a copy).
func (b *Bars) Last(limit int) []Bar {
	n := max(0, min(limit, len(b.bars)))
	return append([]Bar(nil), b.bars[len(b.bars)-n:]...)
}

// Len returns the number of bars.
func (b *Bars) Len() int { return len(b.bars) }
