package dashboard_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tickstream/tickstream/feeds/sim"
)

// Browser tests for what the page reads from the server about each topic:
// the 24-hour reference figures, the pages of /api/topics.

// cellsOf is the text of a board row's change, % and volume cells (empty for
// a row not in the DOM).
func cellsOf(topic string) string {
	return fmt.Sprintf(`(() => { const tr = document.querySelector('#rows tr[data-topic="%s"]'); if (!tr) return ''; const c = {}; for (const td of tr.children) c[td.dataset.col] = td.textContent; return c.chg + ' ' + c.pct + ' ' + c.volume; })()`, topic)
}

// TestChangeAndVolumeFromReference (issue 9, "what traders expect next"):
// change, change % and volume on the board and in the chart header are the
// server's rolling 24-hour figures (ref: change = last − ref.o), labelled
// 24h, for a live row (from its snapshot, then its updates) and for a row
// only polled; a reload shows the same figures.
func TestChangeAndVolumeFromReference(t *testing.T) {
	now := time.Now().UnixMilli()
	ts := startServer(t, false, seedTopics(300)) // ZZ-REF sorts last: polled, not live
	ticks := func(topic string) []pubTick {
		return []pubTick{
			{topic, now - 30*3_600_000, 50, 100}, // older than the period
			{topic, now - 20*3_600_000, 100, 0.25},
			{topic, now - 2*3_600_000, 120.5, 1.5},
			{topic, now - 1000, 95.25, 0.0161},
		}
	}
	ts.publish(t, ticks("REF-A"))
	ts.publish(t, ticks("ZZ-REF"))
	b := newBrowser(t, 1440, 900)
	b.do(t, chromedp.EmulateViewport(1440, 900), chromedp.Navigate(ts.url("/#REF-A")))

	// ref {o: 100, v: 1.7661}: 95.25 − 100.
	b.waitFor(t, "REF-A's 24h figures", 10*time.Second, cellsOf("REF-A")+` === '−4.75 −4.75% 1.77'`)
	b.waitFor(t, "REF-A live", 10*time.Second, `__tickstream.board()['REF-A'].live`)
	b.waitFor(t, "the chart header's 24h figures", 10*time.Second, `document.getElementById('chart-chg').textContent === '−4.75 (−4.75%)' && document.getElementById('chart-vol').textContent === '1.77' && /24h/.test(document.getElementById('chart-ref').textContent)`)
	var heads []string
	b.eval(t, `[...document.querySelectorAll('#board th')].map((th) => th.textContent)`, &heads)
	for _, k := range []int{2, 3, 6} {
		if k >= len(heads) || !contains([]string{"24h Chg", "24h %", "24h Vol"}, heads[k]) {
			t.Errorf("board headers %q: want change, %% and volume labelled 24h", heads)
		}
	}

	// A live update carries the figures forward.
	ts.publish(t, []pubTick{{"REF-A", time.Now().UnixMilli(), 96, 2}})
	b.waitFor(t, "REF-A after a live tick", 10*time.Second, cellsOf("REF-A")+` === '−4.00 −4.00% 3.77'`)
	b.waitFor(t, "the chart header after a live tick", 10*time.Second, `document.getElementById('chart-chg').textContent === '−4.00 (−4.00%)' && document.getElementById('chart-vol').textContent === '3.77'`)

	// ZZ-REF is not subscribed: its figures come from /api/topics.
	b.waitFor(t, "ZZ-REF polled", 10*time.Second, `(() => { const r = __tickstream.board()['ZZ-REF']; return r && !r.live && r.open === 100 && r.chg === -4.75 && Math.abs(r.volume - 1.7661) < 1e-9; })()`)
	if subs := b.subscribed(t); contains(subs, "ZZ-REF") {
		t.Fatalf("ZZ-REF subscribed: %v", subs)
	}

	// A reload shows the same figures.
	b.do(t, chromedp.Reload())
	b.waitFor(t, "REF-A's 24h figures after a reload", 10*time.Second, cellsOf("REF-A")+` === '−4.00 −4.00% 3.77'`)
	b.waitFor(t, "the chart header after a reload", 10*time.Second, `document.getElementById('chart-chg').textContent === '−4.00 (−4.00%)' && document.getElementById('chart-vol').textContent === '3.77'`)
	b.checkNoErrors(t)
}

func (b *browser) subscribed(t *testing.T) []string {
	t.Helper()
	var subs []string
	b.eval(t, `__tickstream.subscribed()`, &subs)
	return subs
}

// TestTopicsFollowPages: /api/topics answers pages; the board lists every
// topic, past the first page.
func TestTopicsFollowPages(t *testing.T) {
	ts := startServer(t, false, seedTopics(1200)) // a page is 1000 topics
	var names []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		names = names[:0]
		for _, ti := range ts.bus.Topics() {
			names = append(names, ti.Topic)
		}
		if len(names) >= 1200+len(sim.DefaultSymbols) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d topics, want 1200 seeded and the simulator's", len(names))
		}
	}
	b := newBrowser(t, 1280, 800)
	b.do(t, chromedp.Navigate(ts.url("/#BTC-USD")))
	b.waitFor(t, "every topic on the board", 20*time.Second, fmt.Sprintf(`(() => { const r = __tickstream.board(); return %s.every((n) => r[n]); })()`, mustJSON(names)))
	var last float64
	b.eval(t, `__tickstream.board()['SYM-999'].price`, &last)
	if last != 1099 {
		t.Errorf("SYM-999 (on the second page) price %v, want 1099", last)
	}
	b.checkNoErrors(t)
}
