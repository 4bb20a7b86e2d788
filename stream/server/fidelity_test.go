package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/feedtest"
	"github.com/tickstream/tickstream/feeds/replay"
	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/client"
	"github.com/tickstream/tickstream/stream/protocol"
	"github.com/tickstream/tickstream/stream/server"
)

const binanceCSV = "../../testdata/ticks/binance_spot_trades_btcusdt_ethusdt_2024-08-08_head2000.csv"

// rawTrade is one row of the Binance file, its numbers as the file's text.
type rawTrade struct {
	ts          int64
	price, size string
}

// binanceRaw reads the file per topic, in file order (= seq order).
func binanceRaw(t *testing.T) map[string][]rawTrade {
	names := map[string]string{"BTCUSDT": "BTC-USD", "ETHUSDT": "ETH-USD"}
	out := map[string][]rawTrade{}
	for _, l := range feedtest.Lines(t, binanceCSV)[1:] {
		r := strings.Split(l, ",")
		var ts int64
		fmt.Sscan(r[0], &ts)
		out[names[r[1]]] = append(out[names[r[1]]], rawTrade{ts: ts, price: r[3], size: r[4]})
	}
	return out
}

func rat(t *testing.T, s string) *big.Rat {
	t.Helper()
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		t.Fatalf("not a decimal: %q", s)
	}
	return r
}

// offlineBar is a bar computed with math/big from the raw text.
type offlineBar struct {
	o, h, l, c string
	v          *big.Rat
	n          int
}

func (b *offlineBar) fold(t *testing.T, tr rawTrade) {
	if b.n == 0 {
		b.o, b.h, b.l, b.v = tr.price, tr.price, tr.price, new(big.Rat)
	}
	p := rat(t, tr.price)
	if p.Cmp(rat(t, b.h)) > 0 {
		b.h = tr.price
	}
	if p.Cmp(rat(t, b.l)) < 0 {
		b.l = tr.price
	}
	b.c = tr.price
	b.v.Add(b.v, rat(t, tr.size))
	b.n++
}

// startReplay runs the replay feed of the Binance file into e's bus.
func startReplay(t *testing.T, e *env, opts string) {
	t.Helper()
	reg := &feeds.Registry{}
	reg.Register("replay", replay.New)
	var node yaml.Node
	if err := yaml.Unmarshal([]byte(opts), &node); err != nil {
		t.Fatal(err)
	}
	s, err := feeds.NewSupervisor(feeds.SupervisorConfig{
		Registry: reg, Feeds: []feeds.Config{{Name: "binance", Type: "replay", Options: *node.Content[0]}},
		Sink:       func(name string) feeds.Sink { return e.bus.Sink(name) },
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, HealthyAfter: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Error(err)
		}
	})
}

// rawUpdate is an update with its agg's numbers as the wire's text.
type rawUpdate struct {
	Topic string `json:"topic"`
	Seq   uint64 `json:"seq"`
	Agg   struct {
		N int64           `json:"n"`
		O json.RawMessage `json:"o"`
		H json.RawMessage `json:"h"`
		L json.RawMessage `json:"l"`
		C json.RawMessage `json:"c"`
		V json.RawMessage `json:"v"`
	} `json:"agg"`
}

