package server_test

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream/protocol"
)

type candle struct {
	T             int64
	O, H, L, C, V float64
	N             int64
}

// wantCandles computes OHLCV bars of interval ms from ticks in order.
func wantCandles(ticks []feeds.Tick, ms int64) []candle {
	var out []candle
	for _, tk := range ticks {
		p, _ := tk.Get("price")
		s, _ := tk.Get("size")
		start := tk.TS - tk.TS%ms
		if n := len(out); n > 0 && out[n-1].T == start {
			b := &out[n-1]
			b.H, b.L, b.C, b.V, b.N = max(b.H, p), min(b.L, p), p, b.V+s, b.N+1
			continue
		}
		out = append(out, candle{T: start, O: p, H: p, L: p, C: p, V: s, N: 1})
	}
	return out
}

func TestAPIData(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	const base = int64(1_699_999_200_000) // on the hour
	type tk struct {
		off         int64
		price, size float64
	}
	var ticks []feeds.Tick
	for _, x := range []tk{
		{0, 10, 1}, {200, 12, 2}, {900, 9, 1}, {1000, 11, 3}, {1999, 8, 1},
		{61_000, 20, 5}, {119_999, 21, 1}, {301_000, 15, 2}, {3_600_500, 30, 1},
	} {
		tick := feeds.Tick{Topic: "K", TS: base + x.off}
		tick.Set("price", x.price)
		tick.Set("size", x.size)
		ticks = append(ticks, tick)
		if _, err := e.bus.Publish("test", tick); err != nil {
			t.Fatal(err)
		}
	}
	e.publish("K", base+3_600_600, f("bid", 29)) // no price: no candle

	t.Run("candles", func(t *testing.T) {
		for _, iv := range []struct {
			name string
			ms   int64
		}{{"1s", 1000}, {"1m", 60_000}, {"5m", 300_000}, {"1h", 3_600_000}} {
			var got []candle
			e.doT(t, http.MethodGet, "/api/candles?topic=K&interval="+iv.name+"&limit=100", "", nil, &got)
			if want := wantCandles(ticks, iv.ms); !slices.Equal(got, want) {
				t.Errorf("%s candles:\n got %+v\nwant %+v", iv.name, got, want)
			}
		}
		var got []candle
		e.doT(t, http.MethodGet, "/api/candles?topic=K&interval=1s&limit=2", "", nil, &got)
		if all := wantCandles(ticks, 1000); !slices.Equal(got, all[len(all)-2:]) {
			t.Errorf("limit=2: got %+v, want the 2 newest bars %+v", got, all[len(all)-2:])
		}
		e.doT(t, http.MethodGet, "/api/candles?topic=K", "", nil, &got)
		if want := wantCandles(ticks, 60_000); !slices.Equal(got, want) {
			t.Errorf("default interval: got %+v, want the 1m bars %+v", got, want)
		}
	})

	type histTick struct {
		Seq  uint64              `json:"seq"`
		TS   int64               `json:"ts"`
		Data map[string]tick.Num `json:"data"`
	}
	type history struct {
		Topic  string     `json:"topic"`
		Epoch  string     `json:"epoch"`
		Oldest uint64     `json:"oldest_seq"`
		Last   uint64     `json:"last_seq"`
		Ticks  []histTick `json:"ticks"`
	}
	t.Run("history", func(t *testing.T) {
		tests := []struct {
			query string
			seqs  []uint64
		}{
			{"topic=K", []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
			{"topic=K&after_seq=2&limit=3", []uint64{3, 4, 5}},
			{"topic=K&after_seq=8", []uint64{9, 10}},
			{"topic=K&after_seq=10", nil},
			{"topic=K&limit=1", []uint64{1}},
		}
		for _, tt := range tests {
			var h history
			status, raw := e.doT(t, http.MethodGet, "/api/history?"+tt.query, "", nil, &h)
			if status != 200 || h.Topic != "K" || h.Epoch != e.bus.Epoch() || h.Oldest != 1 || h.Last != 10 || h.Ticks == nil {
				t.Errorf("%s: %d %s", tt.query, status, raw)
				continue
			}
			var seqs []uint64
			for _, ht := range h.Ticks {
				seqs = append(seqs, ht.Seq)
				if ht.Seq <= uint64(len(ticks)) {
					want := ticks[ht.Seq-1]
					if ht.TS != want.TS || !equalData(ht.Data, fieldMap(want.Fields)) {
						t.Errorf("%s: tick %+v, want ts %d data %v", tt.query, ht, want.TS, fieldMap(want.Fields))
					}
				} else if ht.Data["bid"].Float() != 29 || len(ht.Data) != 1 {
					t.Errorf("%s: tick %+v, want only bid 29", tt.query, ht)
				}
			}
			if !slices.Equal(seqs, tt.seqs) {
				t.Errorf("%s: seqs %v, want %v", tt.query, seqs, tt.seqs)
			}
		}
	})

	t.Run("topics", func(t *testing.T) {
		e.publish("J", base, f("price", 1))
		var topics []struct {
			Topic string             `json:"topic"`
			Epoch string             `json:"epoch"`
			Seq   uint64             `json:"seq"`
			TS    int64              `json:"ts"`
			Data  map[string]float64 `json:"data"`
			Rate  *int               `json:"rate"`
		}
		e.doT(t, http.MethodGet, "/api/topics", "", nil, &topics)
		if len(topics) != 2 || topics[0].Topic != "J" || topics[1].Topic != "K" {
			t.Fatalf("topics %+v: want J and K, sorted", topics)
		}
		k := topics[1]
		want := map[string]float64{"price": 30, "size": 1, "bid": 29}
		if k.Epoch != e.bus.Epoch() || k.Seq != 10 || k.TS != base+3_600_600 || !equalF(k.Data, want) || k.Rate == nil {
			t.Errorf("K: %+v, want seq 10, ts %d, data %v and a rate", k, base+3_600_600, want)
		}
	})

	t.Run("health", func(t *testing.T) {
		var h map[string]any
		if status, raw := e.doT(t, http.MethodGet, "/healthz", "", nil, &h); status != 200 {
			t.Errorf("/healthz: %d %s", status, raw)
		}
		var r struct {
			Ready bool `json:"ready"`
		}
		if status, raw := e.doT(t, http.MethodGet, "/readyz", "", nil, &r); status != 200 || !r.Ready {
			t.Errorf("/readyz: %d %s", status, raw)
		}
	})
}

func TestAPIMetrics(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	e.publish("M", 1, f("price", 1))
	c, _ := e.welcomeWS(t, wsOpts{})
	c.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"M"}, ThrottleMS: ms(50)})
	c.expect(protocol.TypeAck)
	c.expect(protocol.TypeSnapshot)
	for i := range 10 {
		e.publish("M", int64(2+i), f("price", 2))
	}
	c.expect(protocol.TypeUpdate)
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if v := e.metric("tickstream_delivery_latency_seconds"); v < 1 {
			return fmt.Errorf("%v latency samples", v)
		}
		return nil
	})

	status, body := e.get("/metrics", nil)
	if status != 200 {
		t.Fatalf("/metrics: %d", status)
	}
	text := string(body)
	for _, name := range []string{
		`tickstream_connections{transport="ws"} 1`,
		`tickstream_messages_sent_total{transport="ws"}`,
		`tickstream_sent_bytes_total{transport="ws"}`,
		`tickstream_ticks_total{feed="test"} 11`,
		`tickstream_ticks_coalesced_total`,
		`tickstream_lagging_clients 0`,
		`tickstream_slow_closes_total 0`,
		`tickstream_delivery_latency_seconds_bucket`,
		`tickstream_pending_bytes`,
	} {
		if !strings.Contains(text, "\n"+name) {
			t.Errorf("/metrics lacks %q", name)
		}
	}
	if v := e.metric("tickstream_ticks_coalesced_total"); v < 1 {
		t.Errorf("tickstream_ticks_coalesced_total %v after 10 ticks in a 50 ms window", v)
	}
	if v := e.metric("tickstream_messages_sent_total"); v < 4 {
		t.Errorf("tickstream_messages_sent_total %v, want welcome, ack, snapshot and an update at least", v)
	}
}

