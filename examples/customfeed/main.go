// Command customfeed is a tickstream server with a feed type of its own:
// "wave", which publishes sine waves. It shows everything a Go feed needs:
// a Source with Name and Run, options decoded from the config file with
// their errors naming the feed and the option, and registration by name.
//
//	go run ./examples/customfeed --config examples/customfeed/config.yaml
//
// It takes the same flags, TICKSTREAM_* variables and config file as the
// tickstream command.
package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tickstream/tickstream/feeds"
	_ "github.com/tickstream/tickstream/feeds/all" // sim, replay, websocket, nats
	"github.com/tickstream/tickstream/stream/app"
)

// Register the type from init, so that it exists before the config file is
// read. init does no I/O and starts nothing.
func init() { feeds.Register("wave", newWave) }

// waveOptions are the wave feed's options. Each zero value has a default.
type waveOptions struct {
	// Topics to publish, one wave each, phase-shifted. Zero value means
	// [wave].
	Topics []string `yaml:"topics"`
	// Period of one full wave. Zero value means 1m.
	Period time.Duration `yaml:"period"`
	// Rate is ticks per second per topic. Zero value means 4.
	Rate float64 `yaml:"rate"`
	// Mid and Amplitude shape the wave. Zero values mean 100 and 10.
	Mid       float64 `yaml:"mid"`
	Amplitude float64 `yaml:"amplitude"`
}

// wave is the Source. It holds only its settings: all running state lives
// in Run, so the supervisor can restart it cleanly.
type wave struct {
	name string
	opts waveOptions
}

// The interface guard: a compile error here beats a runtime surprise.
var _ feeds.Source = (*wave)(nil)

// newWave is the Factory: it decodes and checks the options, and does no
// I/O. Unknown option keys are errors (DecodeOptions refuses them).
func newWave(cfg feeds.Config) (feeds.Source, error) {
	var o waveOptions
	if err := cfg.DecodeOptions(&o); err != nil {
		return nil, err
	}
	if len(o.Topics) == 0 {
		o.Topics = []string{"wave"}
	}
	if o.Period == 0 {
		o.Period = time.Minute
	}
	if o.Rate == 0 {
		o.Rate = 4
	}
	if o.Mid == 0 {
		o.Mid = 100
	}
	if o.Amplitude == 0 {
		o.Amplitude = 10
	}
	switch {
	case o.Period < time.Second:
		return nil, fmt.Errorf("feed %q: options.period %v: want at least 1s", cfg.Name, o.Period)
	case o.Rate <= 0 || o.Rate > 1000:
		return nil, fmt.Errorf("feed %q: options.rate %v: want 0 < rate <= 1000", cfg.Name, o.Rate)
	}
	for _, t := range o.Topics {
		if !feeds.ValidTopic(t) {
			return nil, fmt.Errorf("feed %q: options.topics: %q is not a valid topic", cfg.Name, t)
		}
	}
	return &wave{name: cfg.Name, opts: o}, nil
}

// Name is the feed's name from the config.
func (w *wave) Name() string { return w.name }

// Run publishes until ctx ends, then returns nil. Any error it returns
// makes the supervisor restart it with backoff.
func (w *wave) Run(ctx context.Context, out feeds.Sink) error {
	tk := time.NewTicker(time.Duration(float64(time.Second) / w.opts.Rate))
	defer tk.Stop()
	var tick feeds.Tick // reused: Publish copies it
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-tk.C:
			phase := 2 * math.Pi * float64(now.UnixNano()%int64(w.opts.Period)) / float64(w.opts.Period)
			for i, topic := range w.opts.Topics {
				shift := 2 * math.Pi * float64(i) / float64(len(w.opts.Topics))
				v := w.opts.Mid + w.opts.Amplitude*math.Sin(phase+shift)
				tick.Topic, tick.TS, tick.Fields = topic, now.UnixMilli(), tick.Fields[:0]
				tick.Set(feeds.FieldPrice, math.Round(v*100)/100)
				tick.Set("phase", math.Round((phase+shift)*1000)/1000) // a custom field
				if err := out.Publish(tick); err != nil {
					return fmt.Errorf("wave: publish %s: %w", topic, err)
				}
			}
		}
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := app.Run(ctx, os.Args[1:])
	stop()
	if err != nil && !errors.Is(err, app.ErrHelp) {
		fmt.Fprintln(os.Stderr, "customfeed:", err)
		os.Exit(1)
	}
}
