package stream

import (
	"sync"
	"time"
)

// flusher closes the dirty windows of every group with one interval. There
// is one per distinct interval in use (intervals are quantized to 10 ms),
// so the number of goroutines does not grow with topics or subscribers.
type flusher struct {
	bus      *Bus
	interval time.Duration
	quit     chan struct{}

	mu    sync.Mutex // last in the lock order: taken with topic.mu held
	dirty []*group
	spare []*group // the flusher goroutine's own
}

// flusherFor returns the running flusher for interval, starting it.
// Called with a topic.mu held, so it must not take Bus.mu.
func (b *Bus) flusherFor(interval time.Duration) *flusher {
	b.flMu.Lock()
	defer b.flMu.Unlock()
	if f := b.flushers[interval]; f != nil {
		return f
	}
	f := &flusher{bus: b, interval: interval, quit: make(chan struct{})}
	if b.flClosed {
		return f // never runs: nothing is delivered after Close
	}
	b.flushers[interval] = f
	b.wg.Add(1)
	go f.run()
	return f
}

// add queues g for the next flush. Called with g.topic.mu held.
func (f *flusher) add(g *group) {
	f.mu.Lock()
	f.dirty = append(f.dirty, g)
	f.mu.Unlock()
}

func (f *flusher) run() {
	defer f.bus.wg.Done()
	// Align windows to multiples of the interval on the wall clock, so that
	// with live feeds (source time ≈ accept time) a window rarely straddles
	// a candle boundary and charts folding agg into bars stay exact.
	align := time.NewTimer(time.Until(time.Now().Truncate(f.interval).Add(f.interval)))
	select {
	case <-f.quit:
		align.Stop()
		return
	case <-align.C:
	}
	f.flush()
	tk := time.NewTicker(f.interval)
	defer tk.Stop()
	for {
		select {
		case <-f.quit:
			return
		case <-tk.C:
			f.flush()
		}
	}
}

func (f *flusher) flush() {
	f.mu.Lock()
	list := f.dirty
	f.dirty = f.spare[:0]
	f.mu.Unlock()
	for _, g := range list {
		t := g.topic
		t.mu.Lock()
		if !g.removed {
			g.flush()
		} else {
			g.dirty = false
		}
		t.mu.Unlock()
	}
	clear(list)
	f.spare = list
}
