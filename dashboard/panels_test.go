package dashboard_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream"
)

// Browser tests for what traders expect next (issue 9): the depth view,
// two charts side by side and the VWAP and SMA overlays.

// publishRaw publishes ticks given as JSON objects (any numeric fields).
func (ts *testServer) publishRaw(t *testing.T, ticks []map[string]any) {
	t.Helper()
	ts.publishJSON(t, ticks, len(ticks))
}

type depthView struct {
	Topic   string
	Samples []struct {
		TS                         int64
		Bid, Ask, BidSize, AskSize float64
	}
	Book struct {
		Bids, Asks []struct {
			Level       int
			Price, Size float64
		}
	}
}

// TestDepthView: the selected symbol's best bid and ask sizes are sampled
// from its updates and drawn; a feed that publishes bid_<i>/ask_<i> levels
// gets a ladder, and a level whose size goes to 0 leaves it.
func TestDepthView(t *testing.T) {
	ts := startServer(t, false, nil)
	b := newBrowser(t, 1440, 900)
	b.do(t, chromedp.EmulateViewport(1440, 900), chromedp.Navigate(ts.url("/#BTC-USD")))
	waitBoardMoves(t, b)
	// The simulator publishes bid_size and ask_size with its quotes.
	b.waitFor(t, "BTC-USD depth samples", 15*time.Second, `(() => { const d = __tickstream.depth(); return d.topic === 'BTC-USD' && d.samples.filter((s) => s.bidSize > 0 && s.askSize > 0).length >= 3; })()`)
	var drawn struct {
		Best   string
		Pixels int
		Book   bool
	}
	b.eval(t, `(() => {
		const c = document.getElementById('depth-spark');
		const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
		let n = 0;
		for (let i = 3; i < px.length; i += 4) if (px[i]) n++;
		return {Best: document.getElementById('depth-best').textContent, Pixels: n, Book: !document.getElementById('depth-book').hidden};
	})()`, &drawn)
	if drawn.Pixels == 0 || !bytes.Contains([]byte(drawn.Best), []byte("Bid ")) || drawn.Book {
		t.Errorf("BTC-USD depth: best %q, %d pixels drawn, ladder shown %v; want the sizes drawn and no ladder (the simulator has no book)", drawn.Best, drawn.Pixels, drawn.Book)
	}

	// A feed with a full book: three levels a side.
	now := time.Now().UnixMilli()
	book := func(ts int64, bidSize3 float64) map[string]any {
		return map[string]any{
			"topic": "BOOK-T", "ts": ts, "price": 10.5, "size": 1,
			"bid": 10.4, "ask": 10.6, "bid_size": 5, "ask_size": 7,
			"bid_1": 10.4, "bid_size_1": 5, "bid_2": 10.3, "bid_size_2": 8, "bid_3": 10.2, "bid_size_3": bidSize3,
			"ask_1": 10.6, "ask_size_1": 7, "ask_2": 10.7, "ask_size_2": 9, "ask_3": 10.8, "ask_size_3": 11,
		}
	}
	ts.publishRaw(t, []map[string]any{book(now, 12)})
	b.do(t, chromedp.Evaluate[chromedp.Void](`location.hash = '#BOOK-T'`))
	b.waitFor(t, "the BOOK-T ladder", 15*time.Second, `(() => { const d = __tickstream.depth(); return d.topic === 'BOOK-T' && d.book.bids.length === 3 && d.book.asks.length === 3 && document.querySelectorAll('#depth-book-rows tr').length === 3; })()`)
	var ladder [][]string
	b.eval(t, `[...document.querySelectorAll('#depth-book-rows tr')].map((tr) => [...tr.cells].map((td) => td.textContent))`, &ladder)
	want := [][]string{{"5", "10.40", "10.60", "7"}, {"8", "10.30", "10.70", "9"}, {"12", "10.20", "10.80", "11"}}
	if fmt.Sprint(ladder) != fmt.Sprint(want) {
		t.Errorf("ladder = %v, want %v", ladder, want)
	}
	// Live: bid level 3 emptied, and new best sizes sampled.
	upd := book(now+1000, 0)
	upd["bid_size"], upd["bid_size_1"] = 6, 6
	ts.publishRaw(t, []map[string]any{upd})
	b.waitFor(t, "bid level 3 gone", 10*time.Second, `(() => { const d = __tickstream.depth(); return d.book.bids.length === 2 && d.book.asks.length === 3 && d.samples.some((s) => s.bidSize === 6 && s.askSize === 7); })()`)
	b.eval(t, `[...document.querySelectorAll('#depth-book-rows tr')].map((tr) => [...tr.cells].map((td) => td.textContent))`, &ladder)
	if len(ladder) != 3 || ladder[0][0] != "6" || ladder[2][0] != "" || ladder[2][3] != "11" {
		t.Errorf("ladder after the update = %v; want bid size 6 on top and no third bid", ladder)
	}
	b.checkNoErrors(t)
}

