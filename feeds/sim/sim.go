package sim

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/tick"
)

func init() { feeds.Register("sim", New) }

// Options are the sim feed's settings.
type Options struct {
	// Symbols to simulate. Zero value means DefaultSymbols.
	Symbols []string `yaml:"symbols"`
	// Rate is the mean ticks per second of every symbol. Zero value means
	// each symbol's own rate (Profiles; 3 for an unknown symbol).
	Rate float64 `yaml:"rate"`
	// Volatility is the annualised σ of every symbol's random walk. Zero
	// value means each symbol's own (Profiles; 0.4 for an unknown one).
	Volatility float64 `yaml:"volatility"`
	// History is how much past the feed generates at start, published
	// with past ts (oldest first) before it goes live, so that charts are
	// full on first load. It must stay within the server's
	// max_tick_age_ms. Zero value means 3 h; negative means none.
	History time.Duration `yaml:"history"`
	// HistoryInterval is the mean time between two history ticks of a
	// symbol. Zero value means 2 s.
	HistoryInterval time.Duration `yaml:"history_interval"`
	// Seed seeds the random walk. Zero value means a random seed.
	Seed uint64 `yaml:"seed"`
}

// Profile is how one simulated instrument behaves.
type Profile struct {
	Price      float64 // starting mid price
	Volatility float64 // annualised σ
	Rate       float64 // mean ticks per second
	PriceDec   int     // decimals of prices (the tick size is 10^-PriceDec)
	SizeDec    int     // decimals of sizes
	Size       float64 // median trade size
	SpreadBps  float64 // typical bid/ask spread, in basis points of the price
}

// DefaultSymbols are simulated when no symbols are configured.
var DefaultSymbols = []string{"BTC-USD", "ETH-USD", "SOL-USD", "DOGE-USD", "AAPL", "MSFT", "NVDA", "EUR-USD"}

// Profiles are the built-in instruments: volatility, activity, decimals
// and spreads of their markets. Other symbols get a generic equity.
var Profiles = map[string]Profile{
	"BTC-USD":  {Price: 64000, Volatility: 0.55, Rate: 12, PriceDec: 2, SizeDec: 5, Size: 0.02, SpreadBps: 0.3},
	"ETH-USD":  {Price: 3100, Volatility: 0.7, Rate: 8, PriceDec: 2, SizeDec: 4, Size: 0.3, SpreadBps: 0.5},
	"SOL-USD":  {Price: 145, Volatility: 0.9, Rate: 5, PriceDec: 2, SizeDec: 3, Size: 4, SpreadBps: 1},
	"DOGE-USD": {Price: 0.16, Volatility: 1.0, Rate: 4, PriceDec: 5, SizeDec: 0, Size: 2000, SpreadBps: 3},
	"AAPL":     {Price: 226, Volatility: 0.25, Rate: 6, PriceDec: 2, SizeDec: 0, Size: 100, SpreadBps: 0.5},
	"MSFT":     {Price: 418, Volatility: 0.25, Rate: 4, PriceDec: 2, SizeDec: 0, Size: 100, SpreadBps: 0.5},
	"NVDA":     {Price: 121, Volatility: 0.5, Rate: 10, PriceDec: 2, SizeDec: 0, Size: 200, SpreadBps: 1},
	"EUR-USD":  {Price: 1.09, Volatility: 0.07, Rate: 3, PriceDec: 5, SizeDec: 0, Size: 100000, SpreadBps: 0.5},
}

// Source simulates a market.
type Source struct {
	name     string
	opts     Options
	profiles []Profile
	started  bool // history is published once, not again on a restart
}

var _ feeds.Source = (*Source)(nil)

// New builds a sim source from its config.
var New = feeds.FactoryFor(NewSource)

