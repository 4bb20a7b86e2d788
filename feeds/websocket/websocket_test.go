package websocket

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/feedtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	coinbaseCapture  = "../../testdata/ws/coinbase_exchange_2021-04-17_cryptofeed-raw_head2000.txt.gz"
	binance24Capture = "../../testdata/ws/binance_spot_btcusdt_2024-08-08_hftbacktest-raw_head2000.txt.gz"
	binance21Capture = "../../testdata/ws/binance_spot_btc_eth_dot_2021-04-04_cryptofeed-raw_head1000.txt.gz"
	binanceTradesCSV = "../../testdata/ticks/binance_spot_trades_btcusdt_ethusdt_2024-08-08_head2000.csv"
)

// received returns the messages the exchange sent, verbatim, from a
// capture: cryptofeed lines are "<ts>: <json>" (lines starting with the
// URL are connection events, sent messages and REST responses);
// hftbacktest lines are "<ns> <json>", where a line that is not a
// combined-stream message is a REST snapshot.
func received(t testing.TB, path string) []string {
	var out []string
	for _, l := range feedtest.Lines(t, path) {
		switch {
		case strings.HasPrefix(l, "wss://"), strings.HasPrefix(l, "https://"):
		case strings.Contains(path, "cryptofeed"):
			_, msg, _ := strings.Cut(l, ": ")
			out = append(out, msg)
		default:
			_, msg, _ := strings.Cut(l, " ")
			if strings.HasPrefix(msg, `{"stream"`) {
				out = append(out, msg)
			}
		}
	}
	return out
}

// fakeExchange is a local WebSocket server that plays recorded messages
// to every client after reading its subscribe messages.
type fakeExchange struct {
	*httptest.Server
	msgs      []string
	subs      int // subscribe messages to wait for
	dropAfter int // the first connection closes after this many messages; 0 = never
	silent    bool

	mu       sync.Mutex
	conns    int
	received [][]string // subscribe messages, per connection
	sent     int        // messages sent so far, over all connections
}

func newFakeExchange(t *testing.T, msgs []string, subs int) *fakeExchange {
	x := &fakeExchange{msgs: msgs, subs: subs}
	x.Server = httptest.NewServer(http.HandlerFunc(x.serve))
	t.Cleanup(x.Close)
	return x
}

func (x *fakeExchange) url() string { return "ws" + strings.TrimPrefix(x.Server.URL, "http") + "/ws" }

func (x *fakeExchange) serve(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	var got []string
	for range x.subs {
		_, m, err := c.Read(ctx)
		if err != nil {
			return
		}
		got = append(got, string(m))
	}
	x.mu.Lock()
	x.conns++
	first := x.conns == 1
	x.received = append(x.received, got)
	x.mu.Unlock()
	if !x.silent {
		for {
			x.mu.Lock()
			if x.sent == len(x.msgs) || (first && x.dropAfter > 0 && x.sent == x.dropAfter) {
				x.mu.Unlock()
				break
			}
			m := x.msgs[x.sent]
			x.sent++
			x.mu.Unlock()
			if err := c.Write(ctx, websocket.MessageText, []byte(m)); err != nil {
				return
			}
		}
		if first && x.dropAfter > 0 {
			c.Close(websocket.StatusGoingAway, "maintenance")
			return
		}
	}
	// Stay connected, as an exchange does, until the client leaves.
	c.Read(ctx)
}

func (x *fakeExchange) subscriptions() [][]string {
	x.mu.Lock()
	defer x.mu.Unlock()
	return append([][]string(nil), x.received...)
}