func TestAPIBadInput(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	e.publish("K", 1, f("price", 1))
	tests := []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"GET", "/api/history", "", 400, protocol.CodeBadTopic},
		{"GET", "/api/history?topic=a%20b", "", 400, protocol.CodeBadTopic},
		{"GET", "/api/history?topic=K&after_seq=x", "", 400, "bad_request"},
		{"GET", "/api/history?topic=K&after_seq=-1", "", 400, "bad_request"},
		{"GET", "/api/history?topic=K&limit=0", "", 400, "bad_request"},
		{"GET", "/api/history?topic=K&limit=many", "", 400, "bad_request"},
		{"GET", "/api/history?topic=nope", "", 404, protocol.CodeUnknownTopic},
		{"GET", "/api/candles", "", 400, protocol.CodeBadTopic},
		{"GET", "/api/candles?topic=K&interval=2m", "", 400, "bad_interval"},
		{"GET", "/api/candles?topic=K&limit=abc", "", 400, "bad_request"},
		{"GET", "/api/candles?topic=nope&interval=1m", "", 404, protocol.CodeUnknownTopic},
		{"GET", "/ws", "", 426, "upgrade_required"},
		{"POST", "/api/publish", "", 400, "empty"},
		{"POST", "/api/publish", "[1,", 400, protocol.CodeBadJSON},
		{"GET", "/api/nothing", "", 404, "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			t.Parallel()
			e.expectAPIError(t, tt.method, tt.path, tt.body, tt.status, tt.code)
		})
	}
	t.Run("still serving", func(t *testing.T) {
		t.Parallel()
		var h struct {
			Last uint64 `json:"last_seq"`
		}
		if status, raw := e.doT(t, "GET", "/api/history?topic=K", "", nil, &h); status != 200 || h.Last != 1 {
			t.Errorf("%d %s", status, raw)
		}
	})
}

