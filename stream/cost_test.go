package stream

import (
	"fmt"
	"strconv"
	"testing"
	"time"
)

// Clients joining a topic in the middle of a window cost the publisher
// nothing: a publish allocates the same with 2,000 joiners waiting for the
// flush as with none (their first update is built once, at the flush).
func TestPublishCostIndependentOfJoiners(t *testing.T) {
	b := newTestBus(t, BusConfig{MaxThrottle: never, Epoch: "e1", HistoryDepth: 10_000})
	mustPublish(t, b, priceTick("J", baseTS, 1, 1))
	first := newTestSub(t, b)
	mustHandle(t, first, `{"op":"subscribe","topics":["J"],"throttle_ms":`+strconv.FormatInt(neverMS, 10)+`}`)
	ts := baseTS
	publish := func() {
		ts++
		if _, err := b.Publish("test", priceTick("J", ts, 2, 1)); err != nil {
			t.Fatal(err)
		}
	}
	publish() // the window now has ticks: later subscribers are joiners
	before := testing.AllocsPerRun(200, publish)
	subs := make([]*Subscriber, 2000)
	for i := range subs {
		subs[i] = newTestSub(t, b)
		mustHandle(t, subs[i], `{"op":"subscribe","topics":["J"],"throttle_ms":`+strconv.FormatInt(neverMS, 10)+`}`)
		publish()
	}
	after := testing.AllocsPerRun(200, publish)
	if after > before {
		t.Fatalf("publish allocates %.1f times with 2,000 joiners, %.1f with none", after, before)
	}
	// And every joiner still gets exactly the ticks after its join.
	flushNow(t, b, never)
	last := b.lookup("J").info(time.Now()).Seq
	for i, s := range subs {
		ws := decodeAll(t, drainAll(s))
		up := ofType(ws, "update")
		if len(up) != 1 || up[0].Seq != last {
			t.Fatalf("joiner %d: updates %+v, want one ending at seq %d", i, up, last)
		}
		snap := ofType(ws, "snapshot")
		if len(snap) != 1 || up[0].Seq-uint64(up[0].Agg.N) != snap[0].Seq {
			t.Fatalf("joiner %d: update n %d does not follow its snapshot %+v", i, up[0].Agg.N, snap)
		}
	}
}

// Throttle-0 fan-out runs on the bus's instant flusher: a publish returns
// even while a subscriber's queue is locked, and the update follows.
func TestThrottleZeroFanoutOffThePublisher(t *testing.T) {
	b := newTestBus(t, BusConfig{Epoch: "e1"})
	mustPublish(t, b, priceTick("Z", baseTS, 1, 1))
	s := newTestSub(t, b)
	mustHandle(t, s, `{"op":"subscribe","topics":["Z"],"throttle_ms":0}`)
	drainAll(s)
	s.mu.Lock()
	done := make(chan error, 1)
	go func() {
		_, err := b.Publish("test", priceTick("Z", baseTS+1, 2, 1))
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		s.mu.Unlock()
		t.Fatal("Publish waited for a subscriber's queue")
	}
	s.mu.Unlock()
	ws := decodeAll(t, drainAll(s))
	if len(ws) != 1 || ws[0].Type != "update" || ws[0].Seq != 2 {
		t.Fatalf("got %+v, want the update of seq 2", ws)
	}
}

// A flusher with nothing to flush ends: a client cycling through throttles
// leaves no goroutine behind, and a later window on the same interval
// starts a new one.
func TestIdleFlushersEnd(t *testing.T) {
	b := newTestBus(t, BusConfig{Epoch: "e1", FlusherIdle: time.Millisecond})
	mustPublish(t, b, priceTick("C", baseTS, 1, 1))
	s := newTestSub(t, b)
	for ms := 10; ms <= 200; ms += 10 {
		mustHandle(t, s, `{"op":"subscribe","topics":["C"],"throttle_ms":`+strconv.Itoa(ms)+`}`)
		mustPublish(t, b, priceTick("C", baseTS, 1, 1))
	}
	flushers := func() int {
		b.flMu.Lock()
		defer b.flMu.Unlock()
		return len(b.flushers)
	}
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := flushers(); n > 1 {
			return fmt.Errorf("%d flushers still running", n)
		}
		return nil
	})
	// The subscription at 200 ms still gets its updates.
	drainAll(s)
	seq := mustPublish(t, b, priceTick("C", baseTS, 2, 1))
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for _, w := range decodeAll(t, drainAll(s)) {
			if w.Type == "update" && w.Seq == seq {
				return nil
			}
		}
		return fmt.Errorf("no update for seq %d", seq)
	})
}

// BenchmarkPublishWithJoiners: one publish while 2,000 clients that joined
// mid-window (60 s throttle) wait for the flush.
func BenchmarkPublishWithJoiners(b *testing.B) {
	for _, joiners := range []int{0, 2000} {
		b.Run(strconv.Itoa(joiners), func(b *testing.B) {
			bus := newTestBus(b, BusConfig{Epoch: "e1", HistoryDepth: 100})
			mustPublish(b, bus, priceTick("J", baseTS, 1, 1))
			first := newTestSub(b, bus)
			mustHandle(b, first, `{"op":"subscribe","topics":["J"],"throttle_ms":60000}`)
			mustPublish(b, bus, priceTick("J", baseTS, 1, 1))
			for range joiners {
				s := newTestSub(b, bus)
				mustHandle(b, s, `{"op":"subscribe","topics":["J"],"throttle_ms":60000}`)
				mustPublish(b, bus, priceTick("J", baseTS, 1, 1))
			}
			tk := priceTick("J", baseTS, 2, 1)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := bus.Publish("bench", tk); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