func num(t *testing.T, s string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func field(name string, v float64) feeds.Field { return feeds.F(name, v) }

// coinbaseWant decodes the capture's ticker, match and last_match
// messages with a plain struct, independently of the mapper.
func coinbaseWant(t *testing.T, msgs []string) []feeds.Tick {
	var want []feeds.Tick
	for _, m := range msgs {
		var v struct {
			Type, ProductID, Price, Size, LastSize, BestBid, BestAsk, Volume24h, Time string
		}
		var raw map[string]any
		json.Unmarshal([]byte(m), &raw)
		get := func(k string) string { s, _ := raw[k].(string); return s }
		v.Type, v.ProductID, v.Price, v.Size = get("type"), get("product_id"), get("price"), get("size")
		v.LastSize, v.BestBid, v.BestAsk, v.Volume24h, v.Time = get("last_size"), get("best_bid"), get("best_ask"), get("volume_24h"), get("time")
		tm, _ := time.Parse(time.RFC3339, v.Time)
		switch v.Type {
		case "ticker":
			want = append(want, feeds.Tick{Topic: v.ProductID, TS: tm.UnixMilli(), Fields: []feeds.Field{
				field("price", num(t, v.Price)), field("size", num(t, v.LastSize)),
				field("bid", num(t, v.BestBid)), field("ask", num(t, v.BestAsk)), field("volume", num(t, v.Volume24h)),
			}})
		case "match", "last_match":
			want = append(want, feeds.Tick{Topic: v.ProductID, TS: tm.UnixMilli(), Fields: []feeds.Field{
				field("price", num(t, v.Price)), field("size", num(t, v.Size)),
			}})
		}
	}
	return want
}

// binance24Want is the 2024 BTCUSDT capture as ticks: trades come from
// the trades CSV (derived from the same capture by its publisher), so the
// check is independent of the mapper; bookTicker from the raw fields with
// the injected receive time.
func binance24Want(t *testing.T, msgs []string, now time.Time) []feeds.Tick {
	lines := feedtest.Lines(t, binanceTradesCSV)[1:]
	var csvTrades []feeds.Tick
	for _, l := range lines {
		r := strings.Split(l, ",")
		if r[1] != "BTCUSDT" {
			continue
		}
		ts, _ := strconv.ParseInt(r[0], 10, 64)
		csvTrades = append(csvTrades, feeds.Tick{Topic: "BTC-USD", TS: ts, Fields: []feeds.Field{field("price", num(t, r[3])), field("size", num(t, r[4]))}})
	}
	var want []feeds.Tick
	trades := 0
	for _, m := range msgs {
		var env struct {
			Stream string
			Data   map[string]any
		}
		json.Unmarshal([]byte(m), &env)
		d := env.Data
		switch {
		case strings.HasSuffix(env.Stream, "@trade"):
			want = append(want, csvTrades[trades])
			trades++
		case strings.HasSuffix(env.Stream, "@bookTicker"):
			want = append(want, feeds.Tick{Topic: "BTC-USD", TS: now.UnixMilli(), Fields: []feeds.Field{
				field("bid", num(t, d["b"].(string))), field("ask", num(t, d["a"].(string))),
				field("bid_size", num(t, d["B"].(string))), field("ask_size", num(t, d["A"].(string))),
			}})
		}
	}
	if trades < 100 {
		t.Fatalf("only %d trades in the capture", trades)
	}
	return want
}

// binance21Want is the 2021 capture's aggTrades (T, s, p, q).
func binance21Want(t *testing.T, msgs []string) []feeds.Tick {
	var want []feeds.Tick
	for _, m := range msgs {
		var env struct {
			Data struct {
				E string  `json:"e"`
				S string  `json:"s"`
				T float64 `json:"T"`
			}
		}
		var raw struct {
			Data map[string]any
		}
		json.Unmarshal([]byte(m), &env)
		json.Unmarshal([]byte(m), &raw)
		if env.Data.E != "aggTrade" {
			continue
		}
		want = append(want, feeds.Tick{Topic: env.Data.S, TS: int64(env.Data.T), Fields: []feeds.Field{
			field("price", num(t, raw.Data["p"].(string))), field("size", num(t, raw.Data["q"].(string))),
		}})
	}
	return want
}

func TestRecordedCaptures(t *testing.T) {
	t.Parallel()
	now := time.UnixMilli(1723161254088)
	tests := []struct {
		name     string
		capture  string
		opts     Options
		want     func(t *testing.T, msgs []string) []feeds.Tick
		wantSubs []string
	}{
		{
			name: "coinbase", capture: coinbaseCapture,
			opts:     Options{Format: "coinbase", Symbols: []string{"SKL-USD", "BAND-GBP"}, Channels: []string{"ticker", "matches"}},
			want:     coinbaseWant,
			wantSubs: []string{`{"channels":["ticker","matches"],"product_ids":["SKL-USD","BAND-GBP"],"type":"subscribe"}`},
		},
		{
			name: "binance 2024 trade+bookTicker", capture: binance24Capture,
			opts:     Options{Format: "binance", Symbols: []string{"BTCUSDT"}, Rename: map[string]string{"BTCUSDT": "BTC-USD"}},
			want:     func(t *testing.T, msgs []string) []feeds.Tick { return binance24Want(t, msgs, now) },
			wantSubs: []string{`{"id":1,"method":"SUBSCRIBE","params":["btcusdt@trade","btcusdt@bookTicker"]}`},
		},
		{
			name: "binance 2021 aggTrade", capture: binance21Capture,
			opts: Options{Format: "binance", Subscribe: []any{
				map[string]any{"method": "SUBSCRIBE", "params": []string{"btcusdt@aggTrade"}, "id": 7},
				`{"method":"LIST_SUBSCRIPTIONS","id":8}`,
			}},
			want:     binance21Want,
			wantSubs: []string{`{"id":7,"method":"SUBSCRIBE","params":["btcusdt@aggTrade"]}`, `{"method":"LIST_SUBSCRIPTIONS","id":8}`},
		},
		{
			name: "generic on binance 2024 trades", capture: binance24Capture,
			opts: Options{Format: "generic", Rename: map[string]string{"BTCUSDT": "BTC-USD"}, Generic: GenericOptions{
				Topic: "$.data.s", TS: "$.data.T", Fields: map[string]string{"price": "$.data.p", "size": "$['data'].q"},
				Match: map[string]string{"$.data.e": "trade"},
			}},
			want: func(t *testing.T, msgs []string) []feeds.Tick {
				var trades []feeds.Tick
				for _, tk := range binance24Want(t, msgs, now) {
					if _, ok := tk.Get("price"); ok {
						trades = append(trades, tk)
					}
				}
				return trades
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			msgs := received(t, tt.capture)
			want := tt.want(t, msgs)
			if len(want) < 40 {
				t.Fatalf("only %d ticks in the capture", len(want))
			}
			x := newFakeExchange(t, msgs, len(tt.wantSubs))
			tt.opts.URL = x.url()
			s, err := NewSource("ex", tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			s.now = func() time.Time { return now }
			sink := &feedtest.Sink{}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx, sink) }()
			feedtest.CheckFor(t, 10*time.Second, 2*time.Millisecond, func() error {
				if n := sink.Len(); n < len(want) {
					return fmt.Errorf("%d of %d ticks", n, len(want))
				}
				return nil
			})
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run = %v, want nil on cancel", err)
			}
			if diff := feedtest.Equal(sink.Ticks(), want); diff != "" {
				t.Error(diff)
			}
			if subs := x.subscriptions(); len(subs) != 1 || strings.Join(subs[0], "\n") != strings.Join(tt.wantSubs, "\n") {
				t.Errorf("subscriptions %q, want %q", subs, tt.wantSubs)
			}
		})
	}
}