// TestReplayExactDecimals replays recorded Binance trades (prices and
// sizes as 8-decimal strings) through the server and checks, digit for
// digit against math/big sums of the file's text, every update's agg at
// several throttles and every 1s and 1m candle of /api/candles.
func TestReplayExactDecimals(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil) // no ts limits: the file is from 2024
	raw := binanceRaw(t)
	throttles := []int{0, 20, 250}
	clients := make([]*wsClient, len(throttles))
	for i, th := range throttles {
		c, _ := e.welcomeWS(t, wsOpts{})
		c.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"BTC-USD", "ETH-USD"}, ThrottleMS: ms(th)})
		c.expect(protocol.TypeAck)
		clients[i] = c
	}
	startReplay(t, e, `{file: "`+binanceCSV+`", topic_column: symbol, ts_column: trade_time_ms, ts_unit: ms, speed: 40, fields: {price: price, size: qty}, rename: {BTCUSDT: BTC-USD, ETHUSDT: ETH-USD}}`)

	for i, c := range clients {
		last := map[string]uint64{}
		updates := 0
		deadline := time.Now().Add(30 * time.Second)
		for last["BTC-USD"] < uint64(len(raw["BTC-USD"])) || last["ETH-USD"] < uint64(len(raw["ETH-USD"])) {
			m := c.next(time.Until(deadline))
			if m.Type != protocol.TypeUpdate {
				t.Fatalf("throttle %d: got %s, want updates", throttles[i], m)
			}
			var u rawUpdate
			if err := json.Unmarshal([]byte(m.raw), &u); err != nil {
				t.Fatal(err)
			}
			var want offlineBar
			for s := last[u.Topic] + 1; s <= u.Seq; s++ {
				want.fold(t, raw[u.Topic][s-1])
			}
			got := fmt.Sprintf("n=%d o=%s h=%s l=%s c=%s v=%s", u.Agg.N, u.Agg.O, u.Agg.H, u.Agg.L, u.Agg.C, u.Agg.V)
			exp := fmt.Sprintf("n=%d o=%s h=%s l=%s c=%s v=%s", want.n, want.o, want.h, want.l, want.c, want.v.FloatString(8))
			if got != exp {
				t.Fatalf("throttle %d: %s (%d, %d]:\n got %s\nwant %s", throttles[i], u.Topic, last[u.Topic], u.Seq, got, exp)
			}
			last[u.Topic] = u.Seq
			updates++
		}
		t.Logf("throttle %d: %d updates, exact", throttles[i], updates)
	}

	for _, iv := range []struct {
		name string
		ms   int64
	}{{"1s", 1000}, {"1m", 60_000}} {
		for topic, trades := range raw {
			var want []offlineBar
			var starts []int64
			for _, tr := range trades {
				t0 := tr.ts - tr.ts%iv.ms
				if n := len(starts); n == 0 || starts[n-1] != t0 {
					starts = append(starts, t0)
					want = append(want, offlineBar{})
				}
				want[len(want)-1].fold(t, tr)
			}
			var got []map[string]json.RawMessage
			e.doT(t, "GET", "/api/candles?topic="+topic+"&interval="+iv.name+"&limit=1000", "", nil, &got)
			if len(got) != len(want) {
				t.Fatalf("%s %s: %d candles, want %d", topic, iv.name, len(got), len(want))
			}
			for k, g := range got {
				w := want[k]
				exp := fmt.Sprintf("t=%d n=%d o=%s h=%s l=%s c=%s v=%s", starts[k], w.n, w.o, w.h, w.l, w.c, w.v.FloatString(8))
				gs := fmt.Sprintf("t=%s n=%s o=%s h=%s l=%s c=%s v=%s", g["t"], g["n"], g["o"], g["h"], g["l"], g["c"], g["v"])
				if gs != exp {
					t.Fatalf("%s %s candle %d:\n got %s\nwant %s", topic, iv.name, k, gs, exp)
				}
			}
		}
	}
	// The whole file's volume, e.g. ETH's 2261.3149 (float64 sums gave
	// 2261.3148999999617).
	var body bytes.Buffer
	for topic, trades := range raw {
		sum := new(big.Rat)
		for _, tr := range trades {
			sum.Add(sum, rat(t, tr.size))
		}
		fmt.Fprintf(&body, "%s %s ", topic, sum.FloatString(8))
	}
	t.Log("file volumes:", body.String())
}

