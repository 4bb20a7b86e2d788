package server_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/protocol"
	"github.com/tickstream/tickstream/stream/server"
)

// fieldMap is a tick's fields as the wire's data object.
func fieldMap(fs []feeds.Field) map[string]tick.Num {
	m := make(map[string]tick.Num, len(fs))
	for _, f := range fs {
		m[f.Name] = f.Value
	}
	return m
}

func equalData(a, b map[string]tick.Num) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !w.Equal(v) {
			return false
		}
	}
	return true
}

func TestWSSubscribeOrderAndEveryTick(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(bc *stream.BusConfig, _ *server.Config) { bc.Heartbeat = 3 * time.Second })
	e.publish("T", 1000, f("price", 1), f("size", 2))

	c, w := e.welcomeWS(t, wsOpts{})
	if w.Session == "" || w.HeartbeatMS != 3000 {
		t.Errorf("welcome %s: want a session and heartbeat_ms 3000", w)
	}
	if d := time.Since(time.UnixMilli(w.ServerTime)); d < -time.Minute || d > time.Minute {
		t.Errorf("welcome server_time %d is %v from now", w.ServerTime, d)
	}

	c.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"T"}, ThrottleMS: ms(0)})
	ack := c.expect(protocol.TypeAck)
	if string(ack.ID) != "1" || !slices.Equal(ack.Topics, []string{"T"}) {
		t.Fatalf("ack %s: want id 1 and topics [T]", ack)
	}
	snap := c.expect(protocol.TypeSnapshot)
	if snap.Topic != "T" || snap.Epoch != e.bus.Epoch() || snap.Seq != 1 || snap.TS != 1000 ||
		!equalData(snap.Data, map[string]tick.Num{"price": tick.NumInt(1), "size": tick.NumInt(2)}) {
		t.Fatalf("snapshot %s: want T, epoch %s, seq 1, ts 1000, price 1, size 2", snap, e.bus.Epoch())
	}

	const n = 300
	ticks := make([]feeds.Tick, n)
	for i := range ticks {
		tk := feeds.Tick{Topic: "T", TS: 2000 + int64(i)}
		tk.Set("price", 100+float64(i)/4)
		tk.Set("size", float64(i%7+1))
		if i%3 == 0 {
			tk.Set("bid", 99+float64(i)/4)
		}
		ticks[i] = tk
		if _, err := e.bus.Publish("test", tk); err != nil {
			t.Fatal(err)
		}
	}
	for i, tk := range ticks {
		u := c.expect(protocol.TypeUpdate)
		price, _ := tk.GetNum("price")
		size, _ := tk.GetNum("size")
		a := u.Agg
		if u.Topic != "T" || u.Epoch != e.bus.Epoch() || u.Seq != uint64(i+2) || u.TS != tk.TS ||
			!equalData(u.Data, fieldMap(tk.Fields)) || a == nil || a.N != 1 ||
			*a.O != price || *a.H != price || *a.L != price || *a.C != price || a.V != size {
			t.Fatalf("update %d: %s\nwant seq %d, ts %d, data %v, agg n 1, ohlc %v, v %v", i, u, i+2, tk.TS, fieldMap(tk.Fields), price, size)
		}
	}
	c.quiet(100 * time.Millisecond)
}