// NewSource builds a sim source from options.
func NewSource(name string, o Options) (*Source, error) {
	if len(o.Symbols) == 0 {
		o.Symbols = DefaultSymbols
	}
	if o.History == 0 {
		o.History = 3 * time.Hour
	}
	if o.HistoryInterval == 0 {
		o.HistoryInterval = 2 * time.Second
	}
	switch {
	case o.Rate < 0 || o.Rate > 100_000:
		return nil, feeds.BadOption(name, "rate", "%v: want 0 < rate <= 100000", o.Rate)
	case o.Volatility < 0 || o.Volatility > 100:
		return nil, feeds.BadOption(name, "volatility", "%v: want 0 < volatility <= 100", o.Volatility)
	case o.History > 30*24*time.Hour:
		return nil, feeds.BadOption(name, "history", "%v: at most 720h", o.History)
	case o.HistoryInterval < time.Millisecond:
		return nil, feeds.BadOption(name, "history_interval", "%v: at least 1ms", o.HistoryInterval)
	}
	s := &Source{name: name, opts: o}
	for _, sym := range o.Symbols {
		if !feeds.ValidTopic(sym) {
			return nil, feeds.BadOption(name, "symbols", "%q is not a valid topic", sym)
		}
		p, ok := Profiles[sym]
		if !ok {
			p = Profile{Volatility: 0.4, Rate: 3, PriceDec: 2, SizeDec: 0, Size: 100, SpreadBps: 2}
		}
		if o.Rate > 0 {
			p.Rate = o.Rate
		}
		if o.Volatility > 0 {
			p.Volatility = o.Volatility
		}
		s.profiles = append(s.profiles, p)
	}
	return s, nil
}

// Name is the feed's name.
func (s *Source) Name() string { return s.name }

// regime is a symbol's activity: normal, a burst (busy and volatile) or
// a lull (quiet).
type regime int

const (
	normal regime = iota
	burst
	lull
)

// Activity and volatility multipliers of the regimes, and their mean
// durations in seconds.
var (
	regimeRate = [...]float64{normal: 1, burst: 5, lull: 0.2}
	regimeVol  = [...]float64{normal: 1, burst: 2, lull: 0.6}
	regimeMean = [...]float64{normal: 40, burst: 6, lull: 20}
)

// market is one symbol's state.
type market struct {
	symbol string
	p      Profile
	mid    float64
	volume float64 // traded since start
	reg    regime
	regEnd int64 // Unix ms when the regime ends
	last   int64 // Unix ms of the last tick
	next   int64 // Unix ms of the next tick
}

// Markets are the symbols' states, driven by one random source; Run and
// the tests step them on a simulated clock.
type markets struct {
	rng *rand.Rand
	ms  []market
}

func newMarkets(names []string, profiles []Profile, seed uint64, start int64) *markets {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	m := &markets{rng: rng}
	for i, sym := range names {
		p := profiles[i]
		mid := p.Price
		if mid == 0 {
			mid = 10 + rng.Float64()*190
		}
		mk := market{symbol: sym, p: p, mid: mid, last: start, regEnd: start + m.regimeLen(normal)}
		mk.next = start + m.gap(&mk, start)
		m.ms = append(m.ms, mk)
	}
	return m
}

func (m *markets) regimeLen(r regime) int64 {
	return int64(m.rng.ExpFloat64() * regimeMean[r] * 1000)
}

// gap draws the time to a market's next tick (Poisson at its regime's
// rate), in ms, at least 1.
func (m *markets) gap(mk *market, now int64) int64 {
	rate := mk.p.Rate * regimeRate[mk.reg]
	return max(1, int64(m.rng.ExpFloat64()/rate*1000))
}

// nextIndex returns the market whose tick is due first.
func (m *markets) nextIndex() int {
	k := 0
	for i := range m.ms {
		if m.ms[i].next < m.ms[k].next {
			k = i
		}
	}
	return k
}

