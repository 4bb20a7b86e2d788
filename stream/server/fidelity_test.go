package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"math/rand/v2"
	"path/filepath"
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

const tickDir = "../../testdata/ticks/"

// replayCase is how one file of testdata/ticks replays: the replay feed's
// options, and the same mapping for the offline reader of the file's text.
type replayCase struct {
	file     string // name in testdata/ticks
	speed    int    // replay speed: every file plays in about two seconds
	topicCol string
	tsCol    string
	tsUnit   string             // "ms" or "rfc3339"
	fields   map[string]string  // tick field → column
	rename   map[string]string  // file topic → topic
	absent   map[string]float64 // field → the value that means "not given"
}

// replayCases covers every file of testdata/ticks (testdata/README.md).
var replayCases = []replayCase{
	{
		file: "binance_spot_trades_btcusdt_ethusdt_2024-08-08_head2000.csv", speed: 25, // 49 s
		topicCol: "symbol", tsCol: "trade_time_ms", tsUnit: "ms",
		fields: map[string]string{"price": "price", "size": "qty"},
		rename: map[string]string{"BTCUSDT": "BTC-USD", "ETHUSDT": "ETH-USD"},
	},
	{
		file: "us_equity_trades_ibm_aig_bac_2013-10-07_head2000.csv.gz", speed: 50, // 100 s
		topicCol: "symbol", tsCol: "ts_utc", tsUnit: "rfc3339",
		fields: map[string]string{"price": "price", "size": "size"},
	},
	{
		file: "us_equity_trades_ibm_2013-10-07_0930-0945ET.csv.gz", speed: 400, // 15 min
		topicCol: "symbol", tsCol: "ts_utc", tsUnit: "rfc3339",
		fields: map[string]string{"price": "price", "size": "size"},
	},
	{
		// One side per row, 0 for the other: no price, so no candles; the
		// updates' agg counts the quotes and their data never holds bid 0.
		file: "us_equity_quotes_ibm_2013-10-07_handwritten.csv", speed: 400, // 15 min
		topicCol: "symbol", tsCol: "ts_utc", tsUnit: "rfc3339",
		fields: map[string]string{"bid": "bid", "bid_size": "bid_size", "ask": "ask", "ask_size": "ask_size"},
		absent: map[string]float64{"bid": 0, "bid_size": 0, "ask": 0, "ask_size": 0},
	},
}

// options returns the replay feed's options for the case.
func (rc replayCase) options() map[string]any {
	o := map[string]any{
		"file": tickDir + rc.file, "speed": rc.speed, "topic_column": rc.topicCol,
		"ts_column": rc.tsCol, "ts_unit": rc.tsUnit, "fields": rc.fields,
	}
	if rc.rename != nil {
		o["rename"] = rc.rename
	}
	if rc.absent != nil {
		o["absent_values"] = rc.absent
	}
	return o
}

// rawTick is one row of a file, its numbers as the file's text.
type rawTick struct {
	ts     int64
	fields map[string]string // tick field → text; absent values left out
}

// read reads the file per topic, in file order (= seq order), without the
// replay feed's code: rows left with no field are skipped, as the feed
// skips them.
func (rc replayCase) read(t *testing.T) (map[string][]rawTick, int) {
	t.Helper()
	lines := feedtest.Lines(t, tickDir+rc.file)
	col := map[string]int{}
	for i, name := range strings.Split(lines[0], ",") {
		col[name] = i
	}
	out := map[string][]rawTick{}
	skipped := 0
	for _, l := range lines[1:] {
		r := strings.Split(l, ",")
		var ts int64
		switch rc.tsUnit {
		case "ms":
			v, err := strconv.ParseInt(r[col[rc.tsCol]], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			ts = v
		case "rfc3339":
			tm, err := time.Parse(time.RFC3339Nano, r[col[rc.tsCol]])
			if err != nil {
				t.Fatal(err)
			}
			ts = tm.UnixMilli() // truncates …59.9996Z to …59.999
		}
		tk := rawTick{ts: ts, fields: map[string]string{}}
		for field, c := range rc.fields {
			text := r[col[c]]
			if a, ok := rc.absent[field]; ok && rat(t, text).Cmp(new(big.Rat).SetFloat64(a)) == 0 {
				continue
			}
			tk.fields[field] = text
		}
		if len(tk.fields) == 0 {
			skipped++
			continue
		}
		topic := r[col[rc.topicCol]]
		if to, ok := rc.rename[topic]; ok {
			topic = to
		}
		out[topic] = append(out[topic], tk)
	}
	return out, skipped
}

func rat(t *testing.T, s string) *big.Rat {
	t.Helper()
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		t.Fatalf("not a decimal: %q", s)
	}
	return r
}

// decimals returns the digits after the point of a decimal text.
func decimals(s string) int {
	if i := strings.IndexByte(s, '.'); i >= 0 {
		return len(s) - i - 1
	}
	return 0
}

