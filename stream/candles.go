package stream

import (
	"fmt"
	"sort"
	"strings"

	"github.com/tickstream/tickstream/feeds/tick"
)

// Candle is one OHLCV bar. T is the bar's start, Unix milliseconds.
// Prices are the ticks' own decimals and V their exact decimal sum.
type Candle struct {
	T int64    `json:"t"`
	O tick.Num `json:"o"`
	H tick.Num `json:"h"`
	L tick.Num `json:"l"`
	C tick.Num `json:"c"`
	V tick.Num `json:"v"`
	N int64    `json:"n"`
}

// CandleIntervals are the bar sizes kept per topic, by name.
var CandleIntervals = []struct {
	Name string
	MS   int64
}{
	{"1s", 1000},
	{"1m", 60_000},
	{"5m", 300_000},
	{"1h", 3_600_000},
}

// ErrBadInterval is returned for a candle interval that is not kept.
var ErrBadInterval = fmt.Errorf("stream: bad candle interval (want one of %s)", intervalNames())

func intervalNames() string {
	names := make([]string, len(CandleIntervals))
	for i, iv := range CandleIntervals {
		names[i] = iv.Name
	}
	return strings.Join(names, ", ")
}

func intervalIndex(name string) int {
	for i, iv := range CandleIntervals {
		if iv.Name == name {
			return i
		}
	}
	return -1
}

// candleRing keeps the newest bars of one interval. It grows by append up
// to its depth, then overwrites the oldest bar, so a quiet topic costs
// little memory.
type candleRing struct {
	ms    int64
	bars  []Candle
	start int // index of the oldest bar once the ring is full
}

func (r *candleRing) n() int           { return len(r.bars) }
func (r *candleRing) at(i int) *Candle { return &r.bars[(r.start+i)%len(r.bars)] }

// fold adds one priced tick in the order the bus accepted it, and returns
// the bar it changed and whether the tick opened that bar (nil when the
// tick is older than every kept bar). A tick in the newest bar's bucket
// or later extends that bar or starts a new one. A late tick (an older
// bucket) goes into its own bar, which is created in order if it is not
// there yet, as long as it is within the kept bars; the open and close of
// an existing bar stay with the ticks that came first and last in time
// order. Clients rebuild the same bars from updates with the same rule
// (docs/protocol.md).
func (r *candleRing) fold(ts int64, price, size tick.Num, depth int) (*Candle, bool) {
	if ts < 0 || depth <= 0 {
		return nil, false
	}
	t := ts - ts%r.ms
	bar := Candle{T: t, O: price, H: price, L: price, C: price, V: size, N: 1}
	if n := r.n(); n > 0 {
		last := r.at(n - 1)
		switch {
		case t == last.T:
			foldBar(last, price, size)
			return last, false
		case t < last.T:
			i := sort.Search(n, func(i int) bool { return r.at(i).T >= t })
			if i < n && r.at(i).T == t {
				b := r.at(i)
				if price.Cmp(b.H) > 0 {
					b.H = price
				}
				if price.Cmp(b.L) < 0 {
					b.L = price
				}
				b.V = b.V.Add(size)
				b.N++
				return b, false
			}
			if i == 0 && n >= depth {
				return nil, false // older than every kept bar
			}
			return r.insert(i, bar, depth), true
		}
	}
	if len(r.bars) < depth {
		r.bars = append(r.bars, bar) // start is 0 until the ring is full
		return &r.bars[len(r.bars)-1], true
	}
	b := &r.bars[r.start]
	*b = bar
	r.start = (r.start + 1) % len(r.bars)
	return b, true
}

// insert puts bar at position i (oldest first) and returns it.
func (r *candleRing) insert(i int, bar Candle, depth int) *Candle {
	bars := r.last(r.n())
	bars = append(bars[:i], append([]Candle{bar}, bars[i:]...)...)
	if k := len(bars) - depth; k > 0 {
		bars, i = bars[k:], i-k
	}
	r.bars, r.start = bars, 0
	return &r.bars[i]
}

func foldBar(b *Candle, price, size tick.Num) {
	if price.Cmp(b.H) > 0 {
		b.H = price
	}
	if price.Cmp(b.L) < 0 {
		b.L = price
	}
	b.C = price
	b.V = b.V.Add(size)
	b.N++
}

// last returns up to limit newest bars, oldest first.
func (r *candleRing) last(limit int) []Candle {
	total := r.n()
	n := max(0, min(limit, total)) // a negative limit means none
	out := make([]Candle, 0, n)
	for i := total - n; i < total; i++ {
		out = append(out, *r.at(i))
	}
	return out
}