// TestCandlesFromUpdatesLaggingTS publishes ticks whose ts lags the
// server's clock by about 80 ms (jittered, so some go back across a
// second boundary) over several seconds, and checks that clients at
// throttle 250 ms and 2 s, folding only their updates with client.Bars,
// have exactly the 1s and 1m bars of /api/candles.
func TestCandlesFromUpdatesLaggingTS(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	throttles := []int{250, 2000}
	clients := make([]*wsClient, len(throttles))
	for i, th := range throttles {
		c, _ := e.welcomeWS(t, wsOpts{})
		c.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"LAG"}, ThrottleMS: ms(th)})
		c.expect(protocol.TypeAck)
		clients[i] = c
	}
	rng := rand.New(rand.NewPCG(80, 80))
	var last uint64
	end := time.Now().Add(4500 * time.Millisecond)
	price := 1000.0
	for i := 0; time.Now().Before(end); i++ {
		price += float64(rng.IntN(21)-10) / 100
		ts := time.Now().Add(-80*time.Millisecond - time.Duration(rng.IntN(40))*time.Millisecond).UnixMilli()
		tk := feeds.Tick{Topic: "LAG", TS: ts}
		tk.SetNum("price", tick.MustNum(strconv.FormatFloat(price, 'f', 2, 64)))
		tk.SetNum("size", tick.MustNum(fmt.Sprintf("0.%05d", 1+rng.IntN(99999))))
		if i%7 == 3 {
			tk.Fields = tk.Fields[:1:1] // a trade without size
		}
		if i%11 == 5 {
			tk.Fields = []feeds.Field{f("bid", price-0.01)} // a quote: no price
		}
		seq, err := e.bus.Publish("test", tk)
		if err != nil {
			t.Fatal(err)
		}
		last = seq
		time.Sleep(time.Duration(2+rng.IntN(6)) * time.Millisecond)
	}

	var want = map[string][]stream.Candle{}
	for _, iv := range []string{"1s", "1m"} {
		var bars []stream.Candle
		e.doT(t, "GET", "/api/candles?topic=LAG&interval="+iv+"&limit=1000", "", nil, &bars)
		want[iv] = bars
	}
	if len(want["1s"]) < 4 {
		t.Fatalf("only %d 1s bars", len(want["1s"]))
	}
	for i, c := range clients {
		bars := map[string]*client.Bars{"1s": client.NewBars(1000, nil), "1m": client.NewBars(60_000, nil)}
		parts := 0
		deadline := time.Now().Add(20 * time.Second)
		for seq := uint64(0); seq < last; {
			m := c.next(time.Until(deadline))
			if m.Type != protocol.TypeUpdate {
				t.Fatalf("throttle %d: got %s, want updates", throttles[i], m)
			}
			for _, b := range bars {
				b.Fold(m.WireMessage)
			}
			if len(m.Agg.B) > 0 {
				parts++
			}
			seq = m.Seq
		}
		for iv, b := range bars {
			got := b.Last(1000)
			if len(got) != len(want[iv]) {
				t.Fatalf("throttle %d %s: %d bars from updates, %d from /api/candles", throttles[i], iv, len(got), len(want[iv]))
			}
			for k, g := range got {
				w := want[iv][k]
				if g != (client.Bar{T: w.T, O: w.O, H: w.H, L: w.L, C: w.C, V: w.V, N: w.N}) {
					t.Fatalf("throttle %d %s bar %d:\n got %+v\nwant %+v", throttles[i], iv, k, g, w)
				}
			}
		}
		if parts == 0 {
			t.Errorf("throttle %d: no update carried agg.b", throttles[i])
		}
		t.Logf("throttle %d: %d 1s bars exact, %d updates with parts", throttles[i], len(want["1s"]), parts)
	}
}

