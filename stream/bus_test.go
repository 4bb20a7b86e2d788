package stream

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream/protocol"
)

const baseTS = int64(1_700_000_000_000)

// never and never2 are throttles whose flusher never fires during a test
// (flushers align to multiples of their interval on the wall clock), so
// that tests can flush by hand with flushNow and be deterministic. Buses
// using them need MaxThrottle: never.
const (
	never  = 1000 * time.Hour
	never2 = 999 * time.Hour
)

var neverMS, never2MS = never.Milliseconds(), never2.Milliseconds()

// flushNow runs the flusher of interval d once, from the test goroutine.
// Tests that use it subscribe with a throttle of tens of seconds, so the
// flusher's own ticker never fires during the test.
func flushNow(t testing.TB, b *Bus, d time.Duration) {
	t.Helper()
	if d == 0 {
		settle(b) // the instant flusher runs by itself
		return
	}
	b.flMu.Lock()
	f := b.flushers[d]
	b.flMu.Unlock()
	if f != nil {
		f.flush()
	}
}

func groupsOf(b *Bus, name string) map[time.Duration]*group {
	tp := b.lookup(name)
	if tp == nil {
		return nil
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return maps(tp.groups)
}

func maps(m map[time.Duration]*group) map[time.Duration]*group {
	out := make(map[time.Duration]*group, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// checkNoGroups fails if any topic still has a group, or the bus still
// knows a pattern subscription.
func checkNoGroups(t testing.TB, b *Bus) {
	t.Helper()
	b.mu.RLock()
	defer b.mu.RUnlock()
	for name, tp := range b.topics {
		tp.mu.Lock()
		n := len(tp.groups)
		tp.mu.Unlock()
		if n != 0 {
			t.Errorf("topic %s still has %d groups", name, n)
		}
	}
	for s, ps := range b.patterns {
		if len(ps) != 0 {
			t.Errorf("bus still has pattern subscriptions of %p: %v", s, ps)
		}
	}
	if len(b.byPrefix) != 0 || len(b.pending) != 0 {
		t.Errorf("bus still has %d patterns by prefix and %d pending names", len(b.byPrefix), len(b.pending))
	}
}

func TestThrottleZeroOneUpdatePerTick(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{})
	log := newTickLog()
	rng := rand.New(rand.NewPCG(1, 2))
	log.publish(t, b, randTick(rng, "Z", baseTS))
	s, tr := delivering(t, b)
	mustHandle(t, s, `{"op":"subscribe","id":1,"topics":["Z"],"throttle_ms":0}`)
	const n = 500
	var last uint64
	for i := range n {
		last = log.publish(t, b, randTick(rng, "Z", baseTS+int64(i)))
	}
	waitSeq(t, tr, "Z", last)
	ws := decodeAll(t, tr.messages())
	if ws[0].Type != protocol.TypeAck || ws[1].Type != protocol.TypeSnapshot || ws[1].Seq != 1 {
		t.Fatalf("want ack then snapshot at seq 1, got %+v %+v", ws[0], ws[1])
	}
	ups := ofType(ws, protocol.TypeUpdate)
	if len(ups) != n {
		t.Fatalf("%d updates, want %d (one per tick)", len(ups), n)
	}
	for i, u := range ups {
		if u.Seq != uint64(i+2) || u.Agg.N != 1 {
			t.Fatalf("update %d: seq %d n %d, want seq %d n 1", i, u.Seq, u.Agg.N, i+2)
		}
	}
	newSeqChecker(log).checkAll(t, ws)
}

func TestThrottledUpdatesCoalesce(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{})
	log := newTickLog()
	rng := rand.New(rand.NewPCG(3, 4))
	log.publish(t, b, randTick(rng, "T", baseTS))
	s, tr := delivering(t, b)
	mustHandle(t, s, `{"op":"subscribe","id":1,"topics":["T"],"throttle_ms":20}`)
	const bursts, perBurst = 10, 50
	var last uint64
	for i := range bursts {
		for j := range perBurst {
			last = log.publish(t, b, randTick(rng, "T", baseTS+int64(i*perBurst+j)))
		}
		waitSeq(t, tr, "T", last)
	}
	ws := decodeAll(t, tr.messages())
	ups := ofType(ws, protocol.TypeUpdate)
	if len(ups) < bursts || len(ups) >= bursts*perBurst {
		t.Fatalf("%d updates for %d ticks in %d bursts: want coalescing", len(ups), bursts*perBurst, bursts)
	}
	var total int64
	for _, u := range ups {
		total += u.Agg.N
	}
	if total != bursts*perBurst {
		t.Fatalf("updates fold %d ticks, want %d", total, bursts*perBurst)
	}
	newSeqChecker(log).checkAll(t, ws) // exact aggregates, strictly increasing seqs
	if g := groupsOf(b, "T"); len(g) != 1 || g[20*time.Millisecond] == nil {
		t.Fatalf("groups %v, want one of 20ms", g)
	}
}

// TestJoinMidWindow: subscribers that join a group while its window holds
// ticks get their snapshot, then only the ticks after it.
func TestJoinMidWindow(t *testing.T) {
	t.Parallel()
	const iv = never
	b := newTestBus(t, BusConfig{MaxThrottle: never})
	log := newTickLog()
	rng := rand.New(rand.NewPCG(5, 6))
	pub := func() uint64 { return log.publish(t, b, randTick(rng, "J", baseTS)) }
	pub() // seq 1
	subs := map[string]*Subscriber{}
	sub := func(name string) {
		s := newTestSub(t, b)
		subs[name] = s
		mustHandle(t, s, fmt.Sprintf(`{"op":"subscribe","topics":["J"],"throttle_ms":%d}`, neverMS))
	}
	sub("A") // snapshot 1, member
	pub()    // 2
	pub()    // 3
	sub("B") // snapshot 3, join window after 3
	pub()    // 4
	sub("C") // snapshot 4, join window after 4
	sub("D") // same join window
	sub("E")
	mustHandle(t, subs["E"], `{"op":"unsubscribe","topics":["J"]}`)
	g := groupsOf(b, "J")[iv]
	if g == nil {
		t.Fatal("no group")
	}
	b.lookup("J").mu.Lock()
	nj, nm := len(g.joins), len(g.members)
	b.lookup("J").mu.Unlock()
	if nj != 2 || nm != 1 {
		t.Fatalf("%d join windows and %d members, want 2 and 1", nj, nm)
	}
	pub() // 5
	pub() // 6
	flushNow(t, b, iv)
	pub() // 7
	flushNow(t, b, iv)

	wantN := map[string][]int64{"A": {5, 1}, "B": {3, 1}, "C": {2, 1}, "D": {2, 1}, "E": nil}
	wantSnap := map[string]uint64{"A": 1, "B": 3, "C": 4, "D": 4, "E": 4}
	for name, s := range subs {
		ws := decodeAll(t, drainAll(s))
		snaps := ofType(ws, protocol.TypeSnapshot)
		if len(snaps) != 1 || snaps[0].Seq != wantSnap[name] {
			t.Errorf("%s: snapshots %+v, want one at %d", name, snaps, wantSnap[name])
		}
		var ns []int64
		for _, u := range ofType(ws, protocol.TypeUpdate) {
			ns = append(ns, u.Agg.N)
		}
		if !slices.Equal(ns, wantN[name]) {
			t.Errorf("%s: update sizes %v, want %v", name, ns, wantN[name])
		}
		newSeqChecker(log).checkAll(t, ws)
	}
	b.lookup("J").mu.Lock()
	nj, nm = len(g.joins), len(g.members)
	b.lookup("J").mu.Unlock()
	if nj != 0 || nm != 4 {
		t.Fatalf("after flush: %d join windows and %d members, want 0 and 4", nj, nm)
	}
}

// TestJoinWindowProperty interleaves publishes, (re)subscribes with and
// without resume at several throttles, unsubscribes and flushes at
// random, and checks every subscriber's stream: no duplicate, no loss,
// exact aggregates.
func TestJoinWindowProperty(t *testing.T) {
	t.Parallel()
	intervals := []int64{0, never2MS, neverMS}
	for seed := uint64(1); seed <= 40; seed++ {
		rng := rand.New(rand.NewPCG(seed, 77))
		b := newTestBus(t, BusConfig{HistoryDepth: 16, MaxThrottle: never})
		log := newTickLog()
		log.publish(t, b, randTick(rng, "P", baseTS))
		const nsub = 5
		subs := make([]*Subscriber, nsub)
		checkers := make([]*seqChecker, nsub)
		subscribed := make([]bool, nsub)
		for i := range subs {
			subs[i] = newTestSub(t, b)
			checkers[i] = newSeqChecker(log)
		}
		collect := func() {
			for i, s := range subs {
				for _, m := range drainAll(s) {
					if err := checkers[i].check(decodeMsg(t, m)); err != nil {
						t.Fatalf("seed %d sub %d: %v", seed, i, err)
					}
				}
			}
		}
		ts := baseTS
		for range 300 {
			i := rng.IntN(nsub)
			switch k := rng.IntN(20); {
			case k < 12:
				ts += rng.Int64N(30_000)
				log.publish(t, b, randTick(rng, "P", ts))
			case k < 15:
				frame := fmt.Sprintf(`{"op":"subscribe","topics":["P"],"throttle_ms":%d}`, intervals[rng.IntN(len(intervals))])
				if c := checkers[i]; c.have["P"] && rng.IntN(2) == 0 {
					collect() // the cursor is what the client has seen
					frame = fmt.Sprintf(`{"op":"subscribe","topics":["P"],"throttle_ms":%d,"resume":{"P":{"epoch":"e1","seq":%d}}}`,
						intervals[rng.IntN(len(intervals))], c.last["P"])
				}
				mustHandle(t, subs[i], frame)
				subscribed[i] = true
			case k < 16:
				mustHandle(t, subs[i], `{"op":"unsubscribe","topics":["P"]}`)
				subscribed[i] = false
			default:
				flushNow(t, b, time.Duration(intervals[1+rng.IntN(2)])*time.Millisecond)
			}
			if rng.IntN(3) == 0 {
				collect()
			}
		}
		flushNow(t, b, never2)
		flushNow(t, b, never)
		collect()
		last := b.lookup("P").info(time.Now()).Seq
		for i := range subs {
			if subscribed[i] && checkers[i].last["P"] != last {
				t.Fatalf("seed %d sub %d: last seq %d, want %d", seed, i, checkers[i].last["P"], last)
			}
			subs[i].Close(nil)
		}
		checkNoGroups(t, b)
	}
}

func TestResume(t *testing.T) {
	t.Parallel()
	// 20 ticks with 8 kept: seqs 13..20 are in history.
	tests := []struct {
		name       string
		resume     string
		reset      string
		wantReplay []uint64 // update seqs before the live one
		snapshot   bool
	}{
		{"no cursor", ``, "", nil, true},
		{"wrong epoch", `{"epoch":"e0","seq":15}`, protocol.ResetEpoch, nil, true},
		{"future cursor", `{"epoch":"e1","seq":21}`, protocol.ResetBadCursor, nil, true},
		{"too old", `{"epoch":"e1","seq":11}`, protocol.ResetHistoryGap, nil, true},
		{"zero too old", `{"epoch":"e1","seq":0}`, protocol.ResetHistoryGap, nil, true},
		{"oldest kept", `{"epoch":"e1","seq":12}`, "", []uint64{13, 14, 15, 16, 17, 18, 19, 20}, false},
		{"middle", `{"epoch":"e1","seq":17}`, "", []uint64{18, 19, 20}, false},
		{"up to date", `{"epoch":"e1","seq":20}`, "", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newTestBus(t, BusConfig{HistoryDepth: 8})
			log := newTickLog()
			rng := rand.New(rand.NewPCG(7, 8))
			for i := range 20 {
				log.publish(t, b, randTick(rng, "R", baseTS+int64(i)))
			}
			s := newTestSub(t, b)
			frame := `{"op":"subscribe","id":"x","topics":["R"],"throttle_ms":0}`
			if tt.resume != "" {
				frame = `{"op":"subscribe","id":"x","topics":["R"],"throttle_ms":0,"resume":{"R":` + tt.resume + `}}`
			}
			mustHandle(t, s, frame)
			log.publish(t, b, randTick(rng, "R", baseTS+100)) // live: 21
			ws := decodeAll(t, drainAll(s))
			if ws[0].Type != protocol.TypeAck || string(ws[0].ID) != `"x"` {
				t.Fatalf("first message %+v, want ack", ws[0])
			}
			ws = ws[1:]
			if tt.reset != "" {
				if ws[0].Type != protocol.TypeReset || ws[0].Reason != tt.reset || ws[0].Topic != "R" {
					t.Fatalf("got %+v, want reset %s", ws[0], tt.reset)
				}
				ws = ws[1:]
			}
			if tt.snapshot {
				if ws[0].Type != protocol.TypeSnapshot || ws[0].Seq != 20 || ws[0].Epoch != "e1" {
					t.Fatalf("got %+v, want snapshot at 20", ws[0])
				}
				want := map[string]tick.Num{}
				for s := uint64(1); s <= 20; s++ {
					for _, f := range log.ticks["R"][s].Fields {
						want[f.Name] = f.Value
					}
				}
				if fmt.Sprint(ws[0].Data) != fmt.Sprint(want) {
					t.Fatalf("snapshot data %v, want %v", ws[0].Data, want)
				}
				ws = ws[1:]
			}
			var seqs []uint64
			for _, w := range ws {
				if w.Type != protocol.TypeUpdate {
					t.Fatalf("unexpected %+v", w)
				}
				seqs = append(seqs, w.Seq)
			}
			if want := append(slices.Clone(tt.wantReplay), 21); !slices.Equal(seqs, want) {
				t.Fatalf("update seqs %v, want %v", seqs, want)
			}
			c := newSeqChecker(log)
			if !tt.snapshot {
				var cur protocol.Cursor
				fmt.Sscanf(tt.resume, `{"epoch":"e1","seq":%d}`, &cur.Seq)
				c.start("R", cur.Seq)
			} else {
				c.start("R", 20)
			}
			c.checkAll(t, ws)
		})
	}
}

