package sim

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/tickstream/tickstream/feeds"
)

func init() { feeds.Register("sim", New) }

// Options are the sim feed's settings.
type Options struct {
	// Symbols to simulate. Zero value means DefaultSymbols.
	Symbols []string `yaml:"symbols"`
	// Rate is ticks per second per symbol. Zero value means 25.
	Rate float64 `yaml:"rate"`
	// Volatility is the annualised σ of the random walk. Zero value means
	// 0.8, lively enough to watch.
	Volatility float64 `yaml:"volatility"`
	// Seed seeds the random walk. Zero value means a random seed.
	Seed uint64 `yaml:"seed"`
}

// DefaultSymbols and their starting prices.
var DefaultSymbols = []string{"BTC-USD", "ETH-USD", "SOL-USD", "DOGE-USD", "AAPL", "MSFT", "NVDA", "EUR-USD"}

var startPrice = map[string]float64{
	"BTC-USD": 64000, "ETH-USD": 3100, "SOL-USD": 145, "DOGE-USD": 0.16,
	"AAPL": 226, "MSFT": 418, "NVDA": 121, "EUR-USD": 1.09,
}

// Source simulates a market.
type Source struct {
	name string
	opts Options
}

var _ feeds.Source = (*Source)(nil)

// New builds a sim source from its config.
var New = feeds.FactoryFor(NewSource)

// NewSource builds a sim source from options.
func NewSource(name string, o Options) (*Source, error) {
	if len(o.Symbols) == 0 {
		o.Symbols = DefaultSymbols
	}
	if o.Rate == 0 {
		o.Rate = 25
	}
	if o.Volatility == 0 {
		o.Volatility = 0.8
	}
	switch {
	case o.Rate < 0 || o.Rate > 100_000:
		return nil, feeds.BadOption(name, "rate", "%v: want 0 < rate <= 100000", o.Rate)
	case o.Volatility < 0 || o.Volatility > 100:
		return nil, feeds.BadOption(name, "volatility", "%v: want 0 < volatility <= 100", o.Volatility)
	}
	for _, s := range o.Symbols {
		if !feeds.ValidTopic(s) {
			return nil, feeds.BadOption(name, "symbols", "%q is not a valid topic", s)
		}
	}
	return &Source{name: name, opts: o}, nil
}

// Name is the feed's name.
func (s *Source) Name() string { return s.name }

type walk struct {
	symbol string
	price  float64
	volume float64
}

// Run publishes ticks for every symbol at the configured rate until ctx
// ends or the bus is closed (nil). Ticks of all symbols come from one timer, in rounds, so that the
// feed costs one goroutine whatever the number of symbols.
func (s *Source) Run(ctx context.Context, out feeds.Sink) error {
	seed := s.opts.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	walks := make([]walk, len(s.opts.Symbols))
	for i, sym := range s.opts.Symbols {
		p, ok := startPrice[sym]
		if !ok {
			p = 10 + rng.Float64()*190
		}
		walks[i] = walk{symbol: sym, price: p}
	}
	period := time.Duration(float64(time.Second) / s.opts.Rate)
	// σ per tick: annual σ scaled to one tick interval of a 24/7 market.
	dt := period.Seconds() / (365 * 24 * 3600)
	sigma := s.opts.Volatility * math.Sqrt(dt) * 40 // ×40 so that minutes look like days
	tk := time.NewTicker(period)
	defer tk.Stop()
	var tick feeds.Tick
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-tk.C:
			for i := range walks {
				w := &walks[i]
				w.price *= math.Exp(-sigma*sigma/2 + sigma*rng.NormFloat64())
				size := math.Round(rng.ExpFloat64()*100) / 100
				if size == 0 {
					size = 0.01
				}
				w.volume += size
				spread := w.price * 0.0002 * (1 + rng.Float64())
				tick.Topic, tick.TS, tick.Fields = w.symbol, now.UnixMilli(), tick.Fields[:0]
				tick.Set(feeds.FieldPrice, round(w.price))
				tick.Set(feeds.FieldSize, size)
				tick.Set(feeds.FieldBid, round(w.price-spread/2))
				tick.Set(feeds.FieldAsk, round(w.price+spread/2))
				tick.Set(feeds.FieldBidSize, math.Round(rng.ExpFloat64()*500)/100)
				tick.Set(feeds.FieldAskSize, math.Round(rng.ExpFloat64()*500)/100)
				tick.Set(feeds.FieldVolume, math.Round(w.volume*100)/100)
				// A refused tick is skipped (and counted by the
				// supervisor's sink); a closed bus ends the feed.
				if err := feeds.Deliver(out, tick); err != nil {
					return feeds.Stopped(fmt.Errorf("sim: publish %s: %w", w.symbol, err))
				}
			}
		}
	}
}

// round keeps prices to 6 significant digits, like a real quote.
func round(p float64) float64 {
	if p <= 0 {
		return p
	}
	scale := math.Pow(10, 5-math.Floor(math.Log10(p)))
	return math.Round(p*scale) / scale
}