// TestTimestampPolicy publishes over HTTP: a tick an hour in the future
// and one two days old are refused with a reason (not accepted into a
// bar that freezes the candles, nor silently dropped from them); a tick
// within the allowed skew does not stop later ticks from getting their
// own bars; a late tick folds into its older bar; a fractional ms is
// truncated, never rounded into the next bar. With ts_policy stamp the
// same ticks are accepted at the accept time.
func TestTimestampPolicy(t *testing.T) {
	t.Parallel()
	for _, policy := range []stream.TSPolicy{stream.TSRefuse, stream.TSStamp} {
		t.Run(string(policy), func(t *testing.T) {
			t.Parallel()
			e := startServer(t, func(bc *stream.BusConfig, _ *server.Config) {
				bc.MaxFutureSkew, bc.MaxTickAge, bc.TSPolicy = 5*time.Second, 24*time.Hour, policy
			})
			now := time.Now().UnixMilli()
			sec := now - now%1000 - 10_000 // a whole second, 10 s ago
			lines := []string{
				fmt.Sprintf(`{"topic":"TS","ts":%d,"price":"1.00","size":"1"}`, sec),
				fmt.Sprintf(`{"topic":"TS","ts":%d,"price":"9.00","size":"1"}`, now+3_600_000), // far future
				fmt.Sprintf(`{"topic":"TS","ts":%d,"price":"2.00","size":"1"}`, sec+3_000),
				fmt.Sprintf(`{"topic":"TS","ts":%d,"price":"7.00","size":"1"}`, now-2*86_400_000), // too old
				fmt.Sprintf(`{"topic":"TS","ts":%d,"price":"3.00","size":"1"}`, sec+1_000),        // late, own bar
				fmt.Sprintf(`{"topic":"TS","ts":"%d.9996","price":"4.00","size":"1"}`, sec+1_999), // truncated
				fmt.Sprintf(`{"topic":"TS","ts":%d,"price":"0.50","size":"1"}`, sec+10),           // late, into bar sec
				fmt.Sprintf(`{"topic":"TS","ts":%d,"price":"5.00","size":"1"}`, sec+4_000),
			}
			var out struct {
				Accepted int `json:"accepted"`
				Refused  []struct {
					Line  int    `json:"line"`
					Error string `json:"error"`
				} `json:"refused"`
			}
			status, raw := e.post("/api/publish", "application/x-ndjson", []byte(strings.Join(lines, "\n")), &out)
			if status != 200 {
				t.Fatalf("publish: %d %s", status, raw)
			}
			type bar struct {
				T          int64
				O, H, L, C string
				N          int64
			}
			var want []bar
			if policy == stream.TSRefuse {
				if out.Accepted != 6 || len(out.Refused) != 2 || out.Refused[0].Line != 2 || out.Refused[1].Line != 4 ||
					!strings.Contains(out.Refused[0].Error, "in the future") || !strings.Contains(out.Refused[1].Error, "old") {
					t.Fatalf("publish answered %s: want lines 2 and 4 refused with their reasons", raw)
				}
				want = []bar{{sec, "1.00", "1.00", "0.50", "1.00", 2}, {sec + 1000, "3.00", "4.00", "3.00", "3.00", 2},
					{sec + 3000, "2.00", "2.00", "2.00", "2.00", 1}, {sec + 4000, "5.00", "5.00", "5.00", "5.00", 1}}
			} else if out.Accepted != 8 || len(out.Refused) != 0 {
				t.Fatalf("publish answered %s: want all 8 accepted", raw)
			}
			var bars []map[string]json.RawMessage
			e.doT(t, "GET", "/api/candles?topic=TS&interval=1s", "", nil, &bars)
			var got []bar
			for _, b := range bars {
				var g bar
				json.Unmarshal(b["t"], &g.T)
				json.Unmarshal(b["n"], &g.N)
				g.O, g.H, g.L, g.C = string(b["o"]), string(b["h"]), string(b["l"]), string(b["c"])
				got = append(got, g)
			}
			if policy == stream.TSStamp {
				// The two stamped ticks are in bars at the accept time,
				// after every other tick's bar.
				if len(got) < 5 || got[len(got)-1].T < now-now%1000 || got[3].T != sec+4000 {
					t.Fatalf("bars %+v: want the stamped ticks at the accept time", got)
				}
				return
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("1s bars\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

// TestReferenceFigures: /api/topics and the snapshot carry the topic's
// rolling 24-hour figures from the server, the same on every reload.
func TestReferenceFigures(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	now := time.Now().UnixMilli()
	hour := func(ts int64) int64 { return ts - ts%3_600_000 }
	e.publish("REF", now-30*3_600_000, f("price", 50), f("size", 100))   // older than the period
	e.publish("REF", now-20*3_600_000, f("price", 100), f("size", 0.25)) // the open
	e.publish("REF", now-2*3_600_000, f("price", 120.5), f("size", 1.5))
	e.publish("REF", now-1000, f("price", 95.25), f("size", 0.0161))
	e.publish("REF", now, f("bid", 95)) // no price: not in the figures
	want := fmt.Sprintf(`{"since":%d,"o":100,"h":120.5,"l":95.25,"v":1.7661,"n":3}`, hour(now-20*3_600_000))

	var topics []map[string]json.RawMessage
	e.doT(t, "GET", "/api/topics", "", nil, &topics)
	if len(topics) != 1 || string(topics[0]["ref"]) != want {
		t.Fatalf("/api/topics ref %s, want %s", topics[0]["ref"], want)
	}
	c, _ := e.welcomeWS(t, wsOpts{})
	c.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"REF"}})
	c.expect(protocol.TypeAck)
	snap := c.expect(protocol.TypeSnapshot)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(snap.raw), &raw); err != nil {
		t.Fatal(err)
	}
	if string(raw["ref"]) != want {
		t.Fatalf("snapshot %s: ref, want %s", snap.raw, want)
	}
}