// TestResumeThrottled: a replay is folded into windows of the
// subscription's throttle by source time, like live updates, and joins
// the live stream without loss or duplicate.
func TestResumeThrottled(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{})
	log := newTickLog()
	rng := rand.New(rand.NewPCG(9, 10))
	ts := []int64{}
	for i := range 40 {
		ts = append(ts, baseTS+int64(i)*300) // 3-4 ticks per second
		log.publish(t, b, randTick(rng, "RT", ts[i]))
	}
	s, tr := delivering(t, b)
	mustHandle(t, s, `{"op":"subscribe","topics":["RT"],"throttle_ms":1000,"resume":{"RT":{"epoch":"e1","seq":5}}}`)
	last := log.publish(t, b, randTick(rng, "RT", baseTS+100_000))
	waitSeq(t, tr, "RT", last)
	ws := decodeAll(t, tr.messages())
	c := newSeqChecker(log)
	c.start("RT", 5)
	c.checkAll(t, ws)
	if len(ofType(ws, protocol.TypeSnapshot)) != 0 || len(ofType(ws, protocol.TypeReset)) != 0 {
		t.Fatalf("resume sent a snapshot or reset: %+v", ws)
	}
	// Replayed updates: one per second of source time of ticks 6..40.
	buckets := map[int64]bool{}
	for _, x := range ts[5:] {
		buckets[x/1000] = true
	}
	ups := ofType(ws, protocol.TypeUpdate)
	if len(ups) != len(buckets)+1 {
		t.Fatalf("%d updates, want %d replayed + 1 live", len(ups), len(buckets))
	}
	for _, u := range ups[:len(ups)-1] {
		if u.Agg.N > 4 {
			t.Fatalf("replayed update folds %d ticks, want at most 4 per second", u.Agg.N)
		}
	}
}