// TestWSCoalescingExact publishes random ticks under a throttle and checks
// every window's agg against the ticks it covers.
func TestWSCoalescingExact(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	e.publish("C", 1, f("price", 50), f("size", 1))
	c, _ := e.welcomeWS(t, wsOpts{})
	c.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"C"}, ThrottleMS: ms(20)})
	c.expect(protocol.TypeAck)
	snap := c.expect(protocol.TypeSnapshot)

	const n = 3000
	rng := rand.New(rand.NewPCG(1, 2))
	price := map[uint64]tick.Num{}
	size := map[uint64]tick.Num{}
	var last uint64
	for i := range n {
		p := math.Round((50+rng.NormFloat64()*5)*100) / 100
		s := math.Round(rng.Float64()*1000) / 100
		last = e.publish("C", int64(10+i), f("price", p), f("size", s))
		price[last], size[last] = f("", p).Value, f("", s).Value
		if i%30 == 29 {
			time.Sleep(2 * time.Millisecond) // spread the ticks over many windows
		}
	}

	var updates []msg
	prev := snap.Seq
	deadline := time.Now().Add(10 * time.Second)
	for prev < last {
		u := c.next(time.Until(deadline))
		if u.Type != protocol.TypeUpdate {
			t.Fatalf("got %s, want updates only", u)
		}
		if u.Seq <= prev {
			t.Fatalf("update seq %d after %d", u.Seq, prev)
		}
		// The window covers seqs (prev, u.Seq].
		var want protocol.WireAgg
		var hi, lo, open, cl tick.Num
		for s := prev + 1; s <= u.Seq; s++ {
			p := price[s]
			if s == prev+1 {
				open, hi, lo = p, p, p
			}
			if p.Cmp(hi) > 0 {
				hi = p
			}
			if p.Cmp(lo) < 0 {
				lo = p
			}
			cl = p
			want.N++
			want.V = want.V.Add(size[s])
		}
		a := u.Agg
		if a.N != want.N || *a.O != open || *a.H != hi || *a.L != lo || *a.C != cl || !a.V.Equal(want.V) {
			t.Fatalf("window (%d, %d]: got %s\nwant n %d o %v h %v l %v c %v v %v", prev, u.Seq, u, want.N, open, hi, lo, cl, want.V)
		}
		if u.Data["price"] != cl || u.Data["size"] != size[u.Seq] {
			t.Fatalf("update %s: data is not the window's last tick (price %v, size %v)", u, cl, size[u.Seq])
		}
		prev = u.Seq
		updates = append(updates, u)
	}

	// Over all windows: n, volume and the extremes add up.
	var sumN int64
	var sumV, wantV tick.Num
	hi, lo := math.Inf(-1), math.Inf(1)
	for _, u := range updates {
		sumN += u.Agg.N
		sumV = sumV.Add(u.Agg.V)
		hi, lo = max(hi, (*u.Agg.H).Float()), min(lo, (*u.Agg.L).Float())
	}
	wantHi, wantLo := math.Inf(-1), math.Inf(1)
	for s, p := range price {
		wantHi, wantLo = max(wantHi, p.Float()), min(wantLo, p.Float())
		wantV = wantV.Add(size[s])
	}
	if sumN != n || hi != wantHi || lo != wantLo || !sumV.Equal(wantV) {
		t.Errorf("sum n %d (want %d), high %v (want %v), low %v (want %v), volume %v (want %v)", sumN, n, hi, wantHi, lo, wantLo, sumV, wantV)
	}
	if lastU := updates[len(updates)-1]; lastU.Seq != last || *lastU.Agg.C != price[last] {
		t.Errorf("last update %s: want seq %d and c %v", lastU, last, price[last])
	}
	if len(updates) < 3 || len(updates) == n {
		t.Errorf("%d updates for %d ticks: want several windows, coalesced", len(updates), n)
	}
	c.quiet(100 * time.Millisecond)
}

func TestWSResumeMidStream(t *testing.T) {
	t.Parallel()
	for _, throttle := range []int{0, 30} {
		t.Run(fmt.Sprintf("throttle_ms=%d", throttle), func(t *testing.T) {
			t.Parallel()
			e := startServer(t, nil)
			e.publish("R", 1, f("price", 1))
			tr := newSeqTracker()

			c1, _ := e.welcomeWS(t, wsOpts{})
			c1.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"R"}, ThrottleMS: ms(throttle)})
			c1.expect(protocol.TypeAck)
			tr.start("R", c1.expect(protocol.TypeSnapshot).Seq)

			const total = 400
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range total {
					if _, err := e.bus.Publish("test", feeds.Tick{Topic: "R", TS: int64(2 + i), Fields: []feeds.Field{f("price", float64(i))}}); err != nil {
						t.Error(err)
						return
					}
					if i%10 == 9 {
						time.Sleep(time.Millisecond)
					}
				}
			}()
			for tr.last["R"] < 60 {
				u := c1.expect(protocol.TypeUpdate)
				tr.update(t, u)
				if throttle == 0 && u.Agg.N != 1 {
					t.Fatalf("throttle 0 update with n %d: %s", u.Agg.N, u)
				}
			}
			cursor := tr.last["R"]
			c1.close()
			wg.Wait()
			final := uint64(total + 1)

			c2, _ := e.welcomeWS(t, wsOpts{})
			c2.send(subscribeMsg{Op: "subscribe", ID: 2, Topics: []string{"R"}, ThrottleMS: ms(throttle),
				Resume: map[string]protocol.Cursor{"R": {Epoch: e.bus.Epoch(), Seq: cursor}}})
			c2.expect(protocol.TypeAck)
			for tr.last["R"] < final+5 {
				u := c2.expect(protocol.TypeUpdate) // no snapshot, no reset: a replay
				tr.update(t, u)
				if throttle == 0 && u.Agg.N != 1 {
					t.Fatalf("throttle 0 update with n %d: %s", u.Agg.N, u)
				}
				if u.Seq == final {
					for i := range 5 { // then live
						e.publish("R", int64(1000+i), f("price", 7))
					}
				}
			}
			if tr.last["R"] != final+5 {
				t.Fatalf("ended at seq %d, want %d", tr.last["R"], final+5)
			}
			c2.quiet(100 * time.Millisecond)
		})
	}
}

