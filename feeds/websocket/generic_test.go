package websocket

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/feedtest"
)

const (
	krakenTrades   = "../../testdata/ws/kraken_v1_trade_handwritten.txt"
	bitstampTrades = "../../testdata/ws/bitstamp_live_trades_handwritten.txt"
)

func trade(topic string, ts int64, price, size, side float64) feeds.Tick {
	return feeds.Tick{Topic: topic, TS: ts, Fields: []feeds.Field{field("price", price), field("size", size), field("side", side)}}
}

// runGeneric plays msgs from a fake exchange to a supervised generic feed
// and returns the supervisor and sink once want ticks have arrived.
func runGeneric(t *testing.T, msgs []string, subs int, options string, want int) (*feeds.Supervisor, *feedtest.Sink) {
	t.Helper()
	x := newFakeExchange(t, msgs, subs)
	sink := &feedtest.Sink{}
	s := newSupervisor(t, sink, feeds.Config{Name: "ex", Type: "websocket",
		Options: yamlOptions(t, `{url: "`+x.url()+`", format: generic, `+options+`}`)})
	s.Start()
	feedtest.CheckFor(t, 10*time.Second, 2*time.Millisecond, func() error {
		if n := sink.Len(); n < want {
			return fmt.Errorf("%d of %d ticks", n, want)
		}
		return nil
	})
	time.Sleep(20 * time.Millisecond) // nothing more may come
	return s, sink
}

// TestGenericKrakenTrades: Kraken v1 trade messages carry several trades
// each; every trade becomes a tick, in order, with exact values, ts in
// seconds with fractions truncated to the millisecond, and side b/s as
// 1/-1.
func TestGenericKrakenTrades(t *testing.T) {
	t.Parallel()
	want := []feeds.Tick{
		trade("BTC-USD", 1534614057321, 5541.2, 0.15850568, -1),
		trade("BTC-USD", 1534614057324, 6060, 0.02455, 1),
		trade("BTC-USD", 1534614057999, 6060, 0.001, 1), // .9996 stays in :57
		trade("BTC-USD", 1534614058000, 6059.9, 0.5, -1),
		trade("BTC-USD", 1534614058100, 6059.8, 1.25, -1),
		trade("BTC-USD", 1534614058100, 6059.7, 0.0001, -1),
		trade("ETH-USD", 1534614059250, 285.4, 2, 1),
		trade("ETH-USD", 1534614059250, 285.41, 0.75, 1),
		trade("BTC-USD", 1534614060999, 6061.1, 0.04, 1),
		trade("ETH-USD", 1534614061000, 285.3, 10, -1),
	}
	s, sink := runGeneric(t, feedtest.Lines(t, krakenTrades), 1, `
		subscribe: ['{"event":"subscribe","pair":["XBT/USD","ETH/USD"],"subscription":{"name":"trade"}}'],
		rename: {XBT/USD: BTC-USD, ETH/USD: ETH-USD},
		generic: {
			each: "$[1]", topic: "$[3]", match: {"$[2]": trade},
			ts: "@[2]", ts_unit: s,
			fields: {price: "@[0]", size: "@[1]", side: "@[3]"},
			values: {side: {b: 1, s: -1}}}`, len(want))
	if diff := feedtest.Equal(sink.Ticks(), want); diff != "" {
		t.Error(diff)
	}
	if st := feedtest.FeedStatus(s, "ex"); st.Dropped != 0 || st.Ticks != uint64(len(want)) {
		t.Errorf("status %+v", st)
	}
}

// TestGenericBitstampLiveTrades: the topic comes from the channel name
// without its live_trades_ prefix, mapped to a topic by rename; ts in
// microseconds is truncated to the millisecond; type 0/1 is side 1/-1.
func TestGenericBitstampLiveTrades(t *testing.T) {
	t.Parallel()
	want := []feeds.Tick{
		trade("BTC-USD", 1651841044640, 36334.58, 0.0101, -1),
		trade("BTC-USD", 1651841044999, 36334.59, 0.25, 1),
		trade("ETH-USD", 1651841045000, 2712.3, 1.5, 1),
		trade("BTC-USD", 1651841045500, 36330, 0.00030001, -1),
	}
	_, sink := runGeneric(t, feedtest.Lines(t, bitstampTrades), 2, `
		subscribe: [{event: "bts:subscribe", data: {channel: live_trades_btcusd}}, {event: "bts:subscribe", data: {channel: live_trades_ethusd}}],
		rename: {btcusd: BTC-USD, ethusd: ETH-USD},
		generic: {
			topic: $.channel, topic_strip_prefix: [live_trades_], match: {$.event: trade},
			ts: $.data.microtimestamp, ts_unit: us,
			fields: {price: $.data.price_str, size: $.data.amount_str, side: $.data.type},
			values: {side: {"0": 1, "1": -1}}}`, len(want))
	if diff := feedtest.Equal(sink.Ticks(), want); diff != "" {
		t.Error(diff)
	}
}

