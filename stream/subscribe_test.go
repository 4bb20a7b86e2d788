package stream

import (
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream/protocol"
)

// within fails the test unless done is closed within a generous deadline:
// it guards against a deadlock, it does not measure time.
func within(t testing.TB, what string, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Fatalf("%s did not finish: it waits for a join; goroutines:\n%s", what, buf)
	}
}

func goDo(fn func()) <-chan struct{} {
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	return done
}

// TestPublishProceedsDuringPatternJoin: the joins a new topic's first
// tick waits for (pattern subscribers) hold no bus-wide lock: while one
// is in progress (blocked here by a test hook), ticks of other topics,
// new topics and other subscribes go on.
func TestPublishProceedsDuringPatternJoin(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{})
	mustPublish(t, b, priceTick("q.x", baseTS, 1, 1))
	s := newTestSub(t, b)
	mustHandle(t, s, `{"op":"subscribe","topics":["p.*"],"throttle_ms":0}`)
	other := newTestSub(t, b)

	entered, release := make(chan struct{}), make(chan struct{})
	var once, unblock sync.Once
	releaseAll := func() { unblock.Do(func() { close(release) }) }
	t.Cleanup(releaseAll) // before the bus closes, also on failure
	b.testHookJoin = func(topic string, sub *Subscriber) {
		if topic == "p.new" && sub == s {
			once.Do(func() { close(entered) })
			<-release
		}
	}
	created := goDo(func() { mustPublish(t, b, priceTick("p.new", baseTS, 7, 1)) })
	within(t, "the join of p.new", entered)

	within(t, "a publish of another topic", goDo(func() { mustPublish(t, b, priceTick("q.x", baseTS, 2, 1)) }))
	within(t, "a publish of a new topic", goDo(func() { mustPublish(t, b, priceTick("q.new", baseTS, 2, 1)) }))
	within(t, "another subscribe", goDo(func() { mustHandle(t, other, `{"op":"subscribe","topics":["q.*"],"throttle_ms":0}`) }))
	within(t, "a read of the bus", goDo(func() { b.Subscribers() }))
	select {
	case <-created:
		t.Fatal("the first tick of p.new was published before its pattern subscriber joined")
	default:
	}

	releaseAll()
	within(t, "the first publish of p.new", created)
	var got []string
	for _, w := range decodeAll(t, drainAll(s)) {
		got = append(got, fmt.Sprintf("%s %s %d", w.Type, w.Topic, w.Seq))
	}
	if want := []string{"ack  0", "update p.new 1"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// TestPublishProceedsDuringPatternSubscribe: a pattern subscribe joins
// the existing topics without a bus-wide lock: while one join is blocked,
// topics are published and created, and a topic created meanwhile is
// delivered exactly once.
func TestPublishProceedsDuringPatternSubscribe(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{})
	mustPublish(t, b, priceTick("p.a", baseTS, 1, 1))
	mustPublish(t, b, priceTick("p.b", baseTS, 1, 1))
	s := newTestSub(t, b)
	entered, release := make(chan struct{}), make(chan struct{})
	var once, unblock sync.Once
	releaseAll := func() { unblock.Do(func() { close(release) }) }
	t.Cleanup(releaseAll) // before the bus closes, also on failure
	b.testHookJoin = func(topic string, sub *Subscriber) {
		if topic == "p.b" && sub == s {
			once.Do(func() { close(entered) })
			<-release
		}
	}
	subscribed := goDo(func() { mustHandle(t, s, `{"op":"subscribe","topics":["p.*"],"throttle_ms":0}`) })
	within(t, "the join of p.b", entered)
	within(t, "a publish of a subscribed topic", goDo(func() { mustPublish(t, b, priceTick("p.a", baseTS, 2, 1)) }))
	within(t, "a publish of a new topic", goDo(func() { mustPublish(t, b, priceTick("p.c", baseTS, 1, 1)) }))
	releaseAll()
	within(t, "the subscribe", subscribed)
	mustPublish(t, b, priceTick("p.c", baseTS, 2, 1))

	starts := map[string]int{}
	last := map[string]uint64{}
	for _, w := range decodeAll(t, drainAll(s)) {
		if w.Type == protocol.TypeSnapshot || w.Type == protocol.TypeUpdate && w.Seq == 1 {
			starts[w.Topic]++
		}
		if w.Topic != "" {
			last[w.Topic] = w.Seq
		}
	}
	for name, seq := range map[string]uint64{"p.a": 2, "p.b": 1, "p.c": 2} {
		if starts[name] != 1 || last[name] != seq {
			t.Errorf("%s: %d snapshots or first updates, last seq %d; want 1 and %d", name, starts[name], last[name], seq)
		}
	}
}

