package stream

import (
	"runtime"
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
	// jobs hands parts of a long wake list to the flusher's writers
	// (started at the first such pass, ended when the flusher ends).
	jobs chan writeJob

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

// instantPassEvery is the shortest time between the starts of two passes
// of an instant flusher. At low rates every tick gets a pass of its own
// at once; when ticks come faster than that, the ticks of the meantime
// share the next pass, so each subscriber gets them in one write instead
// of one write per tick (at 8,000 ticks/s on one topic, eight times fewer
// writes, the kernel's cost per write being most of a fan-out's CPU), for
// at most this much added latency.
const instantPassEvery = time.Millisecond

func (f *flusher) runInstant() {
	defer f.bus.wg.Done()
	defer f.stopWriters()
	gather := time.NewTimer(instantPassEvery)
	gather.Stop()
	defer gather.Stop()
	var last time.Time
	for {
		select {
		case <-f.quit:
			return
		case <-f.signal:
		}
		if since := time.Since(last); since < instantPassEvery {
			gather.Reset(instantPassEvery - since)
			select {
			case <-f.quit:
				return
			case <-gather.C:
			}
		}
		last = time.Now()
		f.flush()
	}
}

func (f *flusher) run() {
	defer f.bus.wg.Done()
	defer f.stopWriters()
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
	f.writeAll()
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

// writeChunk is how many subscribers one goroutine writes to in a pass. A
// pass that queued to more spreads them over up to GOMAXPROCS goroutines
// (the flusher and its writers): a socket write is a few microseconds of
// kernel time, and one goroutine writing to thousands of sockets would
// leave the other cores idle and the last sockets late.
const writeChunk = 32

// writeJob is a part of a pass's wake list for a writer.
type writeJob struct {
	subs []*Subscriber
	wg   *sync.WaitGroup
}

// writeAll writes to (or signals) the subscribers of the pass's wake
// list, and returns when all are done.
func (f *flusher) writeAll() {
	list := f.wake
	parts := min(runtime.GOMAXPROCS(0), (len(list)+writeChunk-1)/writeChunk)
	if parts <= 1 {
		writeTo(list, &f.batch)
		return
	}
	if f.jobs == nil {
		n := runtime.GOMAXPROCS(0)
		f.jobs = make(chan writeJob, n)
		for range n - 1 {
			f.bus.wg.Add(1)
			go f.writer()
		}
	}
	per := (len(list) + parts - 1) / parts
	var wg sync.WaitGroup
	for lo := per; lo < len(list); lo += per {
		wg.Add(1)
		f.jobs <- writeJob{subs: list[lo:min(len(list), lo+per)], wg: &wg}
	}
	writeTo(list[:per], &f.batch)
	wg.Wait()
}

// writer writes the parts it is handed until the flusher ends.
func (f *flusher) writer() {
	defer f.bus.wg.Done()
	var batch []Message
	for j := range f.jobs {
		writeTo(j.subs, &batch)
		j.wg.Done()
	}
}

// stopWriters ends the writers; called by the flusher goroutine, the only
// one that hands them parts, as it ends.
func (f *flusher) stopWriters() {
	if f.jobs != nil {
		close(f.jobs)
	}
}

// writeTo writes each subscriber's queue itself where it can and wakes
// the writer goroutine of the others.
func writeTo(subs []*Subscriber, batch *[]Message) {
	for _, s := range subs {
		if !s.writeDirect(batch) {
			s.signal()
		}
	}
}