func TestPatternGetsNewTopics(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{})
	log := newTickLog()
	rng := rand.New(rand.NewPCG(11, 12))
	log.publish(t, b, randTick(rng, "crypto.ETH", baseTS))
	log.publish(t, b, randTick(rng, "fx.EUR", baseTS))
	s := newTestSub(t, b)
	res := mustHandle(t, s, `{"op":"subscribe","id":1,"topics":["crypto.*"],"throttle_ms":0}`)
	if !slices.Equal(res.Topics, []string{"crypto.*"}) {
		t.Fatalf("Result.Topics %v", res.Topics)
	}
	log.publish(t, b, randTick(rng, "crypto.BTC", baseTS)) // new: joins before its first tick
	log.publish(t, b, randTick(rng, "fx.EUR", baseTS))
	log.publish(t, b, randTick(rng, "crypto.ETH", baseTS))
	log.publish(t, b, randTick(rng, "cryptox", baseTS)) // prefix "crypto." does not match
	ws := decodeAll(t, drainAll(s))
	var got []string
	for _, w := range ws {
		got = append(got, fmt.Sprintf("%s %s %d", w.Type, w.Topic, w.Seq))
	}
	want := []string{"ack  0", "snapshot crypto.ETH 1", "update crypto.BTC 1", "update crypto.ETH 2"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	newSeqChecker(log).checkAll(t, ws)

	mustHandle(t, s, `{"op":"unsubscribe","topics":["crypto.*"]}`)
	log.publish(t, b, randTick(rng, "crypto.BTC", baseTS))
	log.publish(t, b, randTick(rng, "crypto.NEW", baseTS))
	ws = decodeAll(t, drainAll(s))
	if len(ws) != 1 || ws[0].Type != protocol.TypeAck {
		t.Fatalf("after unsubscribe got %+v, want only the ack", ws)
	}
	checkNoGroups(t, b)
}

