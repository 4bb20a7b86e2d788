package stream

import (
	"sync"
	"sync/atomic"
	"time"
)

// flusher closes the dirty windows of every group with one interval. There
// is one per distinct interval in use (intervals are quantized to 10 ms),
// so the number of goroutines does not grow with topics or subscribers; a
// flusher with nothing to flush for a while ends, so a client cycling
// through throttles leaves none behind. Interval 0 is the instant flusher:
// it fans out throttle-0 ticks as soon as it is woken, so that publishing
// never does a subscriber's work.
type flusher struct {
	bus      *Bus
	interval time.Duration
	quit     chan struct{}
	signal   chan struct{} // interval 0 only; cap 1

	mu      sync.Mutex // last in the lock order: taken with topic.mu held
	dirty   []*group
	spare   []*group // the flusher goroutine's own
	stopped bool     // ended while idle: schedule must start another

	wake  []*Subscriber // the flusher goroutine's own: to signal after a pass
	batch []Message     // the flusher goroutine's own: a direct write's batch

	queued atomic.Int64 // groups added and not yet flushed (tests wait on it)
}

// schedule queues g, whose window just got its first tick, on the flusher
// of its interval. Called with g.topic.mu held.
func (b *Bus) schedule(g *group) {
	if g.interval == 0 {
		b.instantFlusher(g.topic.shard).add(g)
		return
	}
	for !b.flusherFor(g.interval).add(g) {
	}
}

// instantFlusher returns the running instant flusher of shard, starting
// it. Instant flushers never stop before Close.
func (b *Bus) instantFlusher(shard int) *flusher {
	if f := b.instant[shard].Load(); f != nil {
		return f
	}
	b.flMu.Lock()
	defer b.flMu.Unlock()
	if f := b.instant[shard].Load(); f != nil {
		return f
	}
	f := &flusher{bus: b, quit: make(chan struct{}), signal: make(chan struct{}, 1)}
	if b.flClosed {
		return f // never runs: nothing is delivered after Close
	}
	b.instant[shard].Store(f)
	b.wg.Add(1)
	go f.runInstant()
	return f
}

// flusherFor returns the running flusher for a non-zero interval,
// starting it. Called with a topic.mu held, so it must not take Bus.mu.
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

// add queues g for the next flush. It returns false if the flusher has
// ended; the caller asks for a new one. Called with g.topic.mu held.
func (f *flusher) add(g *group) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return false
	}
	f.dirty = append(f.dirty, g)
	f.queued.Add(1)
	if f.signal != nil {
		select {
		case f.signal <- struct{}{}:
		default:
		}
	}
	return true
}

func (f *flusher) runInstant() {
	defer f.bus.wg.Done()
	for {
		select {
		case <-f.quit:
			return
		case <-f.signal:
			f.flush()
		}
	}
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
	idleTicks := max(2, int(f.bus.cfg.FlusherIdle/f.interval))
	idle := 0
	for {
		select {
		case <-f.quit:
			return
		case <-tk.C:
			if f.flush() > 0 {
				idle = 0
			} else if idle++; idle >= idleTicks && f.stopIfIdle() {
				return
			}
		}
	}
}

// stopIfIdle ends the flusher unless a group was queued meanwhile.
func (f *flusher) stopIfIdle() bool {
	b := f.bus
	b.flMu.Lock()
	defer b.flMu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.dirty) > 0 {
		return false
	}
	f.stopped = true
	if b.flushers[f.interval] == f {
		delete(b.flushers, f.interval)
	}
	return true
}

// maxKeptWake is the longest wake list a flusher keeps between passes
// (512 KiB): a pass that wakes as many subscribers allocates nothing for
// the list the next time.
const maxKeptWake = 1 << 16

// flush flushes the queued groups and returns how many there were.
func (f *flusher) flush() int {
	f.mu.Lock()
	list := f.dirty
	f.dirty = f.spare[:0]
	f.mu.Unlock()
	for _, g := range list {
		t := g.topic
		t.mu.Lock()
		if !g.removed {
			g.flush(&f.wake)
		} else {
			g.dirty = false
		}
		t.mu.Unlock()
	}
	for _, s := range f.wake {
		if !s.writeDirect(&f.batch) {
			s.signal()
		}
	}
	clear(f.wake)
	if cap(f.wake) > maxKeptWake {
		f.wake = nil // a burst's list is not kept
	} else {
		f.wake = f.wake[:0]
	}
	n := len(list)
	f.queued.Add(-int64(n))
	clear(list)
	f.spare = list
	return n
}