// offlineAgg is an update's agg or a bar computed with math/big from the
// raw text: n ticks, o/h/l/c of those with a price (empty if none), v the
// sum of their sizes with the inputs' finest decimals.
type offlineAgg struct {
	n          int
	o, h, l, c string
	v          *big.Rat
	scale      int
}

func (b *offlineAgg) fold(t *testing.T, tk rawTick) {
	b.n++
	if b.v == nil {
		b.v = new(big.Rat)
	}
	if s, ok := tk.fields["size"]; ok {
		b.v.Add(b.v, rat(t, s))
		b.scale = max(b.scale, decimals(s))
	}
	p, ok := tk.fields["price"]
	if !ok {
		return
	}
	if b.o == "" {
		b.o, b.h, b.l = p, p, p
	}
	if rat(t, p).Cmp(rat(t, b.h)) > 0 {
		b.h = p
	}
	if rat(t, p).Cmp(rat(t, b.l)) < 0 {
		b.l = p
	}
	b.c = p
}

func (b *offlineAgg) vText() string {
	if b.v == nil {
		return "0"
	}
	return b.v.FloatString(b.scale)
}

func (b *offlineAgg) String() string {
	return fmt.Sprintf("n=%d o=%s h=%s l=%s c=%s v=%s", b.n, b.o, b.h, b.l, b.c, b.vText())
}

// offlineBars returns the bars of interval ms of ticks (in time order, as
// every file is), from their prices alone.
func offlineBars(t *testing.T, ticks []rawTick, ms int64) []string {
	var bars []string
	var cur offlineAgg
	start := int64(-1)
	flush := func() {
		if start >= 0 {
			bars = append(bars, fmt.Sprintf("t=%d %s", start, &cur))
		}
	}
	for _, tk := range ticks {
		if _, ok := tk.fields["price"]; !ok {
			continue
		}
		if t0 := tk.ts - tk.ts%ms; t0 != start {
			if t0 < start {
				t.Fatalf("file not in time order at ts %d", tk.ts)
			}
			flush()
			cur, start = offlineAgg{}, t0
		}
		cur.fold(t, tk)
	}
	flush()
	return bars
}