func TestWSResumeCursors(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(bc *stream.BusConfig, _ *server.Config) { bc.HistoryDepth = 5 })
	for i := range 20 {
		e.publish("H", int64(100+i), f("price", float64(i)))
	}
	epoch := e.bus.Epoch()
	tests := []struct {
		name    string
		cursor  protocol.Cursor
		reset   string   // "" means no reset
		updates []uint64 // replayed seqs, when not reset
	}{
		{"wrong epoch", protocol.Cursor{Epoch: "other", Seq: 18}, protocol.ResetEpoch, nil},
		{"older than history", protocol.Cursor{Epoch: epoch, Seq: 2}, protocol.ResetHistoryGap, nil},
		{"just older than history", protocol.Cursor{Epoch: epoch, Seq: 14}, protocol.ResetHistoryGap, nil},
		{"ahead of the topic", protocol.Cursor{Epoch: epoch, Seq: 99}, protocol.ResetBadCursor, nil},
		{"oldest kept", protocol.Cursor{Epoch: epoch, Seq: 15}, "", []uint64{16, 17, 18, 19, 20}},
		{"in history", protocol.Cursor{Epoch: epoch, Seq: 18}, "", []uint64{19, 20}},
		{"up to date", protocol.Cursor{Epoch: epoch, Seq: 20}, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, _ := e.welcomeWS(t, wsOpts{})
			c.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"H"}, ThrottleMS: ms(0),
				Resume: map[string]protocol.Cursor{"H": tt.cursor}})
			c.expect(protocol.TypeAck)
			if tt.reset != "" {
				r := c.expect(protocol.TypeReset)
				if r.Topic != "H" || r.Reason != tt.reset {
					t.Fatalf("reset %s: want topic H, reason %s", r, tt.reset)
				}
				s := c.expect(protocol.TypeSnapshot)
				if s.Seq != 20 || s.Epoch != epoch || s.Data["price"].Float() != 19 {
					t.Fatalf("snapshot %s: want seq 20, price 19", s)
				}
			}
			for _, seq := range tt.updates {
				u := c.expect(protocol.TypeUpdate)
				if u.Seq != seq || u.Agg.N != 1 || u.Data["price"].Float() != float64(seq-1) || u.TS != int64(100+seq-1) {
					t.Fatalf("replayed %s: want seq %d, price %d", u, seq, seq-1)
				}
			}
			c.quiet(100 * time.Millisecond)
		})
	}
}

func TestWSPatternSubscription(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	e.publish("X.a", 1, f("price", 1))
	e.publish("Y.a", 1, f("price", 1))
	c, _ := e.welcomeWS(t, wsOpts{})
	c.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"X.*"}, ThrottleMS: ms(0)})
	if ack := c.expect(protocol.TypeAck); !slices.Equal(ack.Topics, []string{"X.*"}) {
		t.Fatalf("ack %s: want topics [X.*]", ack)
	}
	if s := c.expect(protocol.TypeSnapshot); s.Topic != "X.a" || s.Seq != 1 {
		t.Fatalf("snapshot %s: want X.a seq 1", s)
	}
	e.publish("X.b", 2, f("price", 2)) // created after the subscribe
	e.publish("Y.b", 2, f("price", 2)) // does not match
	e.publish("Xb", 2, f("price", 2))  // does not match either: the prefix is "X."
	e.publish("X.a", 3, f("price", 3))
	// Topics are flushed independently (order is per topic), so the two
	// updates may come in either order.
	want := map[string]struct {
		seq   uint64
		price float64
	}{"X.b": {1, 2}, "X.a": {2, 3}}
	for range 2 {
		u := c.expect(protocol.TypeUpdate)
		w, ok := want[u.Topic]
		if !ok || u.Seq != w.seq || u.Data["price"].Float() != w.price {
			t.Fatalf("got %s, want one update of each of X.a (seq 2, price 3) and X.b (seq 1, price 2)", u)
		}
		delete(want, u.Topic)
	}
	c.quiet(100 * time.Millisecond)

	c.send(map[string]any{"op": "unsubscribe", "id": 2, "topics": []string{"X.*"}})
	c.expect(protocol.TypeAck)
	e.publish("X.c", 4, f("price", 4))
	e.publish("X.a", 4, f("price", 4))
	c.quiet(100 * time.Millisecond)
}

