package stream

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestConcurrentChurn publishes to several topics from several goroutines
// while subscribers subscribe, unsubscribe, resubscribe with other
// throttles, patterns and resume cursors, and close, with one subscriber
// stuck. Run with -race. Every subscriber's stream must have strictly
// increasing seqs per topic with exact aggregates over exactly the ticks
// since its previous message of the topic; the subscriber that stays
// subscribed at throttle 0 must see every seq.
func TestConcurrentChurn(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{MaxPendingBytes: 64 << 10, LagThrottle: 20 * time.Millisecond, HistoryDepth: 64})
	log := newTickLog()
	topics := []string{"c.0", "c.1", "c.2", "c.3"}
	seedRng := rand.New(rand.NewPCG(42, 42))
	for _, name := range topics {
		log.publish(t, b, randTick(seedRng, name, baseTS))
	}

	steady := newTestSub(t, b)
	steadyTr := &memTransport{}
	deliver(t, steady, steadyTr)
	mustHandle(t, steady, `{"op":"subscribe","topics":["c.0","c.1","c.2","c.3"],"throttle_ms":0}`)

	stuck := newTestSub(t, b)
	stuckTr := &memTransport{}
	stuckTr.block()
	deliver(t, stuck, stuckTr)
	mustHandle(t, stuck, `{"op":"subscribe","topics":["c.*"],"throttle_ms":0}`)

	var (
		mu         sync.Mutex
		transports []*memTransport // every churning subscriber's, for the final check
	)
	var churnOps atomic.Int64
	var publishing atomic.Bool
	publishing.Store(true)

	var pubWG sync.WaitGroup
	for p := range 3 {
		pubWG.Add(1)
		go func() {
			defer pubWG.Done()
			rng := rand.New(rand.NewPCG(uint64(p), 1))
			// At least 1500 ticks, and on until the churners have done
			// enough (with GOMAXPROCS=1 they might not run otherwise).
			for i := 0; i < 1500 || (churnOps.Load() < 300 && i < 50_000); i++ {
				if i%20 == 0 {
					runtime.Gosched()
				}
				name := topics[rng.IntN(len(topics))]
				if i%300 == 299 {
					name = fmt.Sprintf("c.new.%d.%d", p, i)
				}
				tk := randTick(rng, name, baseTS+int64(i))
				seq, err := b.Publish("test", tk)
				if err != nil {
					t.Errorf("Publish: %v", err)
					return
				}
				log.add(tk, seq)
			}
		}()
	}

	var churnWG sync.WaitGroup
	for c := range 3 {
		churnWG.Add(1)
		go func() {
			defer churnWG.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 2))
			newSub := func() (*Subscriber, *memTransport) {
				s, err := b.NewSubscriber("test")
				if err != nil {
					t.Errorf("NewSubscriber: %v", err)
					return nil, nil
				}
				tr := &memTransport{}
				deliver(t, s, tr)
				mu.Lock()
				transports = append(transports, tr)
				mu.Unlock()
				return s, tr
			}
			s, _ := newSub()
			if s == nil {
				return
			}
			for ops := 0; publishing.Load() || ops < 20; ops++ {
				churnOps.Add(1)
				throttle := []int{0, 10, 20, 30}[rng.IntN(4)]
				switch k := rng.IntN(10); {
				case k < 4:
					a, z := topics[rng.IntN(4)], topics[rng.IntN(4)]
					_, _ = s.Handle(fmt.Appendf(nil, `{"op":"subscribe","topics":[%q,%q],"throttle_ms":%d}`, a, z, throttle))
				case k < 5:
					_, _ = s.Handle(fmt.Appendf(nil, `{"op":"subscribe","topics":["c.*"],"throttle_ms":%d}`, throttle))
				case k < 6:
					// Resume a topic not subscribed now, from a cursor
					// just read: what was published since is replayed.
					// The marker tells the checker where the client
					// claims to be; it is queued before the ack.
					name := topics[rng.IntN(4)]
					s.subMu.Lock()
					member := s.holdsLocked(name)
					s.subMu.Unlock()
					if member {
						continue
					}
					seq := b.lookup(name).info(time.Now()).Seq
					seq -= min(seq, uint64(rng.IntN(5)))
					s.Send(typeResumeMarker, fmt.Appendf(nil, `{"type":%q,"topic":%q,"seq":%d}`, typeResumeMarker, name, seq))
					_, _ = s.Handle(fmt.Appendf(nil, `{"op":"subscribe","topics":[%q],"throttle_ms":%d,"resume":{%q:{"epoch":"e1","seq":%d}}}`,
						name, throttle, name, seq))
				case k < 8:
					_, _ = s.Handle(fmt.Appendf(nil, `{"op":"unsubscribe","topics":[%q,"c.*"]}`, topics[rng.IntN(4)]))
				case k < 9:
					s.Close(nil)
					if s, _ = newSub(); s == nil {
						return
					}
				default:
					time.Sleep(time.Millisecond)
				}
			}
			s.Close(nil)
		}()
	}

	pubWG.Wait()
	publishing.Store(false)
	churnWG.Wait()

	// The steady subscriber gets every tick of every topic.
	final := map[string]uint64{}
	for _, name := range topics {
		final[name] = b.lookup(name).info(time.Now()).Seq
		waitSeq(t, steadyTr, name, final[name])
	}
	c := newSeqChecker(log)
	c.checkAll(t, decodeAll(t, steadyTr.messages()))
	for _, name := range topics {
		if c.last[name] != final[name] {
			t.Errorf("steady subscriber: %s last seq %d, want %d", name, c.last[name], final[name])
		}
	}
	if !stuck.Lagging() || stuck.Err() != nil {
		t.Errorf("stuck subscriber: Lagging() = %v, Err() = %v; want stepped down and open", stuck.Lagging(), stuck.Err())
	}

	mu.Lock()
	trs := transports
	mu.Unlock()
	updates := 0
	for i, tr := range trs {
		c := newSeqChecker(log)
		for j, w := range decodeAll(t, tr.messages()) {
			if err := c.check(w); err != nil {
				t.Fatalf("churning subscriber %d, message %d: %v", i, j, err)
			}
		}
		updates += c.updates
	}
	if updates == 0 {
		t.Error("churning subscribers got no updates")
	}

	steady.Close(nil)
	stuck.Close(nil)
	checkNoGroups(t, b)
}
