package server_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/protocol"
	"github.com/tickstream/tickstream/stream/server"
)

// TestWSSubscribeBeforeFirstTick: a dashboard that reconnects before its
// feed has produced keeps its subscription: the topic is acknowledged, no
// snapshot comes, and its first tick arrives as an update at the
// subscription's throttle. The pending subscription counts against the
// per-connection limit, is not a topic, and is released on unsubscribe.
func TestWSSubscribeBeforeFirstTick(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(bc *stream.BusConfig, _ *server.Config) { bc.MaxTopicsPerSubscriber = 3 })
	c, _ := e.welcomeWS(t, wsOpts{})

	c.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"NEW.a", "NEW.b"}, ThrottleMS: ms(0)})
	if ack := c.expect(protocol.TypeAck); !slices.Equal(ack.Topics, []string{"NEW.a", "NEW.b"}) {
		t.Fatalf("ack %s: want topics [NEW.a NEW.b]", ack)
	}
	c.quiet(100 * time.Millisecond) // no snapshot, no error
	if n := len(e.bus.Topics()); n != 0 {
		t.Fatalf("subscribing created %d topics, want none", n)
	}

	// The pending names count: two more are refused.
	c.send(subscribeMsg{Op: "subscribe", ID: 2, Topics: []string{"NEW.c", "NEW.d"}, ThrottleMS: ms(0)})
	if m := c.expect(protocol.TypeError); m.Code != protocol.CodeTooManyTopics || string(m.ID) != "2" {
		t.Fatalf("got %s, want too_many_topics for id 2", m)
	}

	e.publish("NEW.a", 100, f("price", 1), f("size", 2))
	u := c.expect(protocol.TypeUpdate)
	if u.Topic != "NEW.a" || u.Seq != 1 || u.Data["price"].Float() != 1 || u.Agg == nil || u.Agg.N != 1 {
		t.Fatalf("got %s, want the first update of NEW.a at seq 1", u)
	}
	e.publish("NEW.a", 101, f("price", 2))
	if u := c.expect(protocol.TypeUpdate); u.Topic != "NEW.a" || u.Seq != 2 {
		t.Fatalf("got %s, want NEW.a seq 2", u)
	}

	// Unsubscribing a name that has no tick yet releases it.
	c.send(map[string]any{"op": "unsubscribe", "id": 3, "topics": []string{"NEW.b"}})
	c.expect(protocol.TypeAck)
	e.publish("NEW.b", 100, f("price", 1))
	c.quiet(100 * time.Millisecond)

	// A throttled subscription gets the first ticks folded into one update.
	c.send(subscribeMsg{Op: "subscribe", ID: 4, Topics: []string{"NEW.t"}, ThrottleMS: ms(300)})
	c.expect(protocol.TypeAck)
	e.publish("NEW.t", 100, f("price", 5), f("size", 1))
	e.publish("NEW.t", 101, f("price", 7), f("size", 1))
	e.publish("NEW.t", 102, f("price", 6), f("size", 1))
	var seen int64
	for seen < 3 {
		u := c.expect(protocol.TypeUpdate)
		if u.Topic != "NEW.t" || u.Agg == nil || u.Seq != uint64(seen+u.Agg.N) {
			t.Fatalf("got %s after %d ticks, want updates of NEW.t", u, seen)
		}
		seen += u.Agg.N
	}
	c.quiet(100 * time.Millisecond)
}

