package dashboard_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Browser tests for what traders expect next (issue 9): the depth view,
// two charts side by side.

// publishRaw publishes ticks given as JSON objects (any numeric fields).
func (ts *testServer) publishRaw(t *testing.T, ticks []map[string]any) {
	t.Helper()
	body, _ := json.Marshal(ticks)
	res, err := http.Post(ts.url("/api/publish"), "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out struct {
		Accepted int `json:"accepted"`
	}
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil || res.StatusCode != 200 || out.Accepted != len(ticks) {
		t.Fatalf("publish: status %d, accepted %d of %d, err %v", res.StatusCode, out.Accepted, len(ticks), err)
	}
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