type chart2View struct {
	Topic, Interval string
	Loading         bool
	Bars            []bar
	SeriesLen       int
}

// TestSplitCharts: the split layout shows a second chart with its own
// symbol and interval, live and equal to /api/candles, side by side with
// the main chart; the layout survives a reload.
func TestSplitCharts(t *testing.T) {
	ts := startServer(t, false, nil)
	now := time.Now().UnixMilli()
	ts.publishRaw(t, []map[string]any{{"topic": "SPLIT-T", "ts": now - 3000, "price": 50.25, "size": 2}, {"topic": "SPLIT-T", "ts": now - 2000, "price": 50.75, "size": 1.5}})
	b := newBrowser(t, 1440, 900)
	b.do(t, chromedp.EmulateViewport(1440, 900), chromedp.Navigate(ts.url("/#BTC-USD")))
	waitBoardMoves(t, b)
	b.do(t, chromedp.Click(chromedp.CSS(`#split button[data-split="2"]`)))
	b.waitFor(t, "the second chart", 10*time.Second, `!document.getElementById('chart2-pane').hidden && __tickstream.chart2().topic !== null`)
	b.do(t, chromedp.Evaluate[chromedp.Void](`(() => {
		const s = document.getElementById('chart2-interval'); s.value = '1s'; s.dispatchEvent(new Event('change'));
		const i = document.getElementById('chart2-topic'); i.value = 'SPLIT-T'; i.dispatchEvent(new Event('change'));
	})()`))
	b.waitFor(t, "SPLIT-T on the second chart", 15*time.Second, `(() => { const c = __tickstream.chart2(); return c.topic === 'SPLIT-T' && c.interval === '1s' && !c.loading && c.bars.length === 2 && c.seriesLen === 2; })()`)
	b.waitFor(t, "SPLIT-T subscribed", 10*time.Second, `__tickstream.subscribed().includes('SPLIT-T')`)
	ts.publishRaw(t, []map[string]any{{"topic": "SPLIT-T", "ts": time.Now().UnixMilli(), "price": 51.5, "size": 0.25}})
	b.waitFor(t, "the live tick on the second chart", 10*time.Second, `(() => { const c = __tickstream.chart2(); return c.bars.length === 3 && c.bars[2].c === 51.5 && c.seriesLen === 3; })()`)
	var cmp struct {
		Page, Server []bar
		Main         string
		Side         bool
	}
	b.do(t, chromedp.Evaluate[chromedp.Void](`fetch('api/candles?topic=SPLIT-T&interval=1s&limit=500').then((r) => r.json()).then((s) => { window.__srv = s; })`))
	b.waitFor(t, "the server's candles", 10*time.Second, `!!window.__srv`)
	b.eval(t, `(() => {
		const a = document.getElementById('chart').getBoundingClientRect(), c = document.getElementById('chart2').getBoundingClientRect();
		return {Page: __tickstream.chart2(500).bars, Server: window.__srv.map((x) => ({t: x.t, o: x.o, h: x.h, l: x.l, c: x.c, v: x.v, n: x.n})),
			Main: __tickstream.chart(1).topic, Side: a.width > 200 && c.width > 200 && c.left >= a.right - 2 && Math.abs(c.top - a.top) < 60};
	})()`, &cmp)
	if fmt.Sprint(cmp.Page) != fmt.Sprint(cmp.Server) || cmp.Main != "BTC-USD" || !cmp.Side {
		t.Errorf("second chart bars %v, /api/candles %v; main chart %q; side by side %v", cmp.Page, cmp.Server, cmp.Main, cmp.Side)
	}
	// The layout is remembered.
	b.do(t, chromedp.Reload())
	b.waitFor(t, "the split layout after a reload", 15*time.Second, `(() => { const c = window.__tickstream && __tickstream.chart2(); return c && !document.getElementById('chart2-pane').hidden && c.topic === 'SPLIT-T' && c.interval === '1s' && !c.loading && c.bars.length === 3 && document.querySelector('#split button[data-split="2"]').getAttribute('aria-pressed') === 'true'; })()`)
	b.waitFor(t, "SPLIT-T subscribed after the reload", 10*time.Second, `__tickstream.subscribed().includes('SPLIT-T')`)
	b.do(t, chromedp.Click(chromedp.CSS(`#split button[data-split="1"]`)))
	b.waitFor(t, "one chart again", 10*time.Second, `document.getElementById('chart2-pane').hidden && localStorage.getItem('tickstream.split') === '1' && __tickstream.layout().split === 1`)
	b.checkNoErrors(t)
}