func TestPatternEverything(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{})
	s := newTestSub(t, b)
	mustHandle(t, s, `{"op":"subscribe","topics":["*"],"throttle_ms":0}`)
	for _, name := range []string{"a", "b.c", "Z:1/x-y_z"} {
		mustPublish(t, b, priceTick(name, baseTS, 1, 1))
	}
	if ups := ofType(decodeAll(t, drainAll(s)), protocol.TypeUpdate); len(ups) != 3 {
		t.Fatalf("%d updates, want 3", len(ups))
	}
}

func TestUnsubscribeStopsDelivery(t *testing.T) {
	t.Parallel()
	for _, throttle := range []int64{0, neverMS} {
		t.Run(fmt.Sprint(throttle), func(t *testing.T) {
			t.Parallel()
			b := newTestBus(t, BusConfig{MaxThrottle: never})
			mustPublish(t, b, priceTick("U", baseTS, 1, 1))
			mustPublish(t, b, priceTick("V", baseTS, 1, 1))
			s := newTestSub(t, b)
			mustHandle(t, s, fmt.Sprintf(`{"op":"subscribe","topics":["U","V"],"throttle_ms":%d}`, throttle))
			mustPublish(t, b, priceTick("U", baseTS, 2, 1))
			res := mustHandle(t, s, `{"op":"unsubscribe","id":9,"topics":["U"]}`)
			if !slices.Equal(res.Topics, []string{"U"}) {
				t.Fatalf("Result.Topics %v", res.Topics)
			}
			mustPublish(t, b, priceTick("U", baseTS, 3, 1))
			mustPublish(t, b, priceTick("V", baseTS, 3, 1))
			flushNow(t, b, time.Duration(throttle)*time.Millisecond)
			ws := decodeAll(t, drainAll(s))
			for _, w := range ws {
				if w.Type == protocol.TypeUpdate && w.Topic == "U" && (throttle > 0 || w.Seq > 2) {
					t.Fatalf("update of U after unsubscribe: %+v", w)
				}
			}
			if ups := ofType(ws, protocol.TypeUpdate); len(ups) == 0 || ups[len(ups)-1].Topic != "V" {
				t.Fatalf("V still subscribed, got %+v", ws)
			}
			if g := groupsOf(b, "U"); len(g) != 0 {
				t.Fatalf("U still has groups %v", g)
			}
		})
	}
}