// TestPatternSubscribeRacesTopicCreation: topics created while a pattern
// subscribe is in progress are each joined exactly once: by the
// subscribe (snapshot) or by their creation (first update), never both,
// never neither. Run with -race.
func TestPatternSubscribeRacesTopicCreation(t *testing.T) {
	t.Parallel()
	const rounds, topics = 100, 24
	for r := range rounds {
		b := newTestBus(t, BusConfig{})
		log := newTickLog()
		s := newTestSub(t, b)
		name := func(i int) string { return fmt.Sprintf("r.%02d", i) }
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := range topics {
				log.publish(t, b, priceTick(name(i), baseTS, float64(i), 1))
				if i%4 == r%4 {
					runtime.Gosched()
				}
			}
		}()
		go func() {
			defer wg.Done()
			for range r % 8 {
				runtime.Gosched()
			}
			mustHandle(t, s, `{"op":"subscribe","topics":["r.*"],"throttle_ms":0}`)
		}()
		wg.Wait()
		for i := range topics {
			log.publish(t, b, priceTick(name(i), baseTS+1, float64(i)+0.5, 1))
		}
		ws := decodeAll(t, drainAll(s))
		newSeqChecker(log).checkAll(t, ws)
		starts := map[string]int{}
		last := map[string]uint64{}
		for _, w := range ws {
			if w.Type == protocol.TypeSnapshot || w.Type == protocol.TypeUpdate && w.Seq == 1 {
				starts[w.Topic]++
			}
			if w.Topic != "" {
				last[w.Topic] = w.Seq
			}
		}
		for i := range topics {
			if n := name(i); starts[n] != 1 || last[n] != 2 {
				t.Fatalf("round %d: %s joined %d times, last seq %d; want once, up to seq 2", r, n, starts[n], last[n])
			}
		}
		s.Close(nil)
		checkNoGroups(t, b)
	}
}

// bulky is a tick of about 2 KB encoded.
func bulky(topic string, i int) tick.Tick {
	tk := tick.Tick{Topic: topic, TS: baseTS + int64(i)}
	for j := range 32 {
		tk.Fields = append(tk.Fields, tick.F(fmt.Sprintf("f%02d_%s", j, strings.Repeat("n", 48)), float64(i)+float64(j)))
	}
	return tk
}