// seedOverlayTopic publishes 150 ticks of OVL-T, one a second, ending a
// few seconds ago, with varying sizes: a quiet topic to compare overlays on.
func seedOverlayTopic(bus *stream.Bus) {
	rng := rand.New(rand.NewPCG(3, 5))
	sink := bus.Sink("seed")
	end := time.Now().Add(-3 * time.Second)
	p := 100.0
	for i := 150; i > 0; i-- {
		p = math.Round((p+rng.NormFloat64()*0.4)*100) / 100
		tick := feeds.Tick{Topic: "OVL-T", TS: end.Add(-time.Duration(i) * time.Second).UnixMilli()}
		tick.Set(feeds.FieldPrice, p)
		tick.Set(feeds.FieldSize, math.Round(rng.ExpFloat64()*300)/100+0.01)
		_ = sink.Publish(tick)
	}
}

// overlayCheck recomputes the overlays from /api/candles in the page and
// compares them with the points the chart's line series hold.
const overlayCheck = `fetch('api/candles?topic=OVL-T&interval=1s&limit=500').then((r) => r.json()).then((bars) => {
	const o = __tickstream.overlays(), z = __tickstream.tz();
	const time = (t) => Math.floor(t / 1000) + z.offsetSec;
	const sma = [], vwap = [];
	for (let i = o.period - 1; i < bars.length; i++) {
		let s = 0;
		for (let j = i - o.period + 1; j <= i; j++) s += bars[j].c;
		sma.push({time: time(bars[i].t), value: s / o.period});
	}
	let pv = 0, vol = 0, day = null;
	for (const b of bars) {
		const d = Math.floor((b.t / 1000 + z.offsetSec) / 86400);
		if (d !== day) { day = d; pv = 0; vol = 0; }
		pv += (b.h + b.l + b.c) / 3 * b.v; vol += b.v;
		if (vol > 0) vwap.push({time: time(b.t), value: pv / vol});
	}
	const diff = (want, got) => {
		if (want.length !== got.length) return 'length ' + got.length + ', want ' + want.length;
		for (let i = 0; i < want.length; i++) {
			if (want[i].time !== got[i].time || Math.abs(want[i].value - got[i].value) > 1e-9 * Math.abs(want[i].value)) return 'point ' + i + ': ' + JSON.stringify(got[i]) + ', want ' + JSON.stringify(want[i]);
		}
		return '';
	};
	return {bars: bars.length, period: o.period, sma: o.sma ? diff(sma, o.main.sma) : 'off', vwap: o.vwap ? diff(vwap, o.main.vwap) : 'off'};
})`