func TestWSBadInput(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(bc *stream.BusConfig, sc *server.Config) {
		bc.MaxTopicsPerSubscriber = 3
		sc.MaxFrameBytes = 1024
	})
	e.publish("T", 1, f("price", 1))
	c, _ := e.welcomeWS(t, wsOpts{})
	big := `{"op":"ping","id":1,"pad":"` + strings.Repeat("x", 2000) + `"}`
	tests := []struct {
		name  string
		frame string
		code  string
		id    string
	}{
		{"not JSON", `hello`, protocol.CodeBadJSON, ""},
		{"JSON but not an object", `[1,2]`, protocol.CodeBadJSON, ""},
		{"unknown op", `{"op":"dance","id":2}`, protocol.CodeUnknownOp, "2"},
		{"missing op", `{"id":"x"}`, protocol.CodeUnknownOp, `"x"`},
		{"bad topic", `{"op":"subscribe","id":4,"topics":["bad topic!"]}`, protocol.CodeBadTopic, "4"},
		{"too many topics", `{"op":"subscribe","id":5,"topics":["a","b","c","d"]}`, protocol.CodeTooManyTopics, "5"},
		{"bad throttle", `{"op":"subscribe","id":6,"topics":["T"],"throttle_ms":-1}`, protocol.CodeBadThrottle, "6"},
		{"frame too large", big, protocol.CodeFrameTooLarge, ""},
	}
	for _, tt := range tests { // in order, on one connection
		c.send([]byte(tt.frame))
		m := c.expect(protocol.TypeError)
		if m.Code != tt.code || string(m.ID) != tt.id || m.Message == "" {
			t.Errorf("%s: got %s, want code %q, id %q and a message", tt.name, m, tt.code, tt.id)
		}
		// The connection stays up.
		c.send([]byte(`{"op":"ping","id":99}`))
		if p := c.expect(protocol.TypePong); string(p.ID) != "99" {
			t.Errorf("%s: pong %s: want id 99", tt.name, p)
		}
	}

	// The connection still works.
	c.send(subscribeMsg{Op: "subscribe", ID: 10, Topics: []string{"T"}, ThrottleMS: ms(0)})
	c.expect(protocol.TypeAck)
	c.expect(protocol.TypeSnapshot)

	// A client that keeps misbehaving is closed with 1008; others go on.
	spam := e.dialWS(t, wsOpts{})
	for range 3 * stream.MaxProtocolErrors {
		if err := spam.conn.Write(t.Context(), websocket.MessageText, []byte("garbage")); err != nil {
			break // already closed
		}
	}
	ce := spam.closeStatus(5 * time.Second)
	if ce.Code != websocket.StatusPolicyViolation || ce.Reason == "" {
		t.Errorf("spammer closed with %v, want 1008 with a reason", ce)
	}
	e.publish("T", 2, f("price", 2))
	if u := c.expect(protocol.TypeUpdate); u.Seq != 2 {
		t.Errorf("update %s: want seq 2", u)
	}
	c.send([]byte(`{"op":"ping","id":100}`))
	c.expect(protocol.TypePong)
}