// TestPatternSnapshotsPaced: a pattern over far more snapshot bytes than
// the queue bound queues them as the transport takes them: a stuck
// transport holds the queue under the bound, and once it writes, every
// snapshot arrives and the subscriber stays open.
func TestPatternSnapshotsPaced(t *testing.T) {
	t.Parallel()
	const topics, maxPending = 1000, 64 << 10 // 2 MB of snapshots, 32× the bound
	b := newTestBus(t, BusConfig{MaxPendingBytes: maxPending, MaxTopicsPerSubscriber: topics + 1})
	for i := range topics {
		mustPublish(t, b, bulky(fmt.Sprintf("z.%04d", i), i))
	}
	s := newTestSub(t, b)
	tr := &memTransport{}
	unblock := tr.block()
	deliver(t, s, tr)
	mustHandle(t, s, `{"op":"subscribe","id":1,"topics":["z.*"],"throttle_ms":0}`)
	if p := s.PendingBytes(); p > maxPending {
		t.Fatalf("%d bytes queued at once, over the bound %d", p, maxPending)
	}
	unblock()
	checkFor(t, 30*time.Second, 5*time.Millisecond, func() error {
		if err := s.Err(); err != nil {
			return fmt.Errorf("closed: %v", err)
		}
		if n := len(ofType(decodeAll(t, tr.messages()), protocol.TypeSnapshot)); n < topics {
			return fmt.Errorf("%d snapshots so far", n)
		}
		return nil
	})
	seen := map[string]bool{}
	for _, w := range ofType(decodeAll(t, tr.messages()), protocol.TypeSnapshot) {
		if seen[w.Topic] {
			t.Fatalf("second snapshot of %s", w.Topic)
		}
		seen[w.Topic] = true
	}
	if s.Err() != nil || s.Lagging() {
		t.Fatalf("Err() = %v, Lagging() = %v; want open and not stepped down", s.Err(), s.Lagging())
	}
}

// TestPendingInterest: names with no tick yet are not topics (they do not
// count against MaxTopics) and unsubscribe and Close forget them.
func TestPendingInterest(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{MaxTopics: 1, MaxTopicsPerSubscriber: 4})
	s := newTestSub(t, b)
	res := mustHandle(t, s, `{"op":"subscribe","topics":["n.1","n.2","n.3"],"throttle_ms":0}`)
	if len(res.Topics) != 3 || len(res.Errors) != 0 {
		t.Fatalf("Result %+v: want the 3 names acknowledged", res)
	}
	if n := len(b.Topics()); n != 0 {
		t.Fatalf("%d topics, want none", n)
	}
	other := newTestSub(t, b)
	mustHandle(t, other, `{"op":"subscribe","topics":["n.2"],"throttle_ms":0}`)
	mustHandle(t, s, `{"op":"unsubscribe","topics":["n.1"]}`)
	b.mu.RLock()
	pendingNames := len(b.pending)
	b.mu.RUnlock()
	if pendingNames != 2 {
		t.Fatalf("%d names pending, want 2 (n.2 and n.3)", pendingNames)
	}
	mustPublish(t, b, priceTick("n.2", baseTS, 1, 1)) // the one topic allowed
	for _, sub := range []*Subscriber{s, other} {
		ups := ofType(decodeAll(t, drainAll(sub)), protocol.TypeUpdate)
		if len(ups) != 1 || ups[0].Topic != "n.2" || ups[0].Seq != 1 {
			t.Fatalf("updates %+v, want the first of n.2", ups)
		}
	}
	s.Close(nil)
	other.Close(nil)
	checkNoGroups(t, b)
}

