package stream

import (
	"fmt"
	"sort"
	"strings"
)

// Candle is one OHLCV bar. T is the bar's start, Unix milliseconds.
type Candle struct {
	T int64   `json:"t"`
	O float64 `json:"o"`
	H float64 `json:"h"`
	L float64 `json:"l"`
	C float64 `json:"c"`
	V float64 `json:"v"`
	N int64   `json:"n"`
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

// fold folds a tick into its bar and returns that bar and whether the
// tick opened it (nil when the tick's bar is no longer kept).
func (r *candleRing) fold(ts int64, price, size float64, depth int) (*Candle, bool) {
	if ts < 0 || depth <= 0 {
		return nil, false
	}
	t := ts - ts%r.ms
	if n := r.n(); n > 0 {
		last := r.at(n - 1)
		switch {
		case t == last.T:
			foldBar(last, price, size)
			return last, false
		case t < last.T:
			// A late tick goes into its own bar if that bar is still kept;
			// the close stays with the later tick.
			i := sort.Search(n, func(i int) bool { return r.at(i).T >= t })
			if i < n && r.at(i).T == t {
				b := r.at(i)
				b.H, b.L = max(b.H, price), min(b.L, price)
				b.V += size
				b.N++
				return b, false
			}
			return nil, false
		}
	}
	bar := Candle{T: t, O: price, H: price, L: price, C: price, V: size, N: 1}
	if len(r.bars) < depth {
		r.bars = append(r.bars, bar) // start is 0 until the ring is full
		return &r.bars[len(r.bars)-1], true
	}
	b := &r.bars[r.start]
	*b = bar
	r.start = (r.start + 1) % len(r.bars)
	return b, true
}

func foldBar(b *Candle, price, size float64) {
	b.H, b.L, b.C = max(b.H, price), min(b.L, price), price
	b.V += size
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