func newSupervisor(t *testing.T, sink feeds.Sink, cfgs ...feeds.Config) *feeds.Supervisor {
	t.Helper()
	reg := &feeds.Registry{}
	reg.Register("websocket", New)
	s, err := feeds.NewSupervisor(feeds.SupervisorConfig{
		Registry: reg, Feeds: cfgs, Sink: func(string) feeds.Sink { return sink },
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond, HealthyAfter: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return s
}

func yamlOptions(t *testing.T, s string) yaml.Node {
	t.Helper()
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(s), &n); err != nil {
		t.Fatal(err)
	}
	return *n.Content[0]
}

func TestReconnectResubscribes(t *testing.T) {
	t.Parallel()
	msgs := received(t, coinbaseCapture)
	want := coinbaseWant(t, msgs)
	x := newFakeExchange(t, msgs, 1)
	x.dropAfter = len(msgs) / 2
	sink := &feedtest.Sink{}
	s := newSupervisor(t, sink, feeds.Config{Name: "cb", Type: "websocket",
		Options: yamlOptions(t, `{url: "`+x.url()+`", format: coinbase, symbols: [SKL-USD]}`)})
	s.Start()
	feedtest.CheckFor(t, 10*time.Second, 2*time.Millisecond, func() error {
		if n := sink.Len(); n < len(want) {
			return fmt.Errorf("%d of %d ticks", n, len(want))
		}
		return nil
	})
	if diff := feedtest.Equal(sink.Ticks(), want); diff != "" {
		t.Error(diff)
	}
	st := feedtest.FeedStatus(s, "cb")
	if st.Restarts != 1 || !strings.Contains(st.LastError, "maintenance") || st.Ticks != uint64(len(want)) {
		t.Errorf("status %+v", st)
	}
	subs := x.subscriptions()
	if len(subs) != 2 || subs[0][0] != subs[1][0] {
		t.Errorf("subscriptions per connection: %q", subs)
	}
}

func TestUnreachableURL(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: connection refused
	s := newSupervisor(t, &feedtest.Sink{}, feeds.Config{Name: "ex", Type: "websocket",
		Options: yamlOptions(t, `{url: "ws://`+addr+`/ws", format: binance, symbols: [BTCUSDT]}`)})
	s.Start()
	feedtest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
		st := feedtest.FeedStatus(s, "ex")
		want := `feed "ex": options.url ws://` + addr + `/ws:`
		if (st.State != feeds.StateRestarting && st.State != feeds.StateFailed) || !strings.Contains(st.LastError, want) || st.Restarts < 2 {
			return fmt.Errorf("status %+v, want restarting with %q", st, want)
		}
		return nil
	})
}

func TestRunErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		msgs   []string
		silent bool
		opts   Options
		want   string
	}{
		{"coinbase error", []string{`{"type":"error","message":"Failed to subscribe","reason":"FOO-BAR is not a valid product"}`}, false,
			Options{Format: "coinbase", Symbols: []string{"FOO-BAR"}}, "exchange error: Failed to subscribe FOO-BAR is not a valid product"},
		{"binance error", []string{`{"code":2,"msg":"Invalid request","id":1}`}, false,
			Options{Format: "binance", Symbols: []string{"x"}}, "exchange error: Invalid request (code 2)"},
		{"silence", nil, true, Options{Format: "binance", Symbols: []string{"x"}, ReadTimeout: 30 * time.Millisecond}, "no message for 30ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			x := newFakeExchange(t, tt.msgs, 1)
			x.silent = tt.silent
			tt.opts.URL = x.url()
			s, err := NewSource("ex", tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err = s.Run(ctx, &feedtest.Sink{})
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), `feed "ex": options.url`) {
				t.Errorf("Run = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestNewBadOptions(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, yaml, want string }{
		{"no url", `{format: binance}`, `options.url: missing`},
		{"http url", `{url: "http://x", format: binance}`, `options.url: "http://x": want ws:// or wss://`},
		{"no format", `{url: "ws://x"}`, `options.format: missing`},
		{"bad format", `{url: "ws://x", format: kraken}`, `options.format: "kraken"`},
		{"unknown key", `{url: "ws://x", format: binance, symbol: [X]}`, `options: yaml: unmarshal errors`},
		{"generic no topic", `{url: "ws://x", format: generic, generic: {fields: {price: $.p}}}`, `options.generic.topic: missing`},
		{"generic bad path", `{url: "ws://x", format: generic, generic: {topic: $.s, fields: {price: "$.p["}}}`, `options.generic.fields.price: "$.p[": missing ]`},
		{"generic no fields", `{url: "ws://x", format: generic, generic: {topic: X}}`, `options.generic.fields: missing`},
		{"generic bad unit", `{url: "ws://x", format: generic, generic: {topic: X, ts: $.T, ts_unit: h, fields: {price: $.p}}}`, `options.generic.ts_unit: "h"`},
		{"generic with coinbase", `{url: "ws://x", format: coinbase, generic: {topic: X}}`, `options.generic: set, but format is "coinbase"`},
		{"bad rename", `{url: "ws://x", format: binance, rename: {A: "B C"}}`, `options.rename: A: "B C"`},
		{"bad timeout", `{url: "ws://x", format: binance, read_timeout: soon}`, `options: yaml: unmarshal errors`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(feeds.Config{Name: "ex", Options: yamlOptions(t, tt.yaml)})
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), `feed "ex"`) {
				t.Errorf("err = %v\nwant it to contain %s", err, tt.want)
			}
		})
	}
	if _, err := New(feeds.Config{Name: "ok", Options: yamlOptions(t, `{url: "wss://x/ws", format: binance, read_timeout: 5s}`)}); err != nil {
		t.Errorf("duration option: %v", err)
	}
}