// TestOverlays: VWAP and SMA, toggled from the chart header, are computed
// from the chart's bars and equal a computation from /api/candles; the
// choice and the period survive a reload.
func TestOverlays(t *testing.T) {
	ts := startServer(t, false, seedOverlayTopic)
	b := newBrowser(t, 1440, 900)
	b.do(t, chromedp.EmulateViewport(1440, 900), chromedp.Navigate(ts.url("/#OVL-T")))
	b.waitFor(t, "the page", 15*time.Second, `!!window.__tickstream`)
	b.do(t, chromedp.Click(chromedp.CSS(`#intervals button[data-interval="1s"]`)))
	b.waitFor(t, "the OVL-T chart", 15*time.Second, `(() => { const c = __tickstream.chart(500); return c.topic === 'OVL-T' && c.interval === '1s' && !c.loading && c.bars.length === 150 && c.seriesLastTime !== null; })()`)
	var res struct {
		Bars, Period int
		SMA, VWAP    string
	}
	check := func(wantPeriod int) {
		t.Helper()
		ctx, cancel := contextWithTimeout(b, 10*time.Second)
		defer cancel()
		out, err := chromedp.Run(ctx, chromedp.Evaluate[json.RawMessage](overlayCheck, chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatal(err)
		}
		if res.Bars != 150 || res.Period != wantPeriod || res.SMA != "" || res.VWAP != "" {
			t.Errorf("overlays against /api/candles: %+v; want %d bars, period %d and no difference", res, 150, wantPeriod)
		}
	}
	b.do(t, chromedp.Click(chromedp.CSS(`#ov-vwap`)), chromedp.Click(chromedp.CSS(`#ov-sma`)))
	b.do(t, chromedp.Evaluate[chromedp.Void](`(() => { const s = document.getElementById('ov-period'); s.value = '10'; s.dispatchEvent(new Event('change')); })()`))
	b.waitFor(t, "both overlays drawn", 10*time.Second, `(() => { const o = __tickstream.overlays(); return o.period === 10 && o.main.sma.length === 141 && o.main.vwap.length === 150; })()`)
	check(10)

	// A live tick moves the last bar and both overlays with it.
	ts.publishRaw(t, []map[string]any{{"topic": "OVL-T", "ts": time.Now().UnixMilli(), "price": 123.45, "size": 40}})
	b.waitFor(t, "the live bar", 10*time.Second, `(() => { const c = __tickstream.chart(1); return c.bars[0].c === 123.45; })()`)
	b.waitFor(t, "the overlays of the live bar", 10*time.Second, `__tickstream.overlays().main.sma.length === 142`)
	ctx, cancel := contextWithTimeout(b, 10*time.Second)
	out, err := chromedp.Run(ctx, chromedp.Evaluate[json.RawMessage](overlayCheck, chromedp.EvalAwaitPromise))
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	_ = json.Unmarshal(out, &res)
	if res.Bars != 151 || res.SMA != "" || res.VWAP != "" {
		t.Errorf("overlays after a live tick: %+v; want 151 bars and no difference", res)
	}

	// Remembered: both on, period 10.
	b.do(t, chromedp.Reload())
	b.waitFor(t, "the overlays after a reload", 15*time.Second, `(() => { const o = window.__tickstream && __tickstream.overlays(); const c = o && __tickstream.chart(1); return o && o.vwap && o.sma && o.period === 10 && c.interval === '1s' && !c.loading && o.main.sma.length === 142 && document.getElementById('ov-vwap').getAttribute('aria-pressed') === 'true' && document.getElementById('ov-period').value === '10'; })()`)
	// Off: the series are emptied.
	b.do(t, chromedp.Click(chromedp.CSS(`#ov-vwap`)))
	b.waitFor(t, "VWAP off", 10*time.Second, `(() => { const o = __tickstream.overlays(); return !o.vwap && o.main.vwap.length === 0 && o.main.sma.length === 142 && JSON.parse(localStorage.getItem('tickstream.overlays')).vwap === false; })()`)
	b.checkNoErrors(t)
}

func contextWithTimeout(b *browser, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(b.ctx, d)
}