func TestAPIPublish(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	type result struct {
		Accepted int `json:"accepted"`
		Refused  []struct {
			Line  int    `json:"line"`
			Error string `json:"error"`
		} `json:"refused"`
	}
	tests := []struct {
		name, topic string
		body        func(topic string) string
		refused     map[int]string // line → part of the reason
	}{
		{"NDJSON", "P-nd", func(tp string) string {
			return strings.Join([]string{
				`{"topic":"` + tp + `","ts":1000,"price":1.5,"size":2}`,
				`not json`,
				`{"topic":"bad topic","price":1}`,
				`{"topic":"` + tp + `","price":1e999}`,
				`{"topic":"` + tp + `","price":"NaN"}`,
				``,
				`{"topic":"` + tp + `","ts":2000,"price":2.5,"fields":{"oi":7}}`,
				`{"topic":"` + tp + `","price":"abc"}`,
			}, "\n")
		}, map[int]string{2: "JSON", 3: "topic", 4: "non-finite", 5: "non-finite", 8: "field"}},
		{"JSON array", "P-arr", func(tp string) string {
			return `[{"topic":"` + tp + `","ts":1000,"price":1.5,"size":2},` +
				`42,` +
				`{"topic":"bad topic","price":1},` +
				`{"topic":"` + tp + `","price":1e999},` +
				`{"topic":"` + tp + `","price":"Infinity"},` +
				`{"price":3},` +
				`{"topic":"` + tp + `","ts":2000,"price":2.5,"fields":{"oi":7}}]`
		}, map[int]string{2: "JSON", 3: "topic", 4: "non-finite", 5: "non-finite", 6: "topic"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var res result
			status, raw := e.doT(t, http.MethodPost, "/api/publish", "application/x-ndjson", []byte(tt.body(tt.topic)), &res)
			if status != 200 || res.Accepted != 2 || len(res.Refused) != len(tt.refused) {
				t.Fatalf("got %d %s: want 200, 2 accepted, %d refused", status, raw, len(tt.refused))
			}
			for _, r := range res.Refused {
				want, ok := tt.refused[r.Line]
				if !ok || !strings.Contains(r.Error, want) {
					t.Errorf("refused line %d: %q, want a reason with %q", r.Line, r.Error, want)
				}
			}
			var h struct {
				Ticks []struct {
					Seq  uint64             `json:"seq"`
					TS   int64              `json:"ts"`
					Data map[string]float64 `json:"data"`
				} `json:"ticks"`
			}
			e.doT(t, http.MethodGet, "/api/history?topic="+tt.topic, "", nil, &h)
			if len(h.Ticks) != 2 || h.Ticks[0].TS != 1000 || !equalF(h.Ticks[0].Data, map[string]float64{"price": 1.5, "size": 2}) ||
				h.Ticks[1].TS != 2000 || !equalF(h.Ticks[1].Data, map[string]float64{"price": 2.5, "oi": 7}) {
				t.Errorf("history %+v: want the 2 good ticks", h.Ticks)
			}
		})
	}
	t.Run("all refused", func(t *testing.T) {
		t.Parallel()
		var res result
		status, raw := e.doT(t, http.MethodPost, "/api/publish", "application/json", []byte(`[{"topic":"x y"},{"topic":"Q","price":"NaN"}]`), &res)
		if status != 400 || res.Accepted != 0 || len(res.Refused) != 2 {
			t.Errorf("got %d %s: want 400 with 2 refused", status, raw)
		}
	})
}