// step makes market k's tick at its due time into t and schedules its
// next one. Every tick is a trade at the bid or the ask, with the quote
// around the mid price.
func (m *markets) step(k int, t *feeds.Tick) {
	mk := &m.ms[k]
	now := mk.next
	for now >= mk.regEnd { // regimes change: mostly normal, sometimes a burst or a lull
		switch {
		case mk.reg != normal:
			mk.reg = normal
		case m.rng.IntN(3) == 0:
			mk.reg = lull
		default:
			mk.reg = burst
		}
		mk.regEnd += max(1000, m.regimeLen(mk.reg))
	}
	// geometric Brownian motion over the real time since the last tick
	dt := float64(now-mk.last) / 1000 / (365 * 24 * 3600)
	sigma := mk.p.Volatility * regimeVol[mk.reg] * math.Sqrt(dt)
	mk.mid *= math.Exp(-sigma*sigma/2 + sigma*m.rng.NormFloat64())
	mk.last = now

	unit := math.Pow(10, -float64(mk.p.PriceDec))
	spread := mk.mid * mk.p.SpreadBps / 1e4 * (0.6 + 0.8*m.rng.Float64())
	ticks := max(1, math.Round(spread/unit))
	bid := math.Floor((mk.mid-ticks*unit/2)/unit) * unit
	bid = max(bid, unit)
	ask := bid + ticks*unit
	price := bid
	if m.rng.IntN(2) == 0 {
		price = ask
	}
	sizeUnit := math.Pow(10, -float64(mk.p.SizeDec))
	size := max(sizeUnit, math.Round(mk.p.Size*math.Exp(m.rng.NormFloat64())/sizeUnit)*sizeUnit)
	mk.volume += size

	t.Topic, t.TS, t.Fields = mk.symbol, now, t.Fields[:0]
	t.SetNum(feeds.FieldPrice, dec(price, mk.p.PriceDec))
	t.SetNum(feeds.FieldSize, dec(size, mk.p.SizeDec))
	t.SetNum(feeds.FieldBid, dec(bid, mk.p.PriceDec))
	t.SetNum(feeds.FieldAsk, dec(ask, mk.p.PriceDec))
	depth := func() tick.Num {
		return dec(max(sizeUnit, math.Round(mk.p.Size*5*m.rng.ExpFloat64()/sizeUnit)*sizeUnit), mk.p.SizeDec)
	}
	t.SetNum(feeds.FieldBidSize, depth())
	t.SetNum(feeds.FieldAskSize, depth())
	t.SetNum(feeds.FieldVolume, dec(mk.volume, mk.p.SizeDec))
	mk.next = now + m.gap(mk, now)
}

// dec is x with exactly d decimals, as an exchange quotes it.
func dec(x float64, d int) tick.Num {
	var buf [32]byte
	n, err := tick.ParseNum(string(strconv.AppendFloat(buf[:0], x, 'f', d, 64)))
	if err != nil {
		n, _ = tick.NumOf(x)
	}
	return n
}

// Run publishes the history (once per Source: not again when the
// supervisor restarts the feed), then ticks for every symbol as they fall
// due, until ctx ends or the bus is closed (nil). It costs one goroutine
// and one timer whatever the number of symbols.
func (s *Source) Run(ctx context.Context, out feeds.Sink) error {
	seed := s.opts.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	now := time.Now()
	start := now.UnixMilli()
	history := s.opts.History > 0 && !s.started
	s.started = true
	if history {
		start -= s.opts.History.Milliseconds()
	}
	m := newMarkets(s.opts.Symbols, s.profiles, seed, start)
	var tk feeds.Tick
	if history {
		// The past at a gentler pace (HistoryInterval per symbol on
		// average), with the same walk, so the chart joins the live ticks.
		live := make([]Profile, len(m.ms))
		for i := range m.ms {
			live[i] = m.ms[i].p
			m.ms[i].p.Rate = 1 / s.opts.HistoryInterval.Seconds()
			m.ms[i].next = start + m.gap(&m.ms[i], start)
		}
		end := now.UnixMilli()
		for {
			if err := ctx.Err(); err != nil {
				return nil
			}
			k := m.nextIndex()
			if m.ms[k].next >= end {
				break
			}
			m.step(k, &tk)
			if err := feeds.Deliver(out, tk); err != nil {
				return feeds.Stopped(fmt.Errorf("sim: publish %s: %w", tk.Topic, err))
			}
		}
		for i := range m.ms {
			m.ms[i].p = live[i]
			m.ms[i].next = end + m.gap(&m.ms[i], end)
		}
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for {
		k := m.nextIndex()
		if d := time.Until(time.UnixMilli(m.ms[k].next)); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				return nil
			case <-timer.C:
			}
		} else if ctx.Err() != nil {
			return nil
		}
		m.step(k, &tk)
		// A refused tick is skipped (and counted by the supervisor's
		// sink); a closed bus ends the feed.
		if err := feeds.Deliver(out, tk); err != nil {
			return feeds.Stopped(fmt.Errorf("sim: publish %s: %w", tk.Topic, err))
		}
	}
}
