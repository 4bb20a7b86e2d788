package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds/feedtest"
	"github.com/tickstream/tickstream/stream/app"
	"github.com/tickstream/tickstream/stream/client"
	"github.com/tickstream/tickstream/stream/cluster"
)

// Ticks published on node A and on node B at the same time are sequenced
// once for the cluster: a client on A and a client on B see the same
// stream, every seq once, with the same data, and both nodes' history is
// the same.
func TestNodesDeliverTheSameStream(t *testing.T) {
	url := startNATS(t)
	a := startNode(t, "a", url, "", quietFeeds)
	b := startNode(t, "b", url, "", quietFeeds)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var subs [2]*client.Conn
	for i, n := range []*node{a, b} {
		c, err := client.Dial(ctx, wsURL(n), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Subscribe(ctx, []string{"CL-SAME"}, 0, nil); err != nil {
			t.Fatal(err)
		}
		subs[i] = c
	}
	base := time.Now().Add(-time.Minute).UnixMilli()
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for k := range 10 { // 10 batches of 10 on each node, interleaved
		for j, n := range []*node{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				from := (k*2 + j) * 10
				errs <- n.publishErr("CL-SAME", from, from+10, base)
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var got [2][]event
	for i, c := range subs {
		evs, err := readWS(t, ctx, c, 0, 200)
		if err != nil {
			t.Fatal(err)
		}
		got[i] = evs
	}
	if !slices.Equal(got[0], got[1]) {
		t.Fatalf("node A delivered\n%v\nnode B\n%v", got[0], got[1])
	}
	seen := map[string]bool{}
	for _, e := range got[0] {
		if seen[e.Data] {
			t.Fatalf("tick %s delivered twice", e.Data)
		}
		seen[e.Data] = true
	}
	if len(seen) != 200 {
		t.Fatalf("%d distinct ticks, want 200", len(seen))
	}
	if ha, hb := a.get(t, "/api/history?topic=CL-SAME&limit=1000"), b.get(t, "/api/history?topic=CL-SAME&limit=1000"); ha != hb {
		t.Fatalf("history on A\n%s\non B\n%s", ha, hb)
	}
	for _, iv := range []string{"1s", "1m"} {
		if ca, cb := a.get(t, "/api/candles?topic=CL-SAME&interval="+iv), b.get(t, "/api/candles?topic=CL-SAME&interval="+iv); ca != cb {
			t.Fatalf("%s candles on A\n%s\non B\n%s", iv, ca, cb)
		}
	}
}

// publisher publishes one tick at a time of topic to n until stopped,
// and reports how many it published.
func publisher(t *testing.T, n *node, topic string, base int64) (stop func() int) {
	quit := make(chan struct{})
	done := make(chan int)
	go func() {
		i := 0
		for {
			select {
			case <-quit:
				done <- i
				return
			default:
			}
			if err := n.publishErr(topic, i, i+1, base); err != nil {
				t.Error(err)
				done <- i
				return
			}
			i++
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return func() int { close(quit); return <-done }
}

// A WebSocket client of node A, which stops mid-stream, resumes on node B
// with its cursor: nothing lost, nothing twice, no reset.
func TestWebSocketResumesOnAnotherNode(t *testing.T) {
	url := startNATS(t)
	a := startNode(t, "a", url, "", quietFeeds)
	b := startNode(t, "b", url, "", quietFeeds)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	c1, err := client.Dial(ctx, wsURL(a), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	if _, err := c1.Subscribe(ctx, []string{"CL-WS"}, 0, nil); err != nil {
		t.Fatal(err)
	}
	stopPub := publisher(t, b, "CL-WS", time.Now().Add(-time.Minute).UnixMilli())
	evs, err := readWS(t, ctx, c1, 0, 30)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.stop(); err != nil { // mid-stream: the publisher goes on
		t.Fatalf("stopping A: %v", err)
	}
	// What A sent before it went is the client's to keep.
	more, _ := readWS(t, ctx, c1, 30, 1<<62)
	evs = append(evs, more...)
	cur := c1.Cursors()
	last := evs[len(evs)-1]
	if cur["CL-WS"].Seq != last.Seq || cur["CL-WS"].Epoch != last.Epoch {
		t.Fatalf("cursor %+v, last update %+v", cur, last)
	}

	c2, err := client.Dial(ctx, wsURL(b), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Subscribe(ctx, []string{"CL-WS"}, 0, cur); err != nil {
		t.Fatal(err)
	}
	feedtest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if seq, _ := b.seqOf(t, "CL-WS"); seq < last.Seq+20 {
			return fmt.Errorf("seq %d: the stream has not moved on yet", seq)
		}
		return nil
	})
	total := uint64(stopPub())
	rest, err := readWS(t, ctx, c2, last.Seq, total)
	if err != nil {
		t.Fatal(err)
	}
	evs = append(evs, rest...)
	checkAgainstHistory(t, b, "CL-WS", evs, total)
}

// checkAgainstHistory checks that evs are seqs 1..total, each with the
// data and ts of that seq in the node's history.
func checkAgainstHistory(t *testing.T, n *node, topic string, evs []event, total uint64) {
	t.Helper()
	if uint64(len(evs)) != total {
		t.Fatalf("%d updates, want %d", len(evs), total)
	}
	for i, e := range evs {
		if e.Seq != uint64(i+1) {
			t.Fatalf("update %d has seq %d", i, e.Seq)
		}
		if e.Epoch != evs[0].Epoch {
			t.Fatalf("epoch %s at seq %d, %s at seq 1", e.Epoch, e.Seq, evs[0].Epoch)
		}
	}
	// Ticks were published with price 100+i: the i-th update carries it.
	for i, e := range evs {
		if want := fmt.Sprintf("price:%d ", 100+i); !strings.Contains(e.Data+" ", want) {
			t.Fatalf("seq %d carries %s, want %s", e.Seq, e.Data, want)
		}
	}
	_ = n
}

// An SSE client of node A resumes on node B with the inline cursor of its
// last event id: nothing lost, nothing twice, no reset.
func TestSSEResumesOnAnotherNode(t *testing.T) {
	url := startNATS(t)
	a := startNode(t, "a", url, "", quietFeeds)
	b := startNode(t, "b", url, "", quietFeeds)

	s1 := dialSSE(t, a, "topics=CL-SSE&throttle_ms=0", "")
	stopPub := publisher(t, b, "CL-SSE", time.Now().Add(-time.Minute).UnixMilli())
	evs, err := readSSE(t, s1, 0, 30)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.stop(); err != nil {
		t.Fatalf("stopping A: %v", err)
	}
	more, _ := readSSE(t, s1, 30, 1<<62)
	evs = append(evs, more...)
	last := evs[len(evs)-1]
	if s1.lastID == "" || strings.HasPrefix(s1.lastID, "@") {
		t.Fatalf("last event id %q: want an inline cursor", s1.lastID)
	}

	s2 := dialSSE(t, b, "topics=CL-SSE&throttle_ms=0", s1.lastID)
	feedtest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if seq, _ := b.seqOf(t, "CL-SSE"); seq < last.Seq+20 {
			return fmt.Errorf("seq %d: the stream has not moved on yet", seq)
		}
		return nil
	})
	total := uint64(stopPub())
	rest, err := readSSE(t, s2, last.Seq, total)
	if err != nil {
		t.Fatal(err)
	}
	evs = append(evs, rest...)
	checkAgainstHistory(t, b, "CL-SSE", evs, total)
}

// The node running a feed dies (its NATS connection is cut without a
// goodbye, so its lease is not released): within about the lease's TTL
// the feed runs on the other node, its ticks go on with the next seqs,
// and no seq is delivered twice.
func TestFeedMovesWhenItsNodeDies(t *testing.T) {
	url := startNATS(t)
	lk, viaLink := newLink(t, url)
	feed := "feeds:\n  - name: mover\n    type: sim\n    options: {symbols: [CL-MOVE], rate: 100}\n"
	a := startNode(t, "a", viaLink, "", feed, "--nats-lease-ms", "600")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	feedtest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if seq, _ := a.seqOf(t, "CL-MOVE"); seq < 10 {
			return fmt.Errorf("seq %d: the feed has not started on A", seq)
		}
		return nil
	})
	b := startNode(t, "b", url, "", feed, "--nats-lease-ms", "600")
	c, err := client.Dial(ctx, wsURL(b), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Subscribe(ctx, []string{"CL-MOVE"}, 0, nil); err != nil {
		t.Fatal(err)
	}
	m, err := c.Next(ctx)
	if err != nil || m.Type != "snapshot" {
		t.Fatalf("first message %+v %v: want the snapshot", m, err)
	}
	if !strings.Contains(b.get(t, "/api/feeds"), `"standby"`) {
		t.Fatalf("feeds on B: %s: want mover in standby (A runs it)", b.get(t, "/api/feeds"))
	}
	if _, err := readWS(t, ctx, c, m.Seq, m.Seq+20); err != nil {
		t.Fatal(err)
	}

	lk.Cut() // A dies as far as the cluster can tell
	killedAt, _ := b.seqOf(t, "CL-MOVE")
	// The feed goes on from B: the stream passes where it was by 200
	// more ticks, every seq once.
	if _, err := readWS(t, ctx, c, m.Seq+20, killedAt+200); err != nil {
		t.Fatalf("the feed did not move to B: %v", err)
	}
	if !strings.Contains(b.get(t, "/api/feeds"), `"running"`) {
		t.Fatalf("feeds on B: %s: want mover running", b.get(t, "/api/feeds"))
	}
	_ = a.stop() // its NATS is gone: how it stops does not matter here
}

// Every node stops, then every node starts again: the epoch, history and
// candles are as before, and a client resumes with its old cursor. In
// memory, all the new nodes have is the cluster's JetStream log; with a
// data directory, each also loads its own store and folds only the
// stream's newer ticks.
func TestRestartEveryNode(t *testing.T) {
	for _, withStore := range []bool{false, true} {
		t.Run(fmt.Sprintf("data_dir=%v", withStore), func(t *testing.T) { testRestartEveryNode(t, withStore) })
	}
}

func testRestartEveryNode(t *testing.T, withStore bool) {
	url := startNATS(t)
	dirA, dirB := "", ""
	if withStore {
		dirA, dirB = t.TempDir(), t.TempDir()
	}
	a := startNode(t, "a", url, dirA, quietFeeds)
	b := startNode(t, "b", url, dirB, quietFeeds)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	base := time.Now().Add(-time.Hour).UnixMilli()
	a.publish(t, "CL-RST", 0, 40, base)
	b.publish(t, "CL-RST", 40, 60, base)
	feedtest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if seq, _ := a.seqOf(t, "CL-RST"); seq != 60 { // acks come before the fold
			return fmt.Errorf("A at seq %d", seq)
		}
		return nil
	})

	c1, err := client.Dial(ctx, wsURL(a), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c1.Subscribe(ctx, []string{"CL-RST"}, 0, nil); err != nil {
		t.Fatal(err)
	}
	if m, err := c1.Next(ctx); err != nil || m.Seq != 60 {
		t.Fatalf("snapshot %+v %v: want seq 60", m, err)
	}
	cur := c1.Cursors()
	c1.Close()
	b.publish(t, "CL-RST", 60, 70, base) // the client misses these
	feedtest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		for _, n := range []*node{a, b} { // the acks come before the fold
			if seq, _ := n.seqOf(t, "CL-RST"); seq != 70 {
				return fmt.Errorf("%s at seq %d", n.name, seq)
			}
		}
		return nil
	})
	before := apiState(t, b, "CL-RST")
	for _, n := range []*node{a, b} {
		if err := n.stop(); err != nil {
			t.Fatalf("stopping %s: %v", n.name, err)
		}
	}

	a2 := startNode(t, "a2", url, dirA, quietFeeds)
	b2 := startNode(t, "b2", url, dirB, quietFeeds)
	for _, n := range []*node{a2, b2} {
		if after := apiState(t, n, "CL-RST"); !maps(before, after) {
			t.Fatalf("%s after the restart:\n%v\nbefore:\n%v", n.name, after, before)
		}
	}
	a2.publish(t, "CL-RST", 70, 80, base)
	c2, err := client.Dial(ctx, wsURL(b2), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Subscribe(ctx, []string{"CL-RST"}, 0, cur); err != nil {
		t.Fatal(err)
	}
	evs, err := readWS(t, ctx, c2, 60, 80)
	if err != nil {
		t.Fatal(err)
	}
	if evs[0].Epoch != cur["CL-RST"].Epoch {
		t.Fatalf("epoch %s after the restart, want %s", evs[0].Epoch, cur["CL-RST"].Epoch)
	}
}