func TestWSHeartbeat(t *testing.T) {
	t.Parallel()
	const hb = 200 * time.Millisecond
	e := startServer(t, func(bc *stream.BusConfig, _ *server.Config) { bc.Heartbeat = hb })

	t.Run("pings and answering client stays", func(t *testing.T) {
		t.Parallel()
		c, _ := e.welcomeWS(t, wsOpts{})
		checkFor(t, 30*time.Second, 20*time.Millisecond, func() error {
			if n := c.pings.get(); n < 5 {
				return fmt.Errorf("%d pings so far", n)
			}
			return nil
		})
		// Five pings took over 2 heartbeats: the pongs kept it up.
		c.send([]byte(`{"op":"ping","id":1}`))
		c.expect(protocol.TypePong)
	})

	t.Run("silent client without pongs is dropped", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		c, _ := e.welcomeWS(t, wsOpts{noPong: true})
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
			t.Fatal("a client that answers no ping was not dropped")
		}
		if took := time.Since(start); took < 2*hb-50*time.Millisecond {
			t.Errorf("dropped after %v, before 2 heartbeats (%v)", took, 2*hb)
		}
		if c.pings.get() < 1 {
			t.Errorf("dropped before any ping")
		}
	})

	t.Run("raw client that never reads is dropped", func(t *testing.T) {
		t.Parallel()
		conn := rawWSHandshake(t, e.addr)
		defer conn.Close()
		start := time.Now()
		// Reading sends nothing: the pings go unanswered. The server must
		// close the socket (EOF) after about 2 heartbeats.
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 4096)
		for {
			if _, err := conn.Read(buf); err != nil {
				if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
					t.Fatalf("still open after %v", time.Since(start))
				}
				break
			}
		}
		if took := time.Since(start); took < 2*hb-50*time.Millisecond {
			t.Errorf("dropped after %v, before 2 heartbeats (%v)", took, 2*hb)
		}
	})
}

// TestWSNoDuplicates subscribes to one topic several ways at once: each
// tick must still arrive once.
func TestWSNoDuplicates(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	e.publish("D.a", 1, f("price", 1))
	e.publish("D.b", 1, f("price", 1))
	c, _ := e.welcomeWS(t, wsOpts{})
	c.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"D.a", "D.b"}, ThrottleMS: ms(0)})
	if ack := c.expect(protocol.TypeAck); !slices.Equal(ack.Topics, []string{"D.a", "D.b"}) {
		t.Fatalf("ack %s", ack)
	}
	c.expect(protocol.TypeSnapshot)
	c.expect(protocol.TypeSnapshot)
	c.send(subscribeMsg{Op: "subscribe", ID: 2, Topics: []string{"D.a"}, ThrottleMS: ms(0)}) // again
	c.expect(protocol.TypeAck)
	c.expect(protocol.TypeSnapshot)
	c.send(subscribeMsg{Op: "subscribe", ID: 3, Topics: []string{"D.*"}, ThrottleMS: ms(0)}) // and by pattern
	c.expect(protocol.TypeAck)
	c.expect(protocol.TypeSnapshot)
	c.expect(protocol.TypeSnapshot)
	tr := newSeqTracker()
	tr.start("D.a", 1)
	tr.start("D.b", 1)
	for i := range 50 {
		e.publish("D.a", int64(2+i), f("price", float64(i)))
		e.publish("D.b", int64(2+i), f("price", float64(i)))
	}
	for range 100 {
		tr.update(t, c.expect(protocol.TypeUpdate))
	}
	c.quiet(100 * time.Millisecond)

	// Published over HTTP, delivered over WebSocket.
	status, raw := e.post("/api/publish", "application/x-ndjson", []byte(`{"topic":"D.a","ts":99,"price":42}`), nil)
	if status != 200 {
		t.Fatalf("publish: %d %s", status, raw)
	}
	if u := c.expect(protocol.TypeUpdate); u.Topic != "D.a" || u.Seq != 52 || u.Data["price"].Float() != 42 {
		t.Fatalf("update %s: want D.a seq 52 price 42", u)
	}
}

func TestWSDisabled(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(_ *stream.BusConfig, sc *server.Config) { sc.DisableWebSocket = true })
	_, resp, err := websocket.Dial(t.Context(), "ws://"+e.addr+"/ws", &websocket.DialOptions{HTTPClient: e.http})
	if err == nil || resp == nil || resp.StatusCode != 403 {
		t.Fatalf("dial: %v, %v: want 403", err, resp)
	}
	// SSE still works.
	c := e.openSSE(t, "/sse", nil)
	c.next(5 * time.Second)
	c.expect(protocol.TypeWelcome)
}

// equalF is equalData for data decoded as float64s.
func equalF(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
