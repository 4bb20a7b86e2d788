package stream

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tickstream/tickstream/stream/protocol"
)

// testClock is a clock tests move by hand.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestEvictIdleTopics: topics with no tick and no subscriber for
// TopicIdleEvict are dropped (their feed's quota comes back); a
// subscribed topic and a pending interest stay; an evicted topic that
// comes back continues its seq.
func TestEvictIdleTopics(t *testing.T) {
	t.Parallel()
	clk := &testClock{now: time.Unix(1_700_000_000, 0)}
	b := newTestBus(t, BusConfig{Now: clk.Now, TopicIdleEvict: time.Hour, MaxTopicsPerFeed: 3})
	mustPublish(t, b, priceTick("keep", baseTS, 1, 1))
	mustPublish(t, b, priceTick("idle", baseTS, 1, 1))
	mustPublish(t, b, priceTick("idle", baseTS, 2, 1))
	if _, err := b.Publish("test", priceTick("third", baseTS, 1, 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish("test", priceTick("fourth", baseTS, 1, 1)); !errors.Is(err, ErrTopicQuota) {
		t.Fatalf("fourth topic of one feed: %v, want ErrTopicQuota", err)
	}
	s := newTestSub(t, b)
	mustHandle(t, s, `{"op":"subscribe","topics":["keep","later"],"throttle_ms":0}`)
	drainAll(s)

	if n := b.EvictIdle(); n != 0 {
		t.Fatalf("evicted %d fresh topics", n)
	}
	clk.add(2 * time.Hour)
	if n := b.EvictIdle(); n != 2 {
		t.Fatalf("evicted %d topics, want idle and third", n)
	}
	if b.HasTopic("idle") || b.HasTopic("third") || !b.HasTopic("keep") {
		t.Fatalf("after eviction: idle %v third %v keep %v", b.HasTopic("idle"), b.HasTopic("third"), b.HasTopic("keep"))
	}
	if got := len(b.Topics()); got != 1 {
		t.Fatalf("%d topics listed, want 1", got)
	}
	// The feed's quota came back; the evicted topic continues its seq.
	if seq := mustPublish(t, b, priceTick("idle", baseTS+1, 3, 1)); seq != 3 {
		t.Fatalf("seq of the returning topic %d, want 3", seq)
	}
	mustPublish(t, b, priceTick("fourth", baseTS, 1, 1))
	// The pending interest survived.
	if _, err := b.Publish("other", priceTick("later", baseTS, 1, 1)); err != nil {
		t.Fatal(err) // another feed has its own quota
	}
	var got []string
	for _, m := range decodeAll(t, drainAll(s)) {
		if m.Type == protocol.TypeUpdate {
			got = append(got, m.Topic)
		}
	}
	if len(got) != 1 || got[0] != "later" {
		t.Fatalf("updates %v, want one of later", got)
	}
}

// TestJoinRevivesEvictedTopic: a topic evicted between a subscribe's scan
// and its join is brought back, and its ticks reach the subscriber.
func TestJoinRevivesEvictedTopic(t *testing.T) {
	t.Parallel()
	clk := &testClock{now: time.Unix(1_700_000_000, 0)}
	b := newTestBus(t, BusConfig{Now: clk.Now, TopicIdleEvict: time.Hour})
	mustPublish(t, b, priceTick("p.1", baseTS, 1, 1))
	mustPublish(t, b, priceTick("q", baseTS, 1, 1))
	clk.add(2 * time.Hour)
	b.testHookScanned = func(*Subscriber) {
		if n := b.EvictIdle(); n != 2 {
			t.Errorf("evicted %d topics in the hook, want 2", n)
		}
	}
	s := newTestSub(t, b)
	mustHandle(t, s, `{"op":"subscribe","topics":["p.*"],"throttle_ms":0}`)
	s.pumpJoins()
	if !b.HasTopic("p.1") || b.HasTopic("q") {
		t.Fatalf("p.1 live %v (want revived), q live %v (want evicted)", b.HasTopic("p.1"), b.HasTopic("q"))
	}
	if seq := mustPublish(t, b, priceTick("p.1", baseTS+1, 2, 1)); seq != 2 {
		t.Fatalf("seq %d after revival, want 2", seq)
	}
	var types []string
	for _, m := range decodeAll(t, drainAll(s)) {
		if m.Topic == "p.1" {
			types = append(types, m.Type)
		}
	}
	if len(types) != 2 || types[0] != protocol.TypeSnapshot || types[1] != protocol.TypeUpdate {
		t.Fatalf("p.1 messages %v, want snapshot then update", types)
	}
}