func apiState(t *testing.T, n *node, topic string) map[string]string {
	out := map[string]string{"history": n.get(t, "/api/history?topic="+topic+"&limit=1000")}
	for _, iv := range []string{"1s", "1m", "5m", "1h"} {
		out[iv] = n.get(t, "/api/candles?topic="+topic+"&interval="+iv)
	}
	seq, epoch := n.seqOf(t, topic)
	out["seq"] = fmt.Sprint(epoch, seq)
	return out
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// Subject keeps every topic one token, one to one.
func TestSubject(t *testing.T) {
	for topic, want := range map[string]string{"BTC-USD": "BTC-USD", "crypto.btc": "crypto~btc", "a..b": "a~~b", "fx/EUR:USD_1": "fx/EUR:USD_1"} {
		if got := cluster.Subject(topic); got != want {
			t.Errorf("Subject(%q) = %q, want %q", topic, got, want)
		}
	}
}

// A NATS URL that cannot be reached stops start-up with an error naming
// the setting.
func TestUnreachableNATSNamesTheSetting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "nats://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	s, err := app.LoadSettings([]string{"--nats", dead, "--data-dir", ""}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	err = app.RunListener(context.Background(), s, srv, slog.New(slog.NewTextHandler(io.Discard, nil)))
	var se *app.SettingError
	if !errors.As(err, &se) || se.Setting != "nats" {
		t.Fatalf("RunListener: %v, want a SettingError naming nats", err)
	}
}

