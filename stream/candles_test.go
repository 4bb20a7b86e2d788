package stream

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tickstream/tickstream/feeds/tick"
)

func num(v float64) tick.Num {
	n, _ := tick.NumOf(v)
	return n
}

type candleTick struct {
	ts          int64
	price, size float64
}

func TestCandleRing(t *testing.T) {
	t.Parallel()
	c := func(t0 int64, o, h, l, cl, v float64, n int64) Candle {
		return Candle{T: t0, O: num(o), H: num(h), L: num(l), C: num(cl), V: num(v), N: n}
	}
	tests := []struct {
		name  string
		depth int
		ticks []candleTick
		want  []Candle
	}{
		{"one bar", 3, []candleTick{{1000, 10, 1}, {1500, 12, 2}, {1999, 9, 0.5}},
			[]Candle{c(1000, 10, 12, 9, 9, 3.5, 3)}},
		{"bar boundary", 3, []candleTick{{1999, 10, 1}, {2000, 11, 1}},
			[]Candle{c(1000, 10, 10, 10, 10, 1, 1), c(2000, 11, 11, 11, 11, 1, 1)}},
		{"gap between bars", 3, []candleTick{{1000, 1, 1}, {5000, 2, 1}},
			[]Candle{c(1000, 1, 1, 1, 1, 1, 1), c(5000, 2, 2, 2, 2, 1, 1)}},
		{"wraps at depth", 3, []candleTick{{1000, 1, 1}, {2000, 2, 1}, {3000, 3, 1}, {4000, 4, 1}, {5000, 5, 1}},
			[]Candle{c(3000, 3, 3, 3, 3, 1, 1), c(4000, 4, 4, 4, 4, 1, 1), c(5000, 5, 5, 5, 5, 1, 1)}},
		{"late tick into its kept bar", 3, []candleTick{{1000, 5, 1}, {2000, 5, 1}, {3000, 5, 1}, {1500, 9, 2}, {2100, 1, 3}},
			[]Candle{c(1000, 5, 9, 5, 5, 3, 2), c(2000, 5, 5, 1, 5, 4, 2), c(3000, 5, 5, 5, 5, 1, 1)}},
		{"late tick into a wrapped ring", 2, []candleTick{{1000, 5, 1}, {2000, 5, 1}, {3000, 5, 1}, {2500, 7, 1}},
			[]Candle{c(2000, 5, 7, 5, 5, 2, 2), c(3000, 5, 5, 5, 5, 1, 1)}},
		{"late tick for an evicted bar is dropped", 2, []candleTick{{1000, 5, 1}, {2000, 5, 1}, {3000, 5, 1}, {1500, 9, 1}},
			[]Candle{c(2000, 5, 5, 5, 5, 1, 1), c(3000, 5, 5, 5, 5, 1, 1)}},
		{"late tick in a gap gets its bar", 3, []candleTick{{1000, 5, 1}, {3000, 5, 1}, {2000, 9, 1}},
			[]Candle{c(1000, 5, 5, 5, 5, 1, 1), c(2000, 9, 9, 9, 9, 1, 1), c(3000, 5, 5, 5, 5, 1, 1)}},
		{"late tick in a gap of a full ring drops the oldest", 3, []candleTick{{1000, 5, 1}, {3000, 5, 1}, {4000, 5, 1}, {2000, 9, 1}},
			[]Candle{c(2000, 9, 9, 9, 9, 1, 1), c(3000, 5, 5, 5, 5, 1, 1), c(4000, 5, 5, 5, 5, 1, 1)}},
		{"exact decimal volume", 3, []candleTick{{1000, 5, 0.0161}, {1001, 5, 0.01052}},
			[]Candle{c(1000, 5, 5, 5, 5, 0.02662, 2)}},
		{"negative ts ignored", 3, []candleTick{{-1, 5, 1}, {1000, 6, 1}},
			[]Candle{c(1000, 6, 6, 6, 6, 1, 1)}},
		{"depth 0 keeps nothing", 0, []candleTick{{1000, 5, 1}}, []Candle{}},
		{"ts 0 is bar 0", 3, []candleTick{{0, 5, 1}, {999, 4, 1}},
			[]Candle{c(0, 5, 5, 4, 4, 2, 2)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := candleRing{ms: 1000}
			for _, tk := range tt.ticks {
				r.fold(tk.ts, num(tk.price), num(tk.size), tt.depth)
			}
			if got := r.last(100); !slices.Equal(got, tt.want) {
				t.Fatalf("bars\n got %+v\nwant %+v", got, tt.want)
			}
			if n := len(tt.want); n > 0 {
				if got := r.last(1); !slices.Equal(got, tt.want[n-1:]) {
					t.Fatalf("last(1) = %+v, want %+v", got, tt.want[n-1:])
				}
			}
			if got := r.last(0); len(got) != 0 {
				t.Fatalf("last(0) = %+v", got)
			}
		})
	}
}