// FuzzMappers runs every format over arbitrary messages, seeded with
// real ones: no panic, and every tick is valid.
func FuzzMappers(f *testing.F) {
	for _, c := range []string{coinbaseCapture, binance24Capture, binance21Capture} {
		msgs := received(f, c)
		for i := 0; i < len(msgs); i += len(msgs) / 15 {
			f.Add(msgs[i])
		}
	}
	f.Add(`{"type":"ticker","product_id":"X","price":"NaN"}`)
	f.Add(`{"stream":"x","data":{"e":"trade","s":"A","p":"1e999","T":-1}}`)
	f.Add(`{"e":"aggTrade","s":"","p":1,"q":2,"T":1.5}`)
	f.Add(`[]`)
	g, err := newGeneric(GenericOptions{Topic: "$.data.s", TS: "$.data.T", Fields: map[string]string{"price": "$.data.p", "x": "$.data.b[0][1]"}})
	if err != nil {
		f.Fatal(err)
	}
	mappers := []mapper{coinbase{}, binance{}, g}
	now := time.UnixMilli(1700000000000)
	f.Fuzz(func(t *testing.T, msg string) {
		for _, m := range mappers {
			ticks, err := m.mapMessage([]byte(msg), now, nil)
			if err != nil {
				continue
			}
			for _, tk := range ticks {
				if !feeds.ValidTopic(tk.Topic) {
					continue // refused by the sink and logged by Run
				}
				if err := tk.Validate(); err != nil {
					t.Fatalf("%T: invalid tick %+v: %v", m, tk, err)
				}
			}
		}
	})
}

func TestParsePath(t *testing.T) {
	t.Parallel()
	var v any
	json.Unmarshal([]byte(`{"a":{"b":[1,{"c":"x"}]},"k.d":2}`), &v)
	for in, want := range map[string]string{"$.a.b[1].c": "x", "$['k.d']": "2", "$.a.b[0]": "1"} {
		p, err := parsePath(in)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := p.eval(v)
		if !ok || text(got) != want {
			t.Errorf("%s = %v, %v; want %s", in, got, ok, want)
		}
	}
	for _, in := range []string{"a", "$.", "$[x]", "$.a[", "$x"} {
		if _, err := parsePath(in); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}
