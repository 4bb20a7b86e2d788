package sim

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tickstream/tickstream/feeds"
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
