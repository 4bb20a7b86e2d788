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

// Browser tests for what traders expect next (issue 9): the depth view.

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