// TestCandlesProperty publishes random in-order ticks and checks every
// interval's bars against a reference built by grouping the ticks.
func TestCandlesProperty(t *testing.T) {
	t.Parallel()
	for seed := uint64(1); seed <= 20; seed++ {
		rng := rand.New(rand.NewPCG(seed, 3))
		const depth = 7
		b := newTestBus(t, BusConfig{CandleDepth: depth})
		var ticks []tick.Tick
		ts := baseTS - baseTS%3_600_000 + rng.Int64N(3_600_000)
		for range 400 {
			ts += rng.Int64N([]int64{300, 20_000, 600_000}[rng.IntN(3)])
			tk := randTick(rng, "K", ts)
			mustPublish(t, b, tk)
			ticks = append(ticks, tk)
		}
		for _, iv := range CandleIntervals {
			var want []Candle
			for _, tk := range ticks {
				p, ok := tk.GetNum(tick.FieldPrice)
				if !ok {
					continue // a tick without price makes no bar
				}
				sz, _ := tk.GetNum(tick.FieldSize)
				t0 := tk.TS - tk.TS%iv.MS
				if n := len(want); n > 0 && want[n-1].T == t0 {
					foldBar(&want[n-1], p, sz)
					continue
				}
				want = append(want, Candle{T: t0, O: p, H: p, L: p, C: p, V: sz, N: 1})
			}
			want = want[max(0, len(want)-depth):]
			got, err := b.Candles("K", iv.Name, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("seed %d %s:\n got %+v\nwant %+v", seed, iv.Name, got, want)
			}
			got, _ = b.Candles("K", iv.Name, 2)
			if !slices.Equal(got, want[max(0, len(want)-2):]) {
				t.Fatalf("seed %d %s limit 2: got %+v", seed, iv.Name, got)
			}
		}
	}
}

func TestCandlesErrors(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{})
	mustPublish(t, b, priceTick("c", baseTS, 1, 1))
	tests := []struct {
		topic, interval string
		limit           int
		want            error
		bars            int
	}{
		{"c", "1s", 10, nil, 1},
		{"c", "1m", 10, nil, 1},
		{"c", "5m", 10, nil, 1},
		{"c", "1h", 10, nil, 1},
		{"c", "1m", 0, nil, 0},
		{"c", "1m", -1, nil, 0},
		{"c", "2m", 10, ErrBadInterval, 0},
		{"c", "", 10, ErrBadInterval, 0},
		{"nope", "1m", 10, ErrUnknownTopic, 0},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s/%d", tt.topic, tt.interval, tt.limit), func(t *testing.T) {
			t.Parallel()
			bars, err := b.Candles(tt.topic, tt.interval, tt.limit)
			if !errors.Is(err, tt.want) || len(bars) != tt.bars {
				t.Fatalf("Candles = %d bars, %v; want %d, %v", len(bars), err, tt.bars, tt.want)
			}
		})
	}
}

func TestHistory(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{HistoryDepth: 5})
	if _, err := b.History("h", 0, 10); !errors.Is(err, ErrUnknownTopic) {
		t.Fatalf("History of unknown topic = %v", err)
	}
	rng := rand.New(rand.NewPCG(5, 5))
	log := newTickLog()
	for i := range 12 {
		log.publish(t, b, randTick(rng, "h", baseTS+int64(i)))
	}
	seqs := func(h History) []uint64 {
		var out []uint64
		for _, tk := range h.Ticks {
			out = append(out, tk.Seq)
		}
		return out
	}
	tests := []struct {
		after uint64
		limit int
		want  []uint64
	}{
		{0, 100, []uint64{8, 9, 10, 11, 12}},
		{7, 100, []uint64{8, 9, 10, 11, 12}},
		{9, 2, []uint64{10, 11}},
		{11, 100, []uint64{12}},
		{12, 100, nil},
		{100, 100, nil},
		{0, 0, nil},
		{0, -1, nil},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("after %d limit %d", tt.after, tt.limit), func(t *testing.T) {
			t.Parallel()
			h, err := b.History("h", tt.after, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if h.Topic != "h" || h.Epoch != "e1" || h.Oldest != 8 || h.Last != 12 || h.Ticks == nil {
				t.Fatalf("History = %+v", h)
			}
			if got := seqs(h); !slices.Equal(got, tt.want) {
				t.Fatalf("seqs %v, want %v", got, tt.want)
			}
			for _, tk := range h.Ticks {
				want := log.ticks["h"][tk.Seq]
				if tk.TS != want.TS || !slices.Equal([]tick.Field(tk.Data), want.Fields) {
					t.Fatalf("tick %d: %+v, want %+v", tk.Seq, tk, want)
				}
			}
		})
	}
	t.Run("paging", func(t *testing.T) {
		t.Parallel()
		var got []uint64
		after := uint64(0)
		for range 10 {
			h, _ := b.History("h", after, 2)
			if len(h.Ticks) == 0 {
				break
			}
			got = append(got, seqs(h)...)
			after = h.Ticks[len(h.Ticks)-1].Seq
		}
		if !slices.Equal(got, []uint64{8, 9, 10, 11, 12}) {
			t.Fatalf("paged seqs %v", got)
		}
	})
}

// TestHistoryRingWraps checks the ring at every fill level.
func TestHistoryRingWraps(t *testing.T) {
	t.Parallel()
	const depth = 4
	b := newTestBus(t, BusConfig{HistoryDepth: depth})
	for i := 1; i <= 3*depth+1; i++ {
		mustPublish(t, b, priceTick("w", baseTS+int64(i), float64(i), 1))
		h, _ := b.History("w", 0, 100)
		var want []uint64
		for s := max(1, i-depth+1); s <= i; s++ {
			want = append(want, uint64(s))
		}
		var got []uint64
		for _, tk := range h.Ticks {
			got = append(got, tk.Seq)
			if p := tk.Data[0].Value; p.Float() != float64(tk.Seq) {
				t.Fatalf("after %d ticks: seq %d has price %v", i, tk.Seq, p)
			}
		}
		if !slices.Equal(got, want) || h.Oldest != want[0] {
			t.Fatalf("after %d ticks: seqs %v oldest %d, want %v", i, got, h.Oldest, want)
		}
	}
}