func TestCloseReleasesMemberships(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{})
	for _, name := range []string{"a.1", "a.2", "b"} {
		mustPublish(t, b, priceTick(name, baseTS, 1, 1))
	}
	var subs []*Subscriber
	for i, throttle := range []int{0, 20, 60000, 60000} {
		s := newTestSub(t, b)
		subs = append(subs, s)
		mustHandle(t, s, fmt.Sprintf(`{"op":"subscribe","topics":["a.*","b"],"throttle_ms":%d}`, throttle))
		if i == 3 {
			mustPublish(t, b, priceTick("b", baseTS, 1, 1)) // the next one lands in a join window
		}
	}
	s := newTestSub(t, b)
	subs = append(subs, s)
	mustHandle(t, s, `{"op":"subscribe","topics":["b"],"throttle_ms":60000}`)
	if b.Subscribers() != 5 {
		t.Fatalf("Subscribers() = %d, want 5", b.Subscribers())
	}
	for _, s := range subs {
		s.Close(nil)
		s.Close(nil) // idempotent
		if s.Err() != nil {
			t.Fatalf("Err() = %v after Close(nil)", s.Err())
		}
		select {
		case <-s.Done():
		default:
			t.Fatal("Done not closed")
		}
	}
	checkNoGroups(t, b)
	if b.Subscribers() != 0 {
		t.Fatalf("Subscribers() = %d, want 0", b.Subscribers())
	}
	if v := testutil.ToFloat64(b.metrics.conns.WithLabelValues("test")); v != 0 {
		t.Fatalf("connections gauge %v, want 0", v)
	}
	mustPublish(t, b, priceTick("a.3", baseTS, 1, 1)) // new topic: no closed pattern joins it
	checkNoGroups(t, b)
}

// TestSubscribeAfterClose: a subscribe that reaches a closed subscriber
// (an SSE control POST racing the end of its stream, a WebSocket frame
// read while the bus shuts down) must not leave memberships behind.
func TestSubscribeAfterClose(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{})
	mustPublish(t, b, priceTick("x.1", baseTS, 1, 1))
	s := newTestSub(t, b)
	s.Close(nil)
	_, _ = s.Handle([]byte(`{"op":"subscribe","topics":["x.1","x.*"],"throttle_ms":0}`))
	_, _ = s.Handle([]byte(`{"op":"subscribe","topics":["x.1"],"throttle_ms":60000}`))
	mustPublish(t, b, priceTick("x.2", baseTS, 1, 1))
	checkNoGroups(t, b)
	s.subMu.Lock()
	n := len(s.members) + len(s.patterns)
	s.subMu.Unlock()
	if n != 0 {
		t.Fatalf("closed subscriber holds %d subscriptions", n)
	}
}

// TestCloseRacesSubscribe closes subscribers while they subscribe.
func TestCloseRacesSubscribe(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{})
	for i := range 4 {
		mustPublish(t, b, priceTick(fmt.Sprintf("r.%d", i), baseTS, 1, 1))
	}
	for i := range 200 {
		s := newTestSub(t, b)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for j := range 3 {
				_, _ = s.Handle(fmt.Appendf(nil, `{"op":"subscribe","topics":["r.%d","r.*"],"throttle_ms":%d}`, (i+j)%4, 10*(j%2)))
			}
		}()
		if i%2 == 0 {
			mustPublish(t, b, priceTick(fmt.Sprintf("r.new%d", i), baseTS, 1, 1))
		}
		s.Close(nil)
		<-done
	}
	checkNoGroups(t, b)
}

// TestStepDownNeverDrained: a subscriber that never drains steps down,
// is told so, and its queue stays bounded with exact per-topic merges.
func TestStepDownNeverDrained(t *testing.T) {
	t.Parallel()
	const maxPending = 1024
	b := newTestBus(t, BusConfig{MaxPendingBytes: maxPending, LagThrottle: 1500 * time.Millisecond})
	log := newTickLog()
	rng := rand.New(rand.NewPCG(13, 14))
	topics := []string{"S1", "S2", "S3"}
	for _, name := range topics {
		log.publish(t, b, randTick(rng, name, baseTS))
	}
	s := newTestSub(t, b)
	mustHandle(t, s, `{"op":"subscribe","topics":["S1","S2","S3"],"throttle_ms":0}`)
	// Snapshots of a subscribe are paced by the queue: write them first.
	var ws []wireMsg
	for range 10 {
		ws = append(ws, decodeAll(t, drainAll(s))...)
		if len(ofType(ws, protocol.TypeSnapshot)) == len(topics) {
			break
		}
		s.pumpJoins()
	}
	for i := range 3000 {
		log.publish(t, b, randTick(rng, topics[i%3], baseTS+int64(i)))
		if p := s.PendingBytes(); p > 4*maxPending {
			t.Fatalf("pending %d bytes after %d ticks, over 4×%d", p, i, maxPending)
		}
	}
	if !s.Lagging() || s.Err() != nil {
		t.Fatalf("Lagging() = %v, Err() = %v; want stepped down, open", s.Lagging(), s.Err())
	}
	if got := b.Metrics().LaggingClients(); got != 1 {
		t.Fatalf("LaggingClients() = %d, want 1", got)
	}
	if got := testutil.ToFloat64(b.metrics.stepDowns); got != 1 {
		t.Fatalf("step-downs %v, want 1", got)
	}
	ws = append(ws, decodeAll(t, drainAll(s))...)
	st := ofType(ws, protocol.TypeStatus)
	if len(st) != 1 || st[0].Lagging == nil || !*st[0].Lagging || st[0].ThrottleMS == nil || *st[0].ThrottleMS != 1500 {
		t.Fatalf("status messages %+v, want one lagging:true throttle_ms:1500", st)
	}
	// Nothing was drained, so each topic's updates merged into one.
	perTopic := map[string]int{}
	for _, u := range ofType(ws, protocol.TypeUpdate) {
		perTopic[u.Topic]++
	}
	if len(perTopic) != 3 || perTopic["S1"] != 1 || perTopic["S2"] != 1 || perTopic["S3"] != 1 {
		t.Fatalf("updates per topic %v, want one each", perTopic)
	}
	c := newSeqChecker(log)
	c.checkAll(t, ws)
	for _, name := range topics {
		if c.last[name] != 1001 {
			t.Fatalf("%s: last seq %d, want 1001 (no loss)", name, c.last[name])
		}
	}
	s.Close(nil)
	if got := b.Metrics().LaggingClients(); got != 0 {
		t.Fatalf("LaggingClients() = %d after close, want 0", got)
	}
}

