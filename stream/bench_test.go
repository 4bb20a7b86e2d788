package stream

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds/tick"
)

// benchTick is a typical market tick: five fields.
func benchTick(topic string, i int) tick.Tick {
	return tick.Tick{Topic: topic, TS: baseTS + int64(i), Fields: []tick.Field{
		tick.F(tick.FieldPrice, 100+float64(i%100)/8),
		tick.F(tick.FieldSize, float64(i%7)+0.5),
		tick.F(tick.FieldBid, 99.5),
		tick.F(tick.FieldAsk, 100.5),
		tick.F(tick.FieldVolume, float64(i)),
	}}
}

// benchSubs subscribes n subscribers to topic at throttle ms and drains
// their ack and snapshot.
func benchSubs(b *testing.B, bus *Bus, topic string, n int, throttleMS int64) []*Subscriber {
	b.Helper()
	subs := make([]*Subscriber, n)
	for i := range subs {
		s, err := bus.NewSubscriber("bench")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.Subscribe(SubscribeRequest{Topics: []string{topic}, ThrottleMS: &throttleMS}); err != nil {
			b.Fatal(err)
		}
		s.drain(nil)
		s.endWrite()
		subs[i] = s
	}
	return subs
}

// settleSpin waits for the instant flushers like settle, yielding
// instead of sleeping so that the wait does not dominate an op.
func settleSpin(bus *Bus) {
	for i := range bus.instant {
		for f := bus.instant[i].Load(); f != nil && f.queued.Load() > 0; {
			runtime.Gosched()
		}
	}
}

func drainSubs(subs []*Subscriber, buf []Message) ([]Message, int) {
	n := 0
	for _, s := range subs {
		buf, _ = s.drain(buf[:0])
		s.endWrite()
		n += len(buf)
		clear(buf)
	}
	return buf, n
}

var fanoutSizes = []int{1, 100, 1000, 10_000}

// BenchmarkFanoutThrottle0: one op is one tick published, encoded once
// and queued on every subscriber, then every queue drained (as Deliver
// would) before the next.
func BenchmarkFanoutThrottle0(b *testing.B) {
	for _, n := range fanoutSizes {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) {
			bus := newTestBus(b, BusConfig{})
			mustPublish(b, bus, benchTick("B", 0))
			subs := benchSubs(b, bus, "B", n, 0)
			ticks := make([]tick.Tick, 64)
			for i := range ticks {
				ticks[i] = benchTick("B", i)
			}
			var buf []Message
			got := 0
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := bus.Publish("bench", ticks[i%len(ticks)]); err != nil {
					b.Fatal(err)
				}
				settleSpin(bus)
				var k int
				buf, k = drainSubs(subs, buf)
				got += k
			}
			b.StopTimer()
			if got != b.N*n {
				b.Fatalf("%d messages delivered, want %d", got, b.N*n)
			}
		})
	}
}

// BenchmarkFanoutThrottled: one op folds ticksPerWindow ticks into the
// open window of a 100 ms group, then closes the window by calling the
// group flush directly (one encoding, shared by every member) and drains
// every queue. The flusher goroutine could only interfere if it fired
// between the folds and the flush, a few microseconds per op.
func BenchmarkFanoutThrottled(b *testing.B) {
	const ticksPerWindow = 10
	for _, n := range fanoutSizes {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) {
			bus := newTestBus(b, BusConfig{})
			mustPublish(b, bus, benchTick("B", 0))
			subs := benchSubs(b, bus, "B", n, 100)
			tp := bus.lookup("B")
			ticks := make([]tick.Tick, 64)
			for i := range ticks {
				ticks[i] = benchTick("B", i)
			}
			var buf []Message
			got := 0
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for j := range ticksPerWindow {
					if _, err := bus.Publish("bench", ticks[(i+j)%len(ticks)]); err != nil {
						b.Fatal(err)
					}
				}
				tp.mu.Lock()
				g := tp.groups[100*time.Millisecond]
				if !g.removed {
					g.flush(nil)
				}
				tp.mu.Unlock()
				var k int
				buf, k = drainSubs(subs, buf)
				got += k
			}
			b.StopTimer()
			// The flusher may split an op's window once in a while.
			if got < b.N*n*9/10 || got > b.N*n*11/10 {
				b.Fatalf("%d updates delivered for %d windows × %d subscribers", got, b.N, n)
			}
		})
	}
}

func BenchmarkPublishNoSubscribers(b *testing.B) {
	bus := newTestBus(b, BusConfig{})
	ticks := make([]tick.Tick, 64)
	for i := range ticks {
		ticks[i] = benchTick("B", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := bus.Publish("bench", ticks[i%len(ticks)]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendUpdate(b *testing.B) {
	tk := benchTick("BTC-USD", 1)
	var w window
	w.fold(&tk, 1, time.Now())
	u := w.take("BTC-USD", "e1")
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		buf = appendUpdate(buf[:0], u)
	}
	b.SetBytes(int64(len(buf)))
}

// BenchmarkPublishWhilePatternSubscribes: one op is one tick published to
// an existing topic while another goroutine keeps subscribing and
// unsubscribing a pattern over a bus of 20,000 topics. The pattern's scan
// holds no bus-wide lock, so the publish does not wait for it.
func BenchmarkPublishWhilePatternSubscribes(b *testing.B) {
	bus := newTestBus(b, BusConfig{})
	for i := range 20_000 {
		mustPublish(b, bus, benchTick(fmt.Sprintf("t.%05d", i), i))
	}
	s, err := bus.NewSubscriber("bench")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(nil)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = s.Handle([]byte(`{"op":"subscribe","topics":["none.*"]}`))
			_, _ = s.Handle([]byte(`{"op":"unsubscribe","topics":["none.*"]}`))
			s.drain(nil)
			s.endWrite()
		}
	}()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := bus.Publish("bench", benchTick("t.00042", i)); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	close(stop)
	<-done
}

// BenchmarkUpdateEncoded is the production path: a window's update encoded
// once into its own shared bytes ((*Update).encoded).
func BenchmarkUpdateEncoded(b *testing.B) {
	tk := benchTick("BTC-USD", 1)
	var w window
	w.fold(&tk, 1, time.Now())
	u := w.take("BTC-USD", "e1")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		u.encoded()
	}
	b.SetBytes(int64(len(u.json)))
}