// TestWSResumeBeforeFirstTick: a resume cursor for a topic that has no
// tick yet cannot be honoured: the client is told at once (reset
// epoch_change for another epoch, bad_cursor for a seq this epoch never
// had) and gets the first tick as an update. A cursor at seq 0 of the
// current epoch loses nothing and gets no reset.
func TestWSResumeBeforeFirstTick(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	epoch := e.bus.Epoch()
	c, _ := e.welcomeWS(t, wsOpts{})
	c.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"R.old", "R.ahead", "R.zero"}, ThrottleMS: ms(0),
		Resume: map[string]protocol.Cursor{
			"R.old":   {Epoch: "gone", Seq: 42},
			"R.ahead": {Epoch: epoch, Seq: 7},
			"R.zero":  {Epoch: epoch, Seq: 0},
		}})
	c.expect(protocol.TypeAck)
	resets := map[string]string{}
	for range 2 {
		r := c.expect(protocol.TypeReset)
		resets[r.Topic] = r.Reason
	}
	if resets["R.old"] != protocol.ResetEpoch || resets["R.ahead"] != protocol.ResetBadCursor {
		t.Fatalf("resets %v: want R.old epoch_change, R.ahead bad_cursor", resets)
	}
	c.quiet(100 * time.Millisecond)
	for _, topic := range []string{"R.old", "R.ahead", "R.zero"} {
		e.publish(topic, 100, f("price", 1))
		if u := c.expect(protocol.TypeUpdate); u.Topic != topic || u.Seq != 1 {
			t.Fatalf("got %s, want the first update of %s", u, topic)
		}
	}

	// A pattern's cursors of topics that do not exist yet are answered
	// the same way.
	c.send(subscribeMsg{Op: "subscribe", ID: 2, Topics: []string{"P.*"}, ThrottleMS: ms(0),
		Resume: map[string]protocol.Cursor{"P.x": {Epoch: "gone", Seq: 3}}})
	c.expect(protocol.TypeAck)
	if r := c.expect(protocol.TypeReset); r.Topic != "P.x" || r.Reason != protocol.ResetEpoch {
		t.Fatalf("got %s, want reset epoch_change of P.x", r)
	}
	e.publish("P.x", 100, f("price", 1))
	if u := c.expect(protocol.TypeUpdate); u.Topic != "P.x" || u.Seq != 1 {
		t.Fatalf("got %s, want the first update of P.x", u)
	}
}

// TestSSESubscribeBeforeFirstTick: the same over SSE, where the topics
// come in the URL.
func TestSSESubscribeBeforeFirstTick(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	c := e.openSSE(t, "/sse?topics=S.new&throttle_ms=0", nil)
	c.expect(protocol.TypeWelcome)
	if _, ack := c.expect(protocol.TypeAck); !slices.Equal(ack.Topics, []string{"S.new"}) {
		t.Fatalf("ack %s: want [S.new]", ack)
	}
	e.publish("S.new", 100, f("price", 3))
	if _, u := c.expect(protocol.TypeUpdate); u.Topic != "S.new" || u.Seq != 1 || u.Data["price"].Float() != 3 {
		t.Fatalf("got %s, want the first update of S.new", u)
	}
}

