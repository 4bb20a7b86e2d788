package stream

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tickstream/tickstream/stream/protocol"
)

// directTransport is a DirectTransport whose socket is a slice. Tries
// are refused, cut short or whole in turn, so that flushers and the
// writer goroutine share the writes; a carry is written first by the
// next WriteBatch, as a socket's would be.
type directTransport struct {
	memTransport
	mu       sync.Mutex
	busy     atomic.Bool // a write is in progress: two at once is a bug
	carry    []Message
	turn     int
	tries    [3]int // refused, cut short, whole
	overlaps atomic.Int32
}

var _ DirectTransport = (*directTransport)(nil)

func (d *directTransport) enter() {
	if !d.busy.CompareAndSwap(false, true) {
		d.overlaps.Add(1)
	}
}

func (d *directTransport) leave() { d.busy.Store(false) }

func (d *directTransport) TryWrite(msgs []Message) (started, incomplete bool) {
	d.enter()
	defer d.leave()
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.carry) > 0 {
		return false, false
	}
	d.turn++
	switch d.turn % 3 {
	case 0:
		d.tries[0]++
		return false, false
	case 1:
		if len(msgs) > 1 {
			d.tries[1]++
			half := len(msgs) / 2
			_ = d.memTransport.WriteBatch(msgs[:half])
			d.carry = slices.Clone(msgs[half:])
			return true, true
		}
	}
	d.tries[2]++
	_ = d.memTransport.WriteBatch(msgs)
	return true, false
}

func (d *directTransport) WriteBatch(msgs []Message) error {
	d.enter()
	defer d.leave()
	d.mu.Lock()
	carry := d.carry
	d.carry = nil
	d.mu.Unlock()
	if len(carry) > 0 {
		if err := d.memTransport.WriteBatch(carry); err != nil {
			return err
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return d.memTransport.WriteBatch(msgs)
}

func (d *directTransport) counts() [3]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.tries
}

// TestDirectWritesKeepOrderAndLoseNothing: flushers write to a
// DirectTransport themselves, the writer goroutine takes over what they
// could not write (refused or cut short), and the client gets every
// update of every topic once, in seq order, with never two writes at
// once.
func TestDirectWritesKeepOrderAndLoseNothing(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{MaxPendingBytes: 64 << 20})
	const topics, perTopic = 8, 500
	names := make([]string, topics)
	for i := range names {
		names[i] = fmt.Sprintf("D%d", i)
		mustPublish(t, b, priceTick(names[i], baseTS, 1, 1))
	}
	s := newTestSub(t, b)
	tr := &directTransport{}
	deliver(t, s, tr)
	mustHandle(t, s, `{"op":"subscribe","topics":["D*"],"throttle_ms":0}`)
	for _, name := range names {
		waitSeq(t, &tr.memTransport, name, 1)
	}
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perTopic {
				mustPublish(t, b, priceTick(name, baseTS, float64(i), 1))
				if i%50 == 0 {
					time.Sleep(time.Millisecond) // let passes end between bursts
				}
			}
		}()
	}
	wg.Wait()
	for _, name := range names {
		waitSeq(t, &tr.memTransport, name, perTopic+1)
	}
	if n := tr.overlaps.Load(); n > 0 {
		t.Fatalf("%d writes overlapped another", n)
	}
	covered := map[string]uint64{}
	for _, m := range tr.messages() {
		if m.Type != protocol.TypeUpdate && m.Type != protocol.TypeSnapshot {
			continue
		}
		if m.Type == protocol.TypeSnapshot {
			covered[m.Topic] = m.Seq
			continue
		}
		if m.Seq != covered[m.Topic]+1 {
			t.Fatalf("%s: update seq %d after %d: lost or reordered", m.Topic, m.Seq, covered[m.Topic])
		}
		covered[m.Topic] = m.Seq
	}
	c := tr.counts()
	t.Logf("tries refused %d, cut short %d, whole %d", c[0], c[1], c[2])
	if c[2] == 0 || c[0] == 0 {
		t.Fatalf("tries %v: want whole and refused ones, so that both writers wrote", c)
	}
	if s.Err() != nil {
		t.Fatalf("subscriber closed: %v", s.Err())
	}
}

// TestUpdateRunsCoverEveryTick: ticks that come faster than the instant
// flusher's passes go to each subscriber as one run per pass (one queue
// entry, the bytes joined once), which a client reads as separate updates;
// a subscriber that steps down merges a run's updates like any others.
// Either way every tick is covered once, in seq order, with exact agg.
func TestUpdateRunsCoverEveryTick(t *testing.T) {
	t.Parallel()
	for _, lagging := range []bool{false, true} {
		t.Run(fmt.Sprintf("lagging=%v", lagging), func(t *testing.T) {
			t.Parallel()
			maxPending := 64 << 20
			if lagging {
				maxPending = 8 << 10
			}
			b := newTestBus(t, BusConfig{MaxPendingBytes: maxPending, LagThrottle: 20 * time.Millisecond})
			mustPublish(t, b, priceTick("R", baseTS, 1, 1))
			s := newTestSub(t, b)
			tr := &memTransport{}
			unblock := tr.block()
			deliver(t, s, tr)
			mustHandle(t, s, `{"op":"subscribe","topics":["R"],"throttle_ms":0}`)
			const n = 3000
			var last uint64
			for i := range n {
				last = mustPublish(t, b, priceTick("R", baseTS+int64(i), float64(i%97), 1))
				if i%100 == 99 {
					time.Sleep(2 * time.Millisecond) // passes end between bursts
				}
			}
			settle(b)
			runs := 0
			s.mu.Lock()
			for _, q := range s.queue {
				if q.run != nil {
					runs++
				}
			}
			stepped := s.lagging
			s.mu.Unlock()
			if lagging != stepped {
				t.Fatalf("lagging = %v, want %v", stepped, lagging)
			}
			if !lagging && runs == 0 {
				t.Fatal("no update run queued: every tick had a queue entry of its own")
			}
			unblock()
			waitSeq(t, tr, "R", last)
			covered := uint64(1) // the snapshot's seq
			var ticks int64
			for _, w := range decodeAll(t, tr.messages()) {
				if w.Type != protocol.TypeUpdate {
					continue
				}
				if w.Seq-uint64(w.Agg.N) != covered {
					t.Fatalf("update seq %d n %d after seq %d: lost, duplicated or reordered", w.Seq, w.Agg.N, covered)
				}
				covered = w.Seq
				ticks += w.Agg.N
			}
			if ticks != n || covered != last {
				t.Fatalf("updates covered %d ticks up to seq %d, want %d up to %d", ticks, covered, n, last)
			}
			t.Logf("runs queued %d", runs)
		})
	}
}
