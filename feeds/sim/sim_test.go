package sim

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/tick"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type collect struct {
	mu    sync.Mutex
	ticks []feeds.Tick
}

func (c *collect) Publish(t feeds.Tick) error {
	if err := t.Validate(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ticks = append(c.ticks, t.Clone())
	return nil
}

func (c *collect) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ticks)
}

func TestRunPublishesValidMarketTicks(t *testing.T) {
	src, err := NewSource("sim", Options{Symbols: []string{"A", "B"}, Rate: 200, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := &collect{}
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, out) }()
	deadline := time.Now().Add(5 * time.Second)
	for out.len() < 100 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v on cancel, want nil", err)
	}
	if out.len() < 100 {
		t.Fatalf("got %d ticks in 5 s at 200/s", out.len())
	}
	last := map[string]float64{}
	for _, tk := range out.ticks {
		for _, name := range feeds.MarketFields {
			if _, ok := tk.Get(name); !ok {
				t.Fatalf("tick %+v lacks %s", tk, name)
			}
		}
		p, _ := tk.Get(feeds.FieldPrice)
		bid, _ := tk.Get(feeds.FieldBid)
		ask, _ := tk.Get(feeds.FieldAsk)
		if p <= 0 || bid > ask {
			t.Fatalf("bad quote: price %v bid %v ask %v", p, bid, ask)
		}
		last[tk.Topic] = p
	}
	if len(last) != 2 {
		t.Fatalf("topics %v, want A and B", last)
	}
}