// startReplay runs a replay feed with opts into e's bus.
func startReplay(t *testing.T, e *env, opts map[string]any) {
	t.Helper()
	reg := &feeds.Registry{}
	reg.Register("replay", replay.New)
	b, err := yaml.Marshal(opts)
	if err != nil {
		t.Fatal(err)
	}
	var node yaml.Node
	if err := yaml.Unmarshal(b, &node); err != nil {
		t.Fatal(err)
	}
	s, err := feeds.NewSupervisor(feeds.SupervisorConfig{
		Registry: reg, Feeds: []feeds.Config{{Name: "replay", Type: "replay", Options: *node.Content[0]}},
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
	TS    int64  `json:"ts"`
	Agg   struct {
		N int64           `json:"n"`
		O json.RawMessage `json:"o"`
		H json.RawMessage `json:"h"`
		L json.RawMessage `json:"l"`
		C json.RawMessage `json:"c"`
		V json.RawMessage `json:"v"`
	} `json:"agg"`
	Data map[string]json.RawMessage `json:"data"`
}

var barIntervals = []struct {
	name string
	ms   int64
}{{"1s", 1000}, {"1m", 60_000}}

// TestReplayExactDecimals replays every file of testdata/ticks through the
// real replay feed and the server, and checks digit for digit against
// math/big figures from the file's text: every update's agg (and its
// data, the window's last value of each field) at throttles 0, 250 ms and
// 2 s; the 1s and 1m bars each client builds from its updates alone with
// client.Bars; and the 1s and 1m bars of /api/candles.
func TestReplayExactDecimals(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(tickDir + "*")
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]replayCase{}
	for _, rc := range replayCases {
		cases[rc.file] = rc
	}
	for _, path := range files {
		if _, ok := cases[filepath.Base(path)]; !ok {
			t.Errorf("%s: no replay case for this file", path)
		}
	}
	for _, rc := range replayCases {
		t.Run(strings.SplitN(rc.file, "_2", 2)[0], func(t *testing.T) {
			t.Parallel()
			testReplayExact(t, rc)
		})
	}
}

func testReplayExact(t *testing.T, rc replayCase) {
	e := startServer(t, func(bc *stream.BusConfig, _ *server.Config) {
		bc.CandleDepth = 10_000 // every 1s bar of a 15-minute file
	}) // no ts limits: the files are from 2013 and 2024
	raw, skipped := rc.read(t)
	topics := make([]string, 0, len(raw))
	for topic := range raw {
		topics = append(topics, topic)
	}
	throttles := []int{0, 250, 2000}
	clients := make([]*wsClient, len(throttles))
	for i, th := range throttles {
		c, _ := e.welcomeWS(t, wsOpts{})
		c.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: topics, ThrottleMS: ms(th)})
		c.expect(protocol.TypeAck)
		clients[i] = c
	}
	startReplay(t, e, rc.options())

	deadline := time.Now().Add(60 * time.Second)
	for i, c := range clients {
		th := throttles[i]
		bars := map[string][]*client.Bars{}
		for _, topic := range topics {
			for _, iv := range barIntervals {
				bars[topic] = append(bars[topic], client.NewBars(iv.ms, nil))
			}
		}
		last := map[string]uint64{}
		updates, parts := 0, 0
		behind := func() bool {
			for topic, ticks := range raw {
				if last[topic] < uint64(len(ticks)) {
					return true
				}
			}
			return false
		}
		for behind() {
			m := c.next(time.Until(deadline))
			if m.Type == protocol.TypeStatus {
				continue // lagging: later updates coalesce, with exact aggs
			}
			if m.Type != protocol.TypeUpdate {
				t.Fatalf("throttle %d: got %s, want updates", th, m)
			}
			var u rawUpdate
			if err := json.Unmarshal([]byte(m.raw), &u); err != nil {
				t.Fatal(err)
			}
			ticks := raw[u.Topic]
			if u.Seq <= last[u.Topic] || u.Seq > uint64(len(ticks)) {
				t.Fatalf("throttle %d: %s seq %d after %d (file has %d ticks)", th, u.Topic, u.Seq, last[u.Topic], len(ticks))
			}
			var want offlineAgg
			data := map[string]string{}
			for s := last[u.Topic] + 1; s <= u.Seq; s++ {
				want.fold(t, ticks[s-1])
				for k, v := range ticks[s-1].fields {
					data[k] = v
				}
			}
			got := fmt.Sprintf("n=%d o=%s h=%s l=%s c=%s v=%s", u.Agg.N, u.Agg.O, u.Agg.H, u.Agg.L, u.Agg.C, u.Agg.V)
			if got != want.String() {
				t.Fatalf("throttle %d: %s (%d, %d] agg:\n got %s\nwant %s", th, u.Topic, last[u.Topic], u.Seq, got, &want)
			}
			gotData := map[string]string{}
			for k, v := range u.Data {
				gotData[k] = string(v)
			}
			if fmt.Sprint(gotData) != fmt.Sprint(data) || u.TS != ticks[u.Seq-1].ts {
				t.Fatalf("throttle %d: %s (%d, %d]: ts %d data %v, want ts %d data %v",
					th, u.Topic, last[u.Topic], u.Seq, u.TS, gotData, ticks[u.Seq-1].ts, data)
			}
			for _, b := range bars[u.Topic] {
				b.Fold(m.WireMessage)
			}
			if len(m.Agg.B) > 0 {
				parts++
			}
			last[u.Topic] = u.Seq
			updates++
		}
		for _, topic := range topics {
			for k, iv := range barIntervals {
				var got []string
				for _, b := range bars[topic][k].Last(1 << 20) {
					got = append(got, fmt.Sprintf("t=%d n=%d o=%s h=%s l=%s c=%s v=%s", b.T, b.N, b.O, b.H, b.L, b.C, b.V))
				}
				compareBars(t, fmt.Sprintf("throttle %d: %s %s bars from updates", th, topic, iv.name), got, offlineBars(t, raw[topic], iv.ms))
			}
		}
		t.Logf("throttle %d: %d updates (%d with agg.b), exact", th, updates, parts)
	}

	for _, topic := range topics {
		for _, iv := range barIntervals {
			var bars []map[string]json.RawMessage
			e.doT(t, "GET", "/api/candles?topic="+topic+"&interval="+iv.name+"&limit=100000", "", nil, &bars)
			var got []string
			for _, g := range bars {
				got = append(got, fmt.Sprintf("t=%s n=%s o=%s h=%s l=%s c=%s v=%s", g["t"], g["n"], g["o"], g["h"], g["l"], g["c"], g["v"]))
			}
			compareBars(t, fmt.Sprintf("%s %s /api/candles", topic, iv.name), got, offlineBars(t, raw[topic], iv.ms))
		}
	}
	// The whole file's volume, e.g. ETH's 2261.3149 (float64 sums gave
	// 2261.3148999999617).
	var body bytes.Buffer
	for _, topic := range topics {
		var all offlineAgg
		for _, tk := range raw[topic] {
			all.fold(t, tk)
		}
		fmt.Fprintf(&body, "%s n=%d v=%s ", topic, all.n, all.vText())
	}
	t.Logf("file: %s(%d rows skipped as empty)", body.String(), skipped)
}

func compareBars(t *testing.T, what string, got, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d bars, want %d", what, len(got), len(want))
	}
	for k := range got {
		if got[k] != want[k] {
			t.Fatalf("%s: bar %d:\n got %s\nwant %s", what, k, got[k], want[k])
		}
	}
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