// TestWSPatternCountsExpansion: a pattern counts as one plus every topic
// it delivers. A pattern whose expansion would pass the limit is refused;
// one that reaches the limit later stops expanding and says so once.
func TestWSPatternCountsExpansion(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(bc *stream.BusConfig, _ *server.Config) { bc.MaxTopicsPerSubscriber = 4 })
	for _, name := range []string{"X.a", "X.b", "X.c", "X.d"} {
		e.publish(name, 1, f("price", 1))
	}
	c, _ := e.welcomeWS(t, wsOpts{})
	c.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"X.*"}, ThrottleMS: ms(0)})
	if m := c.expect(protocol.TypeError); m.Code != protocol.CodeTooManyTopics || string(m.ID) != "1" {
		t.Fatalf("got %s, want too_many_topics: X.* is 1 + 4 topics", m)
	}
	c.quiet(100 * time.Millisecond)
	e.publish("X.a", 2, f("price", 2))
	c.quiet(100 * time.Millisecond) // nothing was subscribed

	c.send(subscribeMsg{Op: "subscribe", ID: 2, Topics: []string{"*"}, ThrottleMS: ms(0)})
	if m := c.expect(protocol.TypeError); m.Code != protocol.CodeTooManyTopics {
		t.Fatalf("got %s, want too_many_topics for *", m)
	}

	e.publish("Y.a", 1, f("price", 1))
	c.send(subscribeMsg{Op: "subscribe", ID: 3, Topics: []string{"Y.*", "X.a"}, ThrottleMS: ms(0)})
	c.expect(protocol.TypeAck)
	for range 2 {
		c.expect(protocol.TypeSnapshot)
	}
	// Held: Y.*, Y.a, X.a = 3 of 4. One more Y topic fits; the next does
	// not: one error, then silence.
	e.publish("Y.b", 1, f("price", 1))
	if u := c.expect(protocol.TypeUpdate); u.Topic != "Y.b" {
		t.Fatalf("got %s, want the first update of Y.b", u)
	}
	e.publish("Y.c", 1, f("price", 1))
	m := c.expect(protocol.TypeError)
	if m.Code != protocol.CodeTooManyTopics || len(m.ID) != 0 || !strings.Contains(m.Message, "Y.*") {
		t.Fatalf("got %s, want too_many_topics without id naming Y.*", m)
	}
	e.publish("Y.d", 1, f("price", 1))
	e.publish("Y.c", 2, f("price", 2))
	c.quiet(100 * time.Millisecond)

	// Subscribing to the pattern again counts what it would deliver now
	// (Y.a to Y.d); refused, it changes nothing.
	c.send(map[string]any{"op": "unsubscribe", "id": 4, "topics": []string{"X.a"}})
	c.expect(protocol.TypeAck)
	c.send(subscribeMsg{Op: "subscribe", ID: 5, Topics: []string{"Y.*"}, ThrottleMS: ms(0)})
	if m := c.expect(protocol.TypeError); m.Code != protocol.CodeTooManyTopics || string(m.ID) != "5" {
		t.Fatalf("got %s, want too_many_topics: Y.* is now 1 + 4 topics", m)
	}
	e.publish("Y.a", 2, f("price", 2))
	if u := c.expect(protocol.TypeUpdate); u.Topic != "Y.a" || u.Seq != 2 {
		t.Fatalf("got %s, want update of Y.a seq 2", u)
	}
	e.publish("X.a", 3, f("price", 3))
	c.quiet(100 * time.Millisecond)
}

// bulkyTick is a tick of about 2 KB on the wire: 32 fields with long
// names.
func bulkyTick(topic string, i int) feeds.Tick {
	tk := feeds.Tick{Topic: topic, TS: int64(1_000_000 + i)}
	for j := range 32 {
		tk.Set(fmt.Sprintf("field_%02d_%s", j, strings.Repeat("n", 40)), float64(i)+float64(j)/1000)
	}
	return tk
}

// TestWSPatternSnapshotsPaced: the snapshots of a pattern over thousands
// of topics (here 10 MB) are paced like any other backlog: a client with
// the default max_pending_bytes gets every one and stays connected.
func TestWSPatternSnapshotsPaced(t *testing.T) {
	t.Parallel()
	const topics = 5000
	e := startServer(t, func(bc *stream.BusConfig, _ *server.Config) {
		bc.MaxTopicsPerSubscriber = topics + 1
		bc.MaxPendingBytes = 0 // the default, 1 MiB
	})
	for i := range topics {
		if _, err := e.bus.Publish("test", bulkyTick(fmt.Sprintf("big.%04d", i), i)); err != nil {
			t.Fatal(err)
		}
	}
	c, _ := e.welcomeWS(t, wsOpts{})
	c.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"*"}, ThrottleMS: ms(0)})
	c.expect(protocol.TypeAck)
	got := make(map[string]bool, topics)
	deadline := time.Now().Add(60 * time.Second)
	for len(got) < topics {
		m := c.next(time.Until(deadline))
		if m.Type != protocol.TypeSnapshot || got[m.Topic] || len(m.Data) != 32 {
			t.Fatalf("after %d snapshots got %.200s, want a new snapshot", len(got), m.raw)
		}
		got[m.Topic] = true
	}
	// Still connected and subscribed to everything.
	e.publish("big.0042", 2_000_000, f("price", 1))
	if u := c.expect(protocol.TypeUpdate); u.Topic != "big.0042" || u.Seq != 2 {
		t.Fatalf("got %s, want update of big.0042 seq 2", u)
	}
	c.send([]byte(`{"op":"ping","id":9}`))
	c.expect(protocol.TypePong)
}