// TestHardBoundCloses: a stepped-down subscriber whose merged queue still
// passes four times the bound is closed with protocol.DisconnectSlow.
func TestHardBoundCloses(t *testing.T) {
	t.Parallel()
	const maxPending = 1024
	b := newTestBus(t, BusConfig{MaxPendingBytes: maxPending})
	var topics []string
	for i := range 60 {
		name := fmt.Sprintf("H%02d", i)
		topics = append(topics, name)
		mustPublish(t, b, priceTick(name, baseTS, 1, 1))
	}
	s := newTestSub(t, b)
	for _, name := range topics {
		mustHandle(t, s, `{"op":"subscribe","topics":["`+name+`"],"throttle_ms":0}`)
		drainAll(s)
	}
	tr := &memTransport{}
	unblock := tr.block()
	defer unblock()
	done := deliver(t, s, tr)
	for round := 0; s.Err() == nil; round++ {
		if round == 10 {
			t.Fatalf("not closed; pending %d, lagging %v", s.PendingBytes(), s.Lagging())
		}
		for _, name := range topics {
			mustPublish(t, b, priceTick(name, baseTS, float64(round), 1))
		}
		settle(b) // throttle-0 fan-out runs on the instant flusher
	}
	if s.Err() != protocol.DisconnectSlow {
		t.Fatalf("Err() = %v, want protocol.DisconnectSlow", s.Err())
	}
	if s.PendingBytes() != 0 {
		t.Fatalf("closed subscriber still holds %d bytes", s.PendingBytes())
	}
	if got := testutil.ToFloat64(b.metrics.slowCloses); got != 1 {
		t.Fatalf("slow closes %v, want 1", got)
	}
	unblock()
	select {
	case err := <-done:
		if !errors.Is(err, protocol.DisconnectSlow) {
			t.Fatalf("Deliver = %v, want protocol.DisconnectSlow", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Deliver did not return")
	}
	mustPublish(t, b, priceTick("H00", baseTS, 1, 1)) // dropped, no panic
	s.Close(nil)
	checkNoGroups(t, b)
}

// TestLaggingEnds: once the transport writes quickly again the
// subscriber is told lagging:false at the first quick paced write, and
// nothing was lost on the way.
func TestLaggingEnds(t *testing.T) {
	t.Parallel()
	// A paced write counts as quick under MaxPendingBytes/4 bytes: room
	// for one merged update with all its fields and the status.
	b := newTestBus(t, BusConfig{MaxPendingBytes: 4096, LagThrottle: 10 * time.Millisecond})
	log := newTickLog()
	rng := rand.New(rand.NewPCG(15, 16))
	log.publish(t, b, randTick(rng, "L", baseTS))
	s := newTestSub(t, b)
	tr := &memTransport{inWrite: make(chan struct{}, 1)}
	mustHandle(t, s, `{"op":"subscribe","topics":["L"],"throttle_ms":0}`)
	unblock := tr.block()
	deliver(t, s, tr)
	<-tr.inWrite // Deliver is stuck in its first write
	for i := 0; !s.Lagging(); i++ {
		if i > 10_000 {
			t.Fatal("never stepped down")
		}
		log.publish(t, b, randTick(rng, "L", baseTS))
	}
	unblock()
	checkFor(t, 10*time.Second, 2*time.Millisecond, func() error {
		log.publish(t, b, randTick(rng, "L", baseTS))
		for _, m := range tr.messages() {
			if m.Type == protocol.TypeStatus && decodeMsg(t, m).Lagging != nil && !*decodeMsg(t, m).Lagging {
				return nil
			}
		}
		return errors.New("no lagging:false yet")
	})
	if s.Lagging() {
		t.Fatal("Lagging() still true")
	}
	last := log.publish(t, b, randTick(rng, "L", baseTS))
	waitSeq(t, tr, "L", last)
	ws := decodeAll(t, tr.messages())
	var states []bool
	for _, st := range ofType(ws, protocol.TypeStatus) {
		states = append(states, *st.Lagging)
	}
	if !slices.Equal(states, []bool{true, false}) {
		t.Fatalf("status lagging %v, want [true false]", states)
	}
	c := newSeqChecker(log)
	c.checkAll(t, ws)
	if c.last["L"] != last {
		t.Fatalf("last seq %d, want %d", c.last["L"], last)
	}
}

// TestPublishNeverBlocks: a transport blocked forever slows nobody.
func TestPublishNeverBlocks(t *testing.T) {
	t.Parallel()
	const maxPending = 64 << 10
	b := newTestBus(t, BusConfig{MaxPendingBytes: maxPending})
	topics := []string{"N1", "N2", "N3", "N4"}
	for _, name := range topics {
		mustPublish(t, b, priceTick(name, baseTS, 1, 1))
	}
	stuck := newTestSub(t, b)
	mustHandle(t, stuck, `{"op":"subscribe","topics":["N1","N2","N3","N4"],"throttle_ms":0}`)
	tr := &memTransport{}
	tr.block()
	deliver(t, stuck, tr)
	stuck2 := newTestSub(t, b) // a throttled pattern subscription, stuck too
	mustHandle(t, stuck2, `{"op":"subscribe","topics":["N*"],"throttle_ms":10}`)
	tr2 := &memTransport{}
	tr2.block()
	deliver(t, stuck2, tr2)
	fast := newTestSub(t, b)
	ftr := &memTransport{}
	deliver(t, fast, ftr)
	mustHandle(t, fast, `{"op":"subscribe","topics":["N1"],"throttle_ms":0}`)

	const n = 20_000
	done := make(chan uint64)
	go func() {
		var last uint64
		for i := range n {
			seq, err := b.Publish("test", priceTick(topics[i%4], baseTS, float64(i), 1))
			if err != nil {
				panic(err)
			}
			if i%4 == 0 {
				last = seq
			}
		}
		done <- last
	}()
	var last uint64
	select {
	case last = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("publishing blocked behind a stuck transport")
	}
	waitSeq(t, ftr, "N1", last)
	if stuck.Err() != nil || !stuck.Lagging() {
		t.Fatalf("stuck subscriber: Err() = %v, Lagging() = %v; want open and stepped down", stuck.Err(), stuck.Lagging())
	}
	if p := stuck.PendingBytes(); p > 4*maxPending {
		t.Fatalf("stuck subscriber holds %d bytes", p)
	}
}

func TestDeliverEnds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		end  func(b *Bus, s *Subscriber, tr *memTransport, cancel context.CancelFunc)
		want error
	}{
		{"transport fails", func(b *Bus, s *Subscriber, tr *memTransport, _ context.CancelFunc) {
			tr.mu.Lock()
			tr.fail = errTransport
			tr.mu.Unlock()
			mustPublish(t, b, priceTick("D", baseTS, 2, 1))
		}, errTransport},
		{"bus closes", func(b *Bus, _ *Subscriber, _ *memTransport, _ context.CancelFunc) {
			_ = b.Close(context.Background())
		}, protocol.DisconnectShutdown},
		{"subscriber closes", func(_ *Bus, s *Subscriber, _ *memTransport, _ context.CancelFunc) {
			s.Close(protocol.DisconnectPolicy)
		}, protocol.DisconnectPolicy},
		{"closed without reason", func(_ *Bus, s *Subscriber, _ *memTransport, _ context.CancelFunc) {
			s.Close(nil)
		}, ErrClientGone},
		{"context ends", func(_ *Bus, _ *Subscriber, _ *memTransport, cancel context.CancelFunc) { cancel() }, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newTestBus(t, BusConfig{Heartbeat: 5 * time.Millisecond})
			mustPublish(t, b, priceTick("D", baseTS, 1, 1))
			s := newTestSub(t, b)
			mustHandle(t, s, `{"op":"subscribe","topics":["D"],"throttle_ms":0}`)
			tr := &memTransport{}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- s.Deliver(ctx, tr) }()
			checkFor(t, 10*time.Second, time.Millisecond, func() error {
				tr.mu.Lock()
				defer tr.mu.Unlock()
				if tr.heartbeats < 2 || len(tr.msgs) < 2 {
					return fmt.Errorf("%d heartbeats, %d messages", tr.heartbeats, len(tr.msgs))
				}
				return nil
			})
			tt.end(b, s, tr, cancel)
			select {
			case err := <-done:
				if !errors.Is(err, tt.want) {
					t.Fatalf("Deliver = %v, want %v", err, tt.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Deliver did not return")
			}
		})
	}
}