// TestGenericPartialMessages: an element that cannot be mapped is dropped
// alone (its siblings become ticks), an optional field that cannot be
// mapped is left out of its tick, and a tick the bus refuses is skipped;
// all of it is counted as dropped, and the feed goes on without a restart.
func TestGenericPartialMessages(t *testing.T) {
	t.Parallel()
	msgs := []string{
		`[0,[["6060.0","0.1","1534614057.5","b","l",""],["bad","0.2","1534614057.6","s","l",""],["6061.0","0.3","1534614057.7","x","l",""]],"trade","XBT/USD"]`,
		`[0,[["1.0","1","1534614058","b","l",""]],"trade","NOT A TOPIC"]`,
		`[0,[["6062.0","0.4","1534614059.0009","s","l",""]],"trade","XBT/USD"]`,
	}
	want := []feeds.Tick{
		trade("BTC-USD", 1534614057500, 6060, 0.1, 1),
		{Topic: "BTC-USD", TS: 1534614057700, Fields: []feeds.Field{field("price", 6061), field("size", 0.3)}},
		trade("BTC-USD", 1534614059000, 6062, 0.4, -1),
	}
	s, sink := runGeneric(t, msgs, 0, `
		rename: {XBT/USD: BTC-USD},
		generic: {
			each: "$[1]", topic: "$[3]", ts: "@[2]", ts_unit: s,
			fields: {price: "@[0]", size: "@[1]", side: "@[3]"},
			values: {side: {b: 1, s: -1}}, optional: [side]}`, len(want))
	if diff := feedtest.Equal(sink.Ticks(), want); diff != "" {
		t.Error(diff)
	}
	st := feedtest.FeedStatus(s, "ex")
	if st.Dropped != 2 || st.Restarts != 0 || st.State != feeds.StateRunning || st.LastDropReason != feeds.DropUnmapped && st.LastDropReason != feeds.DropBadTopic {
		t.Errorf("status %+v", st)
	}
}

func TestGenericBadOptions(t *testing.T) {
	t.Parallel()
	for opts, want := range map[string]string{
		`{topic: "@[3]", fields: {price: "@[0]"}}`:                      `generic.topic: "@[3]": @ paths need generic.each`,
		`{each: "$[1]", topic: X, fields: {price: "@[0"}}`:              `generic.fields.price: "@[0": missing ]`,
		`{topic: X, fields: {price: $.p}, values: {side: {b: 1}}}`:      `generic.values: "side" is not in generic.fields`,
		`{topic: X, fields: {price: $.p}, optional: [side]}`:            `generic.optional: "side" is not in generic.fields`,
		`{topic: $.s, topic_template: "x.{}.{}", fields: {price: $.p}}`: `generic.topic_template`,
		`{each: "@[1]", topic: X, fields: {price: "@[0]"}}`:             `generic.each`,
	} {
		_, err := New(feeds.Config{Name: "ex", Options: yamlOptions(t, `{url: "ws://x", format: generic, generic: `+opts+`}`)})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %s", opts, err, want)
		}
	}
}

func contains(s, sub string) bool {
	return len(sub) == 0 || (len(s) >= len(sub) && (s[:len(sub)] == sub || contains(s[1:], sub)))
}

// FuzzGenericMapping fuzzes the generic mapping itself, its JSON paths
// and options, together with the message: a mapping newGeneric accepts
// never panics on any message, and every tick it makes with a valid topic
// is valid.
func FuzzGenericMapping(f *testing.F) {
	f.Add("$.data.s", "$.data.T", "ms", "$.data.p", "", `{"data":{"s":"BTC","T":1700000000000,"p":"1.5"}}`)
	f.Add("$[3]", "@[2]", "s", "@[0]", "$[1]", `[0,[["5.1","0.2","1534614057.321597","s","l",""]],"trade","XBT/USD"]`)
	f.Add("fixed", "", "", "$.x", "", `{"x":1e308}`)
	f.Add("$.a['k.d']", "$.t", "rfc3339", "$.p[0][1]", "", `{"a":{"k.d":"T"},"t":"2024-01-02T03:04:05Z","p":[[0,"7"]]}`)
	f.Add("$.s", "$.t", "ns", "$.p", "$.list", `{"list":[1,2,3],"s":"x","t":-9223372036854775808,"p":"NaN"}`)
	now := time.UnixMilli(1700000000000)
	f.Fuzz(func(t *testing.T, topic, ts, unit, price, each, msg string) {
		g, err := newGeneric(GenericOptions{Topic: topic, TS: ts, TSUnit: unit, Each: each, Fields: map[string]string{"price": price}})
		if err != nil {
			return
		}
		ticks, err := g.mapMessage([]byte(msg), now, nil)
		if err != nil {
			return
		}
		for _, tk := range ticks {
			if !feeds.ValidTopic(tk.Topic) {
				continue // refused by the sink and logged by Run
			}
			if err := tk.Validate(); err != nil {
				t.Fatalf("invalid tick %+v: %v", tk, err)
			}
		}
	})
}