// TestWaitingJoinsCancelled: joins still waiting for room are dropped by
// an unsubscribe, replaced by a later subscribe of the same topic, and
// dropped by Close.
func TestWaitingJoinsCancelled(t *testing.T) {
	t.Parallel()
	const topics, maxPending = 200, 16 << 10 // 400 KB of snapshots
	b := newTestBus(t, BusConfig{MaxPendingBytes: maxPending, MaxTopicsPerSubscriber: topics + 1})
	for i := range topics {
		mustPublish(t, b, bulky(fmt.Sprintf("w.%03d", i), i))
	}
	s := newTestSub(t, b) // nothing drains it: the joins wait
	mustHandle(t, s, `{"op":"subscribe","topics":["w.*"],"throttle_ms":0}`)
	s.subMu.Lock()
	waiting := len(s.subs.waiting)
	s.subMu.Unlock()
	if waiting == 0 || waiting == topics {
		t.Fatalf("%d of %d joins waiting, want some made and some waiting", waiting, topics)
	}
	// Named, a waiting topic stays when the pattern goes.
	mustHandle(t, s, `{"op":"subscribe","topics":["w.199"],"throttle_ms":0}`)
	mustHandle(t, s, `{"op":"unsubscribe","topics":["w.*"]}`)
	s.subMu.Lock()
	waiting = len(s.subs.waiting)
	members := len(s.members)
	s.subMu.Unlock()
	if waiting != 1 || members != 0 {
		t.Fatalf("%d joins waiting and %d memberships after unsubscribe, want only w.199 waiting", waiting, members)
	}
	drainAll(s)
	s.pumpJoins()
	ws := decodeAll(t, drainAll(s))
	if len(ws) != 1 || ws[0].Type != protocol.TypeSnapshot || ws[0].Topic != "w.199" {
		t.Fatalf("got %+v, want the snapshot of w.199", ws)
	}
	mustPublish(t, b, bulky("w.199", 1000))
	mustPublish(t, b, bulky("w.000", 1000))
	if ups := ofType(decodeAll(t, drainAll(s)), protocol.TypeUpdate); len(ups) != 1 || ups[0].Topic != "w.199" {
		t.Fatalf("updates %+v, want one of w.199", ups)
	}

	mustHandle(t, s, `{"op":"subscribe","topics":["w.*"],"throttle_ms":0}`)
	s.Close(nil)
	s.pumpJoins()
	checkNoGroups(t, b)
}

// TestTopicCreatedBetweenScanAndRegistration: a topic created after a
// pattern subscribe has scanned the topics but before the pattern is
// registered (no creation joins it) is joined by the subscribe, once.
func TestTopicCreatedBetweenScanAndRegistration(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{})
	mustPublish(t, b, priceTick("g.a", baseTS, 1, 1))
	s := newTestSub(t, b)
	b.testHookScanned = func(sub *Subscriber) {
		if sub == s {
			mustPublish(t, b, priceTick("g.between", baseTS, 1, 1)) // the bus lock is free
		}
	}
	mustHandle(t, s, `{"op":"subscribe","topics":["g.*"],"throttle_ms":0}`)
	mustPublish(t, b, priceTick("g.after", baseTS, 1, 1))
	mustPublish(t, b, priceTick("g.between", baseTS, 2, 1))
	var got, ups []string
	for _, w := range decodeAll(t, drainAll(s)) {
		if w.Type == protocol.TypeUpdate {
			ups = append(ups, fmt.Sprintf("%s %s %d", w.Type, w.Topic, w.Seq))
			continue
		}
		got = append(got, fmt.Sprintf("%s %s %d", w.Type, w.Topic, w.Seq))
	}
	// Order is per topic: two topics' updates may come either way round.
	sort.Strings(ups)
	got = append(got, ups...)
	want := []string{"ack  0", "snapshot g.a 1", "snapshot g.between 1", "update g.after 1", "update g.between 2"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// TestPendingTopicCreatedAfterAck: a named topic with no tick yet whose
// first tick comes after the subscribe's ack went out but before the name
// is registered (a client may publish as soon as it reads the ack) still
// arrives as an update, not as a snapshot: the client asked for it before
// its first tick.
func TestPendingTopicCreatedAfterAck(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{})
	s := newTestSub(t, b)
	b.testHookAcked = func(sub *Subscriber) {
		if sub == s {
			mustPublish(t, b, priceTick("late", baseTS, 1, 1))
		}
	}
	mustHandle(t, s, `{"op":"subscribe","topics":["late"],"throttle_ms":0}`)
	mustPublish(t, b, priceTick("late", baseTS, 2, 1))
	var got []string
	for _, w := range decodeAll(t, drainAll(s)) {
		got = append(got, fmt.Sprintf("%s %s %d", w.Type, w.Topic, w.Seq))
	}
	want := []string{"ack  0", "update late 1", "update late 2"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("got %q, want %q", got, want)
	}
}