func TestOptionsAreValidated(t *testing.T) {
	for name, o := range map[string]Options{
		"negative rate":   {Rate: -1},
		"huge volatility": {Volatility: 1000},
		"bad symbol":      {Symbols: []string{"no spaces"}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := NewSource("s", o); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}

// refusing refuses every tick of one topic, as the bus refuses a tick over
// one of its limits, and reports closed once closed is set.
type refusing struct {
	collect
	topic  string
	closed bool
}

func (r *refusing) Publish(t feeds.Tick) error {
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return fmt.Errorf("stream: %w", feeds.ErrClosed)
	}
	if t.Topic == r.topic {
		return &feeds.TickError{Err: feeds.ErrOverLimit, Detail: "too many topics"}
	}
	return r.collect.Publish(t)
}

// TestRunSkipsRefusedTicksAndStopsWhenClosed: a refused tick does not stop
// the simulator; a closed bus does, with nil.
func TestRunSkipsRefusedTicksAndStopsWhenClosed(t *testing.T) {
	src, err := NewSource("sim", Options{Symbols: []string{"A", "B"}, Rate: 500, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	sink := &refusing{topic: "A"}
	done := make(chan error, 1)
	go func() { done <- src.Run(context.Background(), sink) }()
	deadline := time.Now().Add(5 * time.Second)
	for sink.len() < 20 {
		select {
		case err := <-done:
			t.Fatalf("Run returned %v after a refused tick", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("no ticks")
		}
		time.Sleep(time.Millisecond)
	}
	sink.mu.Lock()
	sink.closed = true
	sink.mu.Unlock()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil on a closed bus", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop on a closed bus")
	}
}

// simulate steps the default markets for d of simulated time (no
// sleeping) and returns every tick.
func simulate(t *testing.T, seed uint64, d time.Duration) []feeds.Tick {
	t.Helper()
	src, err := NewSource("sim", Options{Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	const start = int64(1_700_000_000_000)
	m := newMarkets(src.opts.Symbols, src.profiles, seed, start)
	var out []feeds.Tick
	var tk feeds.Tick
	for range 10_000_000 { // bounded
		k := m.nextIndex()
		if m.ms[k].next >= start+d.Milliseconds() {
			return out
		}
		m.step(k, &tk)
		out = append(out, tk.Clone())
	}
	t.Fatal("simulation did not end")
	return nil
}

func decimals(n tick.Num) int {
	s := n.String()
	if i := strings.IndexByte(s, '.'); i >= 0 {
		return len(s) - i - 1
	}
	return 0
}

// TestSimIsPlausible checks the shape of an hour of the default market:
// per-symbol rates, bursts and lulls, volatility per instrument, spreads
// that fit the price, and each instrument's decimals.
func TestSimIsPlausible(t *testing.T) {
	t.Parallel()
	ticks := simulate(t, 42, time.Hour)
	per := map[string][]feeds.Tick{}
	for _, tk := range ticks {
		per[tk.Topic] = append(per[tk.Topic], tk)
	}
	for _, sym := range DefaultSymbols {
		p := Profiles[sym]
		ts := per[sym]
		// Rate: the mean over an hour is near the profile's (bursts and
		// lulls average out to about 1.2×).
		rate := float64(len(ts)) / 3600
		if rate < 0.6*p.Rate || rate > 2.5*p.Rate {
			t.Errorf("%s: %.1f ticks/s, profile %v", sym, rate, p.Rate)
		}
		// Bursts and lulls: ticks per 10 s vary far more than Poisson.
		counts := make([]float64, 360)
		for _, tk := range ts {
			counts[(tk.TS-1_700_000_000_000)/10_000]++
		}
		mean, vr := meanVar(counts)
		if vr/mean < 3 {
			t.Errorf("%s: ticks per 10 s have variance/mean %.1f, want bursty (> 3)", sym, vr/mean)
		}
		// Volatility: 1-minute log returns near σ·√(1 min), within 3×.
		var rets []float64
		var prev float64
		var minute int64 = -1
		for _, tk := range ts {
			mid := (num(t, tk, "bid") + num(t, tk, "ask")) / 2
			if m := tk.TS / 60_000; m != minute {
				if prev > 0 {
					rets = append(rets, math.Log(mid/prev))
				}
				prev, minute = mid, m
			}
		}
		_, v := meanVar(rets)
		want := p.Volatility * math.Sqrt(1.0/(365*24*60))
		if got := math.Sqrt(v); got < want/3 || got > want*3 {
			t.Errorf("%s: 1-minute σ %.6f, want about %.6f", sym, got, want)
		}
		for _, tk := range ts {
			price, bid, ask := num(t, tk, "price"), num(t, tk, "bid"), num(t, tk, "ask")
			unit := math.Pow(10, -float64(p.PriceDec))
			if !(bid > 0 && ask > bid && ask-bid < unit*1.5+price*p.SpreadBps*3/1e4 && (price == bid || price == ask)) {
				t.Fatalf("%s: bad quote %s", sym, tk.AppendJSON(nil))
			}
			for _, f := range []string{"price", "bid", "ask"} {
				if n, _ := tk.GetNum(f); decimals(n) != p.PriceDec {
					t.Fatalf("%s: %s %s has %d decimals, want %d", sym, f, n, decimals(n), p.PriceDec)
				}
			}
			if n, _ := tk.GetNum("size"); decimals(n) != p.SizeDec || n.Sign() <= 0 {
				t.Fatalf("%s: size %s, want %d decimals and > 0", sym, n, p.SizeDec)
			}
		}
	}
	// A stock does not move 3% in 6 seconds.
	aapl := per["AAPL"]
	for i, j := 0, 0; i < len(aapl); i++ {
		for j < len(aapl) && aapl[j].TS < aapl[i].TS+6000 {
			j++
		}
		if r := num(t, aapl[j-1], "price") / num(t, aapl[i], "price"); r > 1.01 || r < 0.99 {
			t.Fatalf("AAPL moved %.2f%% in 6 s", (r-1)*100)
		}
	}
}

func num(t *testing.T, tk feeds.Tick, name string) float64 {
	v, ok := tk.Get(name)
	if !ok {
		t.Fatalf("tick %s lacks %s", tk.AppendJSON(nil), name)
	}
	return v
}

func meanVar(xs []float64) (mean, variance float64) {
	for _, x := range xs {
		mean += x
	}
	mean /= float64(len(xs))
	for _, x := range xs {
		variance += (x - mean) * (x - mean)
	}
	return mean, variance / float64(len(xs))
}

// TestRunPublishesHistoryFirst: at start the feed publishes the last
// hours with past ts, oldest first, then goes live; a restart of the same
// source does not publish the history again.
func TestRunPublishesHistoryFirst(t *testing.T) {
	src, err := NewSource("sim", Options{Symbols: []string{"BTC-USD", "AAPL"}, History: time.Hour, HistoryInterval: 10 * time.Second, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	run := func(until func(*collect) bool) []feeds.Tick {
		ctx, cancel := context.WithCancel(context.Background())
		out := &collect{}
		done := make(chan error, 1)
		go func() { done <- src.Run(ctx, out) }()
		deadline := time.Now().Add(10 * time.Second)
		for !until(out) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		out.mu.Lock()
		defer out.mu.Unlock()
		return out.ticks
	}
	begin := time.Now().UnixMilli()
	ticks := run(func(c *collect) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.ticks) > 0 && c.ticks[len(c.ticks)-1].TS >= begin
	})
	if len(ticks) < 500 || ticks[0].TS > begin-55*60_000 || ticks[0].TS < begin-3_600_000 {
		t.Fatalf("%d ticks from ts %d: want about 720 from an hour before %d", len(ticks), ticks[0].TS, begin)
	}
	for i := 1; i < len(ticks); i++ {
		if ticks[i].TS < ticks[i-1].TS {
			t.Fatalf("tick %d ts %d before %d", i, ticks[i].TS, ticks[i-1].TS)
		}
	}
	again := run(func(c *collect) bool { return c.len() > 0 })
	if again[0].TS < begin {
		t.Fatalf("restart published history again (ts %d)", again[0].TS)
	}
}