func TestPublishRefused(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{MaxTopics: 2})
	mustPublish(t, b, priceTick("a", baseTS, 1, 1))
	mustPublish(t, b, priceTick("b", baseTS, 1, 1))
	tests := []struct {
		name string
		tick tick.Tick
		want error
	}{
		{"bad topic", priceTick("a b", baseTS, 1, 1), tick.ErrBadTopic},
		{"empty topic", priceTick("", baseTS, 1, 1), tick.ErrBadTopic},
		{"NaN", priceTick("a", baseTS, math.NaN(), 1), tick.ErrNonFinite},
		{"Inf", priceTick("a", baseTS, 1, math.Inf(-1)), tick.ErrNonFinite},
		{"negative ts", priceTick("a", -1, 1, 1), tick.ErrBadField},
		{"bad field name", tick.Tick{Topic: "a", Fields: []tick.Field{tick.F("seq", 1)}}, tick.ErrBadField},
		{"too many topics", priceTick("c", baseTS, 1, 1), ErrTooManyTopic},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := b.Publish("test", tt.tick); !errors.Is(err, tt.want) {
				t.Fatalf("Publish = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestPublishAfterClose(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{})
	mustPublish(t, b, priceTick("a", baseTS, 1, 1))
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish("test", priceTick("new", baseTS, 1, 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish of a new topic = %v, want ErrClosed", err)
	}
	if _, err := b.NewSubscriber("test"); !errors.Is(err, ErrClosed) {
		t.Fatalf("NewSubscriber = %v, want ErrClosed", err)
	}
	if err := b.Sink("f").Publish(priceTick("a", baseTS, 1, 1)); err != nil {
		t.Fatalf("Sink.Publish of a known topic after Close = %v", err)
	}
}

func TestSinkAndTopics(t *testing.T) {
	t.Parallel()
	var now atomic.Int64
	now.Store(time.Unix(1000, 0).UnixNano())
	b := newTestBus(t, BusConfig{Now: func() time.Time { return time.Unix(0, now.Load()) }})
	sink := b.Sink("feed1")
	for range 3 {
		if err := sink.Publish(tick.Tick{Topic: "k", Fields: []tick.Field{tick.F("price", 2)}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := sink.Publish(tick.Tick{Topic: "bad topic"}); err == nil {
		t.Fatal("Sink accepted a bad topic")
	}
	if got := testutil.ToFloat64(b.metrics.ticksIn.WithLabelValues("feed1")); got != 3 {
		t.Fatalf("ticks in %v, want 3", got)
	}
	if got := testutil.ToFloat64(b.metrics.ticksRefused.WithLabelValues("feed1")); got != 1 {
		t.Fatalf("ticks refused %v, want 1", got)
	}
	tests := []struct {
		at   int64
		rate int
	}{{1000, 3}, {1001, 3}, {1002, 0}}
	for _, tt := range tests {
		now.Store(time.Unix(tt.at, 0).UnixNano())
		ti := b.Topics()
		if len(ti) != 1 || ti[0].Topic != "k" || ti[0].Seq != 3 || ti[0].TS != 1_000_000 || ti[0].Rate != tt.rate || ti[0].Epoch != "e1" {
			t.Fatalf("at %d: Topics() = %+v, want k seq 3 ts 1000000 (stamped) rate %d", tt.at, ti, tt.rate)
		}
	}
}

func TestBusConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  BusConfig
		ok   bool
	}{
		{"zero", BusConfig{}, true},
		{"negative default throttle means 0", BusConfig{DefaultThrottle: -1}, true},
		{"negative history", BusConfig{HistoryDepth: -1}, false},
		{"negative candles", BusConfig{CandleDepth: -1}, false},
		{"tiny pending", BusConfig{MaxPendingBytes: 100}, false},
		{"default over max", BusConfig{DefaultThrottle: 2 * time.Minute}, false},
		{"negative lag", BusConfig{LagThrottle: -1}, false},
		{"bad epoch", BusConfig{Epoch: "a b"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b, err := NewBus(tt.cfg)
			if (err == nil) != tt.ok {
				t.Fatalf("NewBus = %v, want ok %v", err, tt.ok)
			}
			if err != nil {
				return
			}
			defer b.Close(context.Background())
			c := b.Config()
			if c.HistoryDepth != 1000 || c.CandleDepth != 500 || c.MaxPendingBytes != 1<<20 || c.Heartbeat != 15*time.Second ||
				c.LagThrottle != 2*time.Second || c.Now == nil || c.Logger == nil || b.Epoch() == "" || b.Metrics() == nil {
				t.Fatalf("defaults not filled in: %+v", c)
			}
			if tt.cfg.DefaultThrottle < 0 && c.DefaultThrottle != 0 {
				t.Fatalf("DefaultThrottle %v, want 0", c.DefaultThrottle)
			}
		})
	}
}

// TestExactAndPatternOverlap: a topic named exactly and also matched by
// a pattern stays subscribed until the client drops both.
func TestExactAndPatternOverlap(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		frames []string
	}{
		{"exact, pattern, drop pattern", []string{
			`{"op":"subscribe","topics":["o.a"],"throttle_ms":0}`,
			`{"op":"subscribe","topics":["o.*"],"throttle_ms":0}`,
			`{"op":"unsubscribe","topics":["o.*"]}`,
		}},
		{"pattern, exact, drop exact", []string{
			`{"op":"subscribe","topics":["o.*"],"throttle_ms":0}`,
			`{"op":"subscribe","topics":["o.a"],"throttle_ms":0}`,
			`{"op":"unsubscribe","topics":["o.a"]}`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newTestBus(t, BusConfig{})
			mustPublish(t, b, priceTick("o.a", baseTS, 1, 1))
			s := newTestSub(t, b)
			for _, f := range tt.frames {
				mustHandle(t, s, f)
			}
			drainAll(s)
			mustPublish(t, b, priceTick("o.a", baseTS, 2, 1))
			if ups := ofType(decodeAll(t, drainAll(s)), protocol.TypeUpdate); len(ups) != 1 {
				t.Fatalf("%d updates of o.a, want 1: it is still subscribed", len(ups))
			}
		})
	}
}