// An SSE stream of many topics uses reference ids (@stream.event); its
// node shares the stream's cursor log through NATS, so when the node stops
// the client resumes on another node with that id: every topic goes on
// from where it was, nothing lost, nothing twice, no reset.
func TestSSEReferenceCursorResumesOnAnotherNode(t *testing.T) {
	url := startNATS(t)
	a := startNode(t, "a", url, "", quietFeeds)
	b := startNode(t, "b", url, "", quietFeeds)
	const nTopics = 30
	var topics []string
	for i := range nTopics {
		topics = append(topics, fmt.Sprintf("CL-REF-TOPIC-%02d", i))
	}
	query := "topics=" + strings.Join(topics, ",") + "&throttle_ms=0"
	base := time.Now().Add(-time.Minute).UnixMilli()
	round := func(r int) {
		for _, tp := range topics {
			b.publish(t, tp, r, r+1, base)
		}
	}
	round(0)
	feedtest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if seq, _ := a.seqOf(t, topics[nTopics-1]); seq != 1 {
			return fmt.Errorf("A at seq %d", seq)
		}
		return nil
	})
	s1 := dialSSE(t, a, query, "")
	seen := map[string]uint64{}
	read := func(s *sseStream, until func() bool) error {
		for !until() {
			typ, data, err := s.next()
			if err != nil {
				return err
			}
			var m struct {
				Topic string
				Seq   uint64
				Agg   *struct{ N uint64 }
			}
			switch typ {
			case "snapshot":
				_ = json.Unmarshal(data, &m)
				if seen[m.Topic] != 0 {
					t.Fatalf("snapshot %s after seq %d", data, seen[m.Topic])
				}
				seen[m.Topic] = m.Seq
			case "update":
				_ = json.Unmarshal(data, &m)
				if m.Agg == nil || m.Seq != seen[m.Topic]+m.Agg.N {
					t.Fatalf("update %s after seq %d: a gap or a duplicate", data, seen[m.Topic])
				}
				seen[m.Topic] = m.Seq
			case "reset", "error":
				t.Fatalf("got %s %s", typ, data)
			}
		}
		return nil
	}
	allAt := func(seq uint64) func() bool {
		return func() bool {
			for _, tp := range topics {
				if seen[tp] < seq {
					return false
				}
			}
			return true
		}
	}
	if err := read(s1, allAt(1)); err != nil {
		t.Fatal(err)
	}
	for r := 1; r < 4; r++ {
		round(r)
	}
	if err := read(s1, allAt(4)); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(s1.lastID, "@") {
		t.Fatalf("last event id %q: want a reference (the inline cursor of %d topics is too long)", s1.lastID, nTopics)
	}
	if err := a.stop(); err != nil {
		t.Fatalf("stopping A: %v", err)
	}
	_ = read(s1, func() bool { return false }) // what A wrote before it went
	for r := 4; r < 6; r++ {
		round(r)
	}
	s2 := dialSSE(t, b, query, s1.lastID)
	if err := read(s2, allAt(6)); err != nil {
		t.Fatal(err)
	}
}
