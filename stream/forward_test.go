package stream

import (
	"errors"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds/tick"
)

// fakeCluster sequences forwarded ticks like a cluster would, and folds
// them back through Apply.
type fakeCluster struct {
	mu   sync.Mutex
	bus  *Bus
	seqs map[string]uint64
}

func (c *fakeCluster) Forward(tk *tick.Tick, accepted time.Time) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seqs[tk.Topic] += 10 // not the bus's own numbering
	if _, err := c.bus.Apply(*tk, c.seqs[tk.Topic], accepted); err != nil {
		return 0, err
	}
	return c.seqs[tk.Topic], nil
}

// With a Forwarder, Publish folds nothing itself: the cluster's seq is the
// tick's. Apply ignores what it has folded already, and a gap empties the
// history ring so that history never claims ticks it lacks.
func TestForwardAndApply(t *testing.T) {
	fc := &fakeCluster{seqs: map[string]uint64{}}
	b := newTestBus(t, BusConfig{Forward: fc})
	fc.bus = b
	if seq := mustPublish(t, b, priceTick("F", baseTS, 1, 1)); seq != 10 {
		t.Fatalf("seq %d, want the cluster's 10", seq)
	}
	if h, _ := b.History("F", 0, 10); h.Last != 10 || len(h.Ticks) != 1 || h.Ticks[0].Seq != 10 {
		t.Fatalf("history %+v: want the one tick, seq 10", h)
	}
	if ok, err := b.Apply(priceTick("F", baseTS, 2, 1), 10, time.Now()); ok || err != nil {
		t.Fatalf("Apply of a folded seq: %v %v, want ignored", ok, err)
	}
	for seq := uint64(11); seq <= 12; seq++ {
		if ok, err := b.Apply(priceTick("F", baseTS, 3, 1), seq, time.Now()); !ok || err != nil {
			t.Fatalf("Apply seq %d: %v %v", seq, ok, err)
		}
	}
	if h, _ := b.History("F", 0, 10); h.Oldest != 10 || len(h.Ticks) != 3 {
		t.Fatalf("history %+v: want seqs 10..12", h)
	}
	if ok, err := b.Apply(priceTick("F", baseTS, 4, 1), 20, time.Now()); !ok || err != nil {
		t.Fatalf("Apply after a gap: %v %v", ok, err)
	}
	if h, _ := b.History("F", 0, 10); h.Oldest != 20 || h.Last != 20 || len(h.Ticks) != 1 {
		t.Fatalf("history after a gap %+v: want only seq 20", h)
	}
	if _, err := b.Apply(tick.Tick{Topic: "bad topic"}, 1, time.Now()); err == nil {
		t.Fatal("Apply of an invalid tick: no error")
	}
	if _, err := b.Publish("test", priceTick("F", baseTS, math.NaN(), 1)); !errors.As(err, new(*tick.Error)) {
		t.Fatalf("Publish of an invalid tick: %v, want a *tick.Error before the cluster", err)
	}
}
