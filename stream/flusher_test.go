package stream

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestInstantFlushersShardTopicsKeepingOrder: throttle-0 topics spread
// over several instant flushers (one per GOMAXPROCS), and with concurrent
// publishers on every topic a subscriber of them all still gets each
// topic's ticks exactly once, in seq order, with exact aggregates.
func TestInstantFlushersShardTopicsKeepingOrder(t *testing.T) {
	t.Parallel()
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("needs GOMAXPROCS ≥ 2 for more than one instant flusher")
	}
	const topics, perTopic = 16, 300
	b := newTestBus(t, BusConfig{HistoryDepth: 10})
	log := newTickLog()
	names := make([]string, topics)
	for i := range names {
		names[i] = fmt.Sprintf("sh.%02d", i)
		tk := priceTick(names[i], baseTS, 1, 1)
		log.add(tk, mustPublish(t, b, tk))
	}
	shards := map[int]bool{}
	for _, n := range names {
		shards[b.lookup(n).shard] = true
	}
	if len(shards) < 2 {
		t.Fatalf("%d topics on %d instant flusher shard(s), want them spread over %d", topics, len(shards), len(b.instant))
	}
	s, tr := delivering(t, b)
	mustHandle(t, s, `{"op":"subscribe","topics":["sh.*"],"throttle_ms":0}`)

	var wg sync.WaitGroup
	for _, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perTopic {
				tk := priceTick(n, baseTS+int64(i)+1, float64(i%50)+1, 1)
				log.publish(t, b, tk)
			}
		}()
	}
	wg.Wait()

	check := newSeqChecker(log)
	seen := 0
	deadline := time.Now().Add(20 * time.Second)
	for {
		ms := tr.messages()
		for _, w := range decodeAll(t, ms[seen:]) {
			if err := check.check(w); err != nil {
				t.Fatal(err)
			}
		}
		seen = len(ms)
		done := true
		for _, n := range names {
			if check.last[n] != perTopic+1 {
				done = false
			}
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every tick delivered: last seqs %v", check.last)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
