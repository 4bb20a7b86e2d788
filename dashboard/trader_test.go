package dashboard_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/server"
)

// Browser tests for what a trader hits in the first hour (issue 9): a board
// that subscribes to what it shows, flashes without animations, one time
// zone, stable keyboard focus and rows under the pointer, current figures,
// time & sales per trade, accessibility (axe-core), feed status and a
// persisted watchlist.

// seedTopics publishes one tick to n topics SYM-000… so that they exist.
func seedTopics(n int) func(*stream.Bus) {
	return func(bus *stream.Bus) {
		sink := bus.Sink("seed")
		now := time.Now().UnixMilli()
		for i := 0; i < n; i++ {
			tick := feeds.Tick{Topic: fmt.Sprintf("SYM-%03d", i), TS: now}
			tick.Set(feeds.FieldPrice, 100+float64(i))
			tick.Set(feeds.FieldSize, 1)
			_ = sink.Publish(tick)
		}
	}
}

func emulate(cmd func(ctx context.Context, t *chromedp.Target) error) chromedp.Action[chromedp.Void] {
	return chromedp.Func(cmd)
}

func timezone(id string) chromedp.Action[chromedp.Void] {
	return emulate(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, emulation.SetTimezoneOverride, emulation.SetTimezoneOverrideParams{TimezoneID: id})
		return err
	})
}

func reducedMotion() chromedp.Action[chromedp.Void] {
	return emulate(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-reduced-motion", Value: "reduce"}},
		})
		return err
	})
}

func mouseMove(x, y float64) chromedp.Action[chromedp.Void] {
	return emulate(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, input.DispatchMouseEvent, input.DispatchMouseEventParams{Type: input.DispatchMouseEventTypeMouseMoved, X: x, Y: y})
		return err
	})
}

func key(k string) chromedp.Action[chromedp.Void] { return chromedp.KeyEvent(k) }

// TestBoardSubscribesToWhatIsShown (bug 1): with 300 topics the page does
// not subscribe to `*` but to the rows in view, the watchlist and the
// selected symbol; the other rows still show the server's figures (polled),
// and a row scrolled into view becomes live.
func TestBoardSubscribesToWhatIsShown(t *testing.T) {
	ts := startServer(t, false, seedTopics(300))
	b := newBrowser(t, 1280, 800)
	b.do(t, chromedp.Navigate(ts.url("/#BTC-USD")))
	b.waitFor(t, "300 seeded rows with prices", 15*time.Second, `(() => { const r = __tickstream.board(); return Object.keys(r).length >= 308 && r['SYM-299'] && r['SYM-299'].price === 399; })()`)
	b.waitFor(t, "a subscription", 10*time.Second, `__tickstream.subscribed().length > 0 && __tickstream.board()['AAPL'].live`)
	var subs []string
	b.eval(t, `__tickstream.subscribed()`, &subs)
	for _, s := range subs {
		if strings.Contains(s, "*") {
			t.Fatalf("subscribed to the pattern %q; want the rows shown only", s)
		}
	}
	if len(subs) > 120 || !contains(subs, "BTC-USD") || contains(subs, "SYM-299") {
		t.Fatalf("subscribed to %d topics (%v…): want the visible rows and the selected one, not SYM-299", len(subs), subs[:min(len(subs), 10)])
	}
	// The last row is not subscribed but shows its price from the poll.
	// (The board is windowed: that row is not in the DOM until scrolled to.)
	var inDOM bool
	b.eval(t, `!!document.querySelector('#rows tr[data-topic="SYM-299"]')`, &inDOM)
	if row := b.board(t)["SYM-299"]; row.Price != 399 || inDOM {
		t.Errorf("SYM-299 = %+v (in the DOM: %v), want price 399 from /api/topics and not rendered", row, inDOM)
	}
	// Scroll to the bottom: SYM-299 becomes live and follows its ticks.
	b.do(t, chromedp.Evaluate[chromedp.Void](`(() => { const w = document.getElementById('table-wrap'); w.scrollTop = w.scrollHeight; })()`))
	b.waitFor(t, "SYM-299 subscribed after scrolling", 10*time.Second, `__tickstream.subscribed().includes('SYM-299') && __tickstream.board()['SYM-299'].live`)
	ts.publish(t, []pubTick{{"SYM-299", time.Now().UnixMilli(), 401.5, 1}})
	b.waitFor(t, "SYM-299's live tick", 10*time.Second, `document.querySelector('#rows tr[data-topic="SYM-299"] td[data-col="price"]').textContent === '401.50'`)
	b.waitFor(t, "AAPL unsubscribed after scrolling away", 10*time.Second, `!__tickstream.subscribed().includes('AAPL')`)
	if st := b.stats(t); st.Gaps != 0 || st.Overlaps != 0 {
		t.Errorf("stats = %+v, want no gaps or overlaps", st)
	}
	b.checkNoErrors(t)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// flashProbe counts flash classes added to board cells and the CSS
// animations running on the board, from now on.
const flashProbe = `(() => {
	window.__flash = {classes: 0, animations: 0};
	new MutationObserver((ms) => { for (const m of ms) if (m.target.classList && (m.target.classList.contains('fl-up') || m.target.classList.contains('fl-down'))) window.__flash.classes++; })
		.observe(document.getElementById('rows'), {subtree: true, attributes: true, attributeFilter: ['class']});
	const tick = () => { window.__flash.animations = Math.max(window.__flash.animations, document.getElementById('rows').getAnimations({subtree: true}).length); requestAnimationFrame(tick); };
	tick();
})()`

// TestFlashWithoutAnimations (bug 1): up and down ticks flash the price
// cell with a class, never with a CSS animation per cell.
func TestFlashWithoutAnimations(t *testing.T) {
	ts := startServer(t, false, nil)
	b := newBrowser(t, 1280, 800)
	b.do(t, chromedp.Navigate(ts.url("/#BTC-USD")))
	waitBoardMoves(t, b)
	b.do(t, chromedp.Evaluate[chromedp.Void](flashProbe))
	b.waitFor(t, "flashes", 10*time.Second, `window.__flash.classes >= 5`)
	var got struct{ Classes, Animations int }
	b.eval(t, `window.__flash`, &got)
	if got.Animations != 0 {
		t.Errorf("%d CSS animations ran on the board; want flashes without animations", got.Animations)
	}
	b.checkNoErrors(t)
}

// TestReducedMotion (accessibility): with prefers-reduced-motion the board
// does not flash at all.
func TestReducedMotion(t *testing.T) {
	ts := startServer(t, false, nil)
	b := newBrowser(t, 1280, 800)
	b.do(t, reducedMotion(), chromedp.Navigate(ts.url("/#BTC-USD")))
	waitBoardMoves(t, b)
	b.do(t, chromedp.Evaluate[chromedp.Void](flashProbe))
	before := b.board(t)
	b.waitFor(t, "more price changes", 10*time.Second, fmt.Sprintf(`(() => {
		const before = %s, now = __tickstream.board();
		return Object.keys(before).filter((k) => now[k] && now[k].price !== before[k]).length >= 5;
	})()`, mustJSON(pricesOf(before))))
	var got struct{ Classes, Animations int }
	b.eval(t, `window.__flash`, &got)
	if got.Classes != 0 || got.Animations != 0 {
		t.Errorf("with prefers-reduced-motion: %d flash classes and %d animations; want none", got.Classes, got.Animations)
	}
	b.checkNoErrors(t)
}

// TestOneTimeZone (bug 4): with the browser in New York, the clock, the
// chart's time axis and time & sales use one zone, labelled; UTC is a
// choice that is remembered.
func TestOneTimeZone(t *testing.T) {
	ts := startServer(t, false, nil)
	b := newBrowser(t, 1440, 900)
	b.do(t, timezone("America/New_York"), chromedp.Navigate(ts.url("/#BTC-USD")))
	b.waitFor(t, "the chart and the tape", 15*time.Second, `(() => { const c = __tickstream.chart(1); return !c.loading && c.bars.length && c.seriesLastTime !== null && __tickstream.tape().some((x) => !x.mark); })()`)

	type view struct {
		Clock, Label, TapeHead, TapeTime, TapeWant string
		Shift                                      int64 // chart time − bar time, seconds
		NYOffset                                   int64
		Mode                                       string
	}
	read := func() view {
		var v view
		b.eval(t, `(() => {
			const c = __tickstream.chart(1), z = __tickstream.tz();
			const row = document.querySelector('#tape-rows tr[data-seq]');
			const ts = Number(row.dataset.ts);
			const nyParts = new Intl.DateTimeFormat('en-GB', {timeZone: z.mode === 'utc' ? 'UTC' : 'America/New_York', hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23'}).format(new Date(ts));
			const d = new Date(c.bars[0].t);
			const ny = new Date(d.toLocaleString('en-US', {timeZone: 'America/New_York'}));
			const utc = new Date(d.toLocaleString('en-US', {timeZone: 'UTC'}));
			return {Clock: document.getElementById('clock').textContent, Label: z.label, Mode: z.mode,
				TapeHead: document.getElementById('tape-tz').textContent, TapeTime: row.firstChild.textContent, TapeWant: nyParts,
				Shift: c.seriesLastTime - Math.floor(c.bars[0].t / 1000), NYOffset: Math.round((ny - utc) / 1000)};
		})()`, &v)
		return v
	}
	v := read()
	if v.Mode != "local" || (v.Label != "EST" && v.Label != "EDT") {
		t.Fatalf("default zone = %s %q, want local, labelled EST or EDT", v.Mode, v.Label)
	}
	if !strings.HasSuffix(v.Clock, " "+v.Label) || !strings.Contains(v.TapeHead, v.Label) {
		t.Errorf("clock %q and tape header %q: want both labelled %s", v.Clock, v.TapeHead, v.Label)
	}
	if v.Shift != v.NYOffset {
		t.Errorf("chart axis shifted by %d s, want New York's offset %d s", v.Shift, v.NYOffset)
	}
	if !strings.HasPrefix(v.TapeTime, v.TapeWant) {
		t.Errorf("tape time %q, want New York time %s", v.TapeTime, v.TapeWant)
	}

	// Choose UTC: everything follows, and it is remembered.
	b.do(t, chromedp.SetValue(chromedp.CSS("#tz"), "utc"), chromedp.Evaluate[chromedp.Void](`document.getElementById('tz').dispatchEvent(new Event('change'))`))
	b.waitFor(t, "UTC everywhere", 5*time.Second, `(() => { const c = __tickstream.chart(1); return __tickstream.tz().mode === 'utc' && c.seriesLastTime === Math.floor(c.bars[0].t / 1000) && / UTC$/.test(document.getElementById('clock').textContent); })()`)
	v = read()
	if !strings.Contains(v.TapeHead, "UTC") || !strings.HasPrefix(v.TapeTime, v.TapeWant) {
		t.Errorf("in UTC: tape header %q, time %q (want %s)", v.TapeHead, v.TapeTime, v.TapeWant)
	}
	b.do(t, chromedp.Reload())
	b.waitFor(t, "UTC after a reload", 10*time.Second, `window.__tickstream && __tickstream.tz().mode === 'utc' && document.getElementById('tz').value === 'utc'`)
	b.checkNoErrors(t)
}

// TestFocusAndPointerStableOnResort (bug 5, accessibility): the board is one
// tab stop; arrow keys move the selection, which screen readers get through
// aria-activedescendant and aria-selected; sorting works from the
// keyboard; re-sorts keep the focus; rows do not move under the pointer.
func TestFocusAndPointerStableOnResort(t *testing.T) {
	ts := startServer(t, false, nil)
	b := newBrowser(t, 1440, 900)
	b.do(t, chromedp.EmulateViewport(1440, 900), chromedp.Navigate(ts.url("/#AAPL")))
	waitBoardMoves(t, b)

	var tabStops int
	b.eval(t, `document.querySelectorAll('#rows [tabindex], #rows a, #rows button').length`, &tabStops)
	if tabStops != 0 {
		t.Errorf("%d tab stops inside the board's rows; want one for the whole board", tabStops)
	}
	// Arrow keys in the board, sorted by symbol: AAPL → BTC-USD → DOGE-USD.
	b.do(t, chromedp.Focus(chromedp.CSS(`#board`)), key(kb.ArrowDown), key(kb.ArrowDown))
	var sel string
	b.eval(t, `decodeURIComponent(location.hash.slice(1))`, &sel)
	if sel != "DOGE-USD" {
		t.Fatalf("two arrow-downs from AAPL selected %q, want DOGE-USD", sel)
	}
	// Sort by change from the keyboard: it changes with every tick, so the
	// board re-sorts twice a second. Then back to the board.
	b.do(t, chromedp.Focus(chromedp.CSS(`#board th[data-key="pct"] button`)), key("\r"))
	b.waitFor(t, "sorted by change", 5*time.Second, `document.querySelector('#board th[data-key="pct"]').getAttribute('aria-sort') !== 'none'`)
	b.do(t, chromedp.Focus(chromedp.CSS(`#board`)))
	check := func(when string) {
		t.Helper()
		var st struct {
			Focused  bool
			Active   string
			Selected []string
			Hash     string
		}
		b.eval(t, `(() => {
			const a = document.getElementById('board').getAttribute('aria-activedescendant');
			const el = a && document.getElementById(a);
			return {Focused: document.activeElement === document.getElementById('board'), Active: el ? el.dataset.topic : '',
				Selected: [...document.querySelectorAll('#rows tr[aria-selected="true"]')].map((r) => r.dataset.topic), Hash: decodeURIComponent(location.hash.slice(1))};
		})()`, &st)
		if !st.Focused || st.Active != sel || len(st.Selected) != 1 || st.Selected[0] != sel || st.Hash != sel {
			t.Errorf("%s: focus on the board %v, active row %q, aria-selected %v, selected %q; want focus kept on %q", when, st.Focused, st.Active, st.Selected, st.Hash, sel)
		}
	}
	check("after the arrow keys")
	// Let it re-sort several times.
	order := func() []string {
		var o []string
		b.eval(t, `[...document.querySelectorAll('#rows tr')].map((r) => r.dataset.topic)`, &o)
		return o
	}
	first := order()
	b.waitFor(t, "a re-sort", 10*time.Second, fmt.Sprintf(`JSON.stringify([...document.querySelectorAll('#rows tr')].map((r) => r.dataset.topic)) !== %q`, mustJSON(first)))
	check("after re-sorts")

	// With the pointer over the rows, the order holds still.
	var box struct{ X, Y float64 }
	b.eval(t, `(() => { const r = document.querySelector('#rows tr:nth-child(3)').getBoundingClientRect(); return {X: r.left + 40, Y: r.top + r.height / 2}; })()`, &box)
	b.do(t, mouseMove(box.X, box.Y))
	time.Sleep(300 * time.Millisecond) // a frame in which a pending re-sort may land
	held := order()
	time.Sleep(2500 * time.Millisecond) // five re-sort periods
	if got := order(); mustJSON(got) != mustJSON(held) {
		t.Errorf("rows moved under the pointer:\nbefore %v\nafter  %v", held, got)
	}
	b.do(t, mouseMove(5, 5))
	b.waitFor(t, "re-sorting after the pointer left", 10*time.Second, fmt.Sprintf(`JSON.stringify([...document.querySelectorAll('#rows tr')].map((r) => r.dataset.topic)) !== %q`, mustJSON(held)))
	b.checkNoErrors(t)
}

// TestFiguresAreCurrent (bug 6): ticks/s is live, not the figure read at
// page load; sizes and prices keep their decimals; no −0.00 %; an unknown
// symbol and a filter without a match say so.
func TestFiguresAreCurrent(t *testing.T) {
	ts := startServer(t, false, nil)
	// A burst, then silence: the page loads while /api/topics still counts
	// the burst in its rate.
	now := time.Now().UnixMilli()
	var burst []pubTick
	for i := 0; i < 50; i++ {
		burst = append(burst, pubTick{"TEST-R", now + int64(i), 10, 1})
	}
	ts.publish(t, burst)
	ts.publish(t, []pubTick{{"TEST-Z", now, 100000, 1}, {"TEST-D", now, 0.5, 1}})
	b := newBrowser(t, 1440, 900)
	b.do(t, chromedp.EmulateViewport(1440, 900), chromedp.Navigate(ts.url("/#NOPE-1")))

	b.waitFor(t, "the unknown symbol's message", 10*time.Second, `/Unknown symbol/.test(document.getElementById('chart-msg').textContent) && !document.getElementById('chart-msg').hidden`)
	b.waitFor(t, "TEST-R's rate falls to 0.0 after the burst", 10*time.Second, `(() => { const r = document.querySelector('#rows tr[data-topic="TEST-R"] td[data-col="rate"]'); return r && r.textContent === '0.0'; })()`)

	b.waitFor(t, "TEST-Z and TEST-D live", 10*time.Second, `(() => { const r = __tickstream.board(); return r['TEST-Z'] && r['TEST-Z'].live && r['TEST-D'] && r['TEST-D'].live; })()`)
	ts.publish(t, []pubTick{{"TEST-Z", now + 1, 99999.5, 1}, {"TEST-D", now + 1, 0.51234, 1}})
	b.waitFor(t, "TEST-Z's tiny move", 10*time.Second, `__tickstream.board()['TEST-Z'].price === 99999.5`)
	b.waitFor(t, "TEST-D's cells", 10*time.Second, `__tickstream.board()['TEST-D'].cells.price === '0.51234'`)
	row := b.board(t)["TEST-Z"]
	if got := row.Cells["pct"]; got != "0.00%" {
		t.Errorf("TEST-Z change %% = %q, want 0.00%% (no sign on a move that rounds to zero)", got)
	}
	if got := row.Cells["chg"]; got != "−0.50" {
		t.Errorf("TEST-Z change = %q, want −0.50", got)
	}

	// Sizes below 0.005 keep their digits in time & sales.
	ts.publish(t, []pubTick{{"TEST-D", now + 2, 0.51, 0.0012}})
	b.do(t, chromedp.Evaluate[chromedp.Void](`__tickstream.select('TEST-D')`))
	b.waitFor(t, "the small trade in time & sales", 10*time.Second, `[...document.querySelectorAll('#tape-rows tr[data-seq]')].some((r) => r.children[2].textContent === '0.0012' && r.children[1].textContent === '0.51000')`)

	// A filter that matches nothing says so.
	b.do(t, chromedp.SendKeys(chromedp.CSS("#filter"), "zzzz"))
	b.waitFor(t, "the no-match message", 5*time.Second, `!document.getElementById('empty').hidden && /No symbols match/.test(document.getElementById('empty').textContent) && document.querySelectorAll('#rows tr').length === 0`)
	b.checkNoErrors(t)
}

// TestTimeAndSales (bug 7): time & sales shows one row per trade, filled
// from /api/history on selection, and is on the page below 1000 px.
func TestTimeAndSales(t *testing.T) {
	ts := startServer(t, false, nil)
	now := time.Now().UnixMilli()
	ts.publish(t, []pubTick{
		{"TEST-T", now, 10.5, 1}, {"TEST-T", now + 1, 10.25, 2}, {"TEST-T", now + 2, 10.75, 3},
		{"TEST-T", now + 3, 10.5, 4}, {"TEST-T", now + 4, 11, 5},
	})
	b := newBrowser(t, 900, 900)
	b.do(t, chromedp.EmulateViewport(900, 900), chromedp.Navigate(ts.url("/#TEST-T")))
	b.waitFor(t, "five trades in time & sales", 10*time.Second, `document.querySelectorAll('#tape-rows tr[data-seq]').length === 5`)
	var sizes []string
	b.eval(t, `[...document.querySelectorAll('#tape-rows tr[data-seq]')].map((r) => r.children[2].textContent)`, &sizes)
	if mustJSON(sizes) != `["5","4","3","2","1"]` {
		t.Errorf("sizes newest first = %v, want 5 4 3 2 1", sizes)
	}
	var vis struct{ H, W float64 }
	b.eval(t, `(() => { const r = document.getElementById('tape').getBoundingClientRect(); return {H: r.height, W: r.width}; })()`, &vis)
	if vis.H < 50 || vis.W < 200 {
		t.Errorf("time & sales at 900 px is %vx%v px; want it on the page", vis.W, vis.H)
	}
	// Three trades in one throttle window: three rows, not one.
	ts.publish(t, []pubTick{{"TEST-T", now + 5, 11.25, 6}, {"TEST-T", now + 6, 11.5, 7}, {"TEST-T", now + 7, 11.75, 8}})
	b.waitFor(t, "eight trades", 10*time.Second, `document.querySelectorAll('#tape-rows tr[data-seq]').length === 8 && document.querySelector('#tape-rows tr[data-seq]').children[1].textContent === '11.75'`)
	b.checkNoErrors(t)
}

// TestAccessibility: axe-core finds no serious or critical violation, in
// the dark and the light theme.
func TestAccessibility(t *testing.T) {
	axe, err := os.ReadFile(filepath.Join("test", "vendor", "axe.min.js"))
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, false, nil)
	b := newBrowser(t, 1440, 900)
	b.do(t, chromedp.EmulateViewport(1440, 900), chromedp.Navigate(ts.url("/#BTC-USD")))
	waitBoardMoves(t, b)
	b.waitFor(t, "the chart", 10*time.Second, `!__tickstream.chart(1).loading`)
	// The split layout, the overlays and the depth view are checked too.
	b.do(t, chromedp.Click(chromedp.CSS(`#split button[data-split="2"]`)), chromedp.Click(chromedp.CSS(`#ov-vwap`)), chromedp.Click(chromedp.CSS(`#ov-sma`)))
	b.waitFor(t, "the second chart", 10*time.Second, `(() => { const c = __tickstream.chart2(); return !document.getElementById('chart2-pane').hidden && c.topic && !c.loading; })()`)
	b.do(t, chromedp.Evaluate[chromedp.Void](string(axe)))
	for _, theme := range []string{"dark", "light"} {
		b.do(t, chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => { if (document.documentElement.dataset.theme !== %q) document.getElementById('theme').click(); })()`, theme)))
		time.Sleep(500 * time.Millisecond) // flashes fade, colours settle
		type violation struct {
			ID     string `json:"id"`
			Impact string `json:"impact"`
			Help   string `json:"help"`
			Nodes  []struct {
				Target  []any  `json:"target"`
				Summary string `json:"failureSummary"`
			} `json:"nodes"`
		}
		ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
		res, err := chromedp.Run(ctx, chromedp.Evaluate[[]violation](`axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}, rules: {'region': {enabled: false}}}).then((r) => r.violations)`, chromedp.EvalAwaitPromise))
		cancel()
		if err != nil {
			t.Fatalf("%s: axe: %v", theme, err)
		}
		var bad []string
		for _, v := range res {
			if v.Impact != "serious" && v.Impact != "critical" {
				t.Logf("%s: axe (%s) %s: %s (%d nodes)", theme, v.Impact, v.ID, v.Help, len(v.Nodes))
				continue
			}
			var where []string
			for i, n := range v.Nodes {
				if i == 3 {
					where = append(where, "…")
					break
				}
				where = append(where, fmt.Sprint(n.Target)+": "+n.Summary)
			}
			bad = append(bad, fmt.Sprintf("%s (%s) %s: %d nodes: %s", v.ID, v.Impact, v.Help, len(v.Nodes), strings.Join(where, " | ")))
		}
		sort.Strings(bad)
		if len(bad) > 0 {
			t.Errorf("%s theme: axe-core found %d serious or critical violations:\n%s", theme, len(bad), strings.Join(bad, "\n"))
		}
	}
	b.checkNoErrors(t)
}

// fakeFeeds reports feed states and, per topic, the feed that last
// published it (feeds.SourceReporter, as the supervisor does).
type fakeFeeds struct {
	mu      sync.Mutex
	sts     []feeds.Status
	sources map[string][]string // topic -> feed, then the primaries it stands in for
}

func (f *fakeFeeds) Statuses() []feeds.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]feeds.Status(nil), f.sts...)
}
func (f *fakeFeeds) Ready() bool { return true }

func (f *fakeFeeds) SourceOf(topic string) (string, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	src := f.sources[topic]
	if len(src) == 0 {
		return "nyse", nil
	}
	return src[0], src[1:]
}

// TestFeedStatus: a feed down, or a backup standing in for a primary, shows
// in a status strip and on the symbols whose feed it is (from /api/topics
// feed and backup_for), not on the others; it clears when the feeds
// recover.
func TestFeedStatus(t *testing.T) {
	ff := &fakeFeeds{
		sts: []feeds.Status{
			{Name: "coinbase", Type: "websocket", State: feeds.State("failed"), LastError: "dial: refused", Backup: "sim", ActiveBackup: true},
			{Name: "kraken", Type: "websocket", State: feeds.State("degraded")},
			{Name: "nyse", Type: "replay", State: feeds.State("running")},
			{Name: "sim", Type: "sim", State: feeds.State("running"), StandsInFor: []string{"coinbase"}},
		},
		sources: map[string][]string{"BTC-USD": {"sim", "coinbase"}, "ETH-USD": {"kraken"}},
	}
	ts := startServerWith(t, func(c *server.Config) { c.Feeds = ff }, nil)
	b := newBrowser(t, 1440, 900)
	b.do(t, chromedp.EmulateViewport(1440, 900), chromedp.Navigate(ts.url("/#BTC-USD")))
	waitBoardMoves(t, b)
	b.waitFor(t, "the feed strip", 10*time.Second, `!document.getElementById('feed-strip').hidden && /sim stands in for coinbase/.test(document.getElementById('feed-strip').textContent) && /coinbase failed/.test(document.getElementById('feed-strip').textContent) && /kraken degraded/.test(document.getElementById('feed-strip').textContent)`)
	warned := `[...document.querySelectorAll('#rows tr')].filter((tr) => tr.querySelector('.feed-warn')).map((tr) => tr.dataset.topic).sort().join()`
	b.waitFor(t, "the warning on BTC-USD (a backup stands in) and ETH-USD (its feed is degraded) only", 10*time.Second,
		warned+` === 'BTC-USD,ETH-USD' && /stands in for coinbase/.test(document.querySelector('#rows tr[data-topic="BTC-USD"] .feed-warn').title) && /kraken degraded/.test(document.querySelector('#rows tr[data-topic="ETH-USD"] .feed-warn').title) && /stands in/.test(document.getElementById('chart-warn').textContent)`)
	b.do(t, chromedp.Evaluate[chromedp.Void](`__tickstream.select('AAPL')`))
	b.waitFor(t, "no chart warning on AAPL", 5*time.Second, `document.getElementById('chart-warn').hidden`)
	b.do(t, chromedp.Evaluate[chromedp.Void](`__tickstream.select('ETH-USD')`))
	b.waitFor(t, "the chart warning on ETH-USD", 5*time.Second, `!document.getElementById('chart-warn').hidden && /kraken degraded/.test(document.getElementById('chart-warn').textContent)`)

	ff.mu.Lock()
	ff.sts = []feeds.Status{
		{Name: "coinbase", Type: "websocket", State: feeds.State("running")}, {Name: "kraken", Type: "websocket", State: feeds.State("running")},
		{Name: "nyse", Type: "replay", State: feeds.State("running")}, {Name: "sim", Type: "sim", State: feeds.State("standby")},
	}
	ff.sources = map[string][]string{"BTC-USD": {"coinbase"}, "ETH-USD": {"kraken"}}
	ff.mu.Unlock()
	b.waitFor(t, "the strip cleared", 15*time.Second, `document.getElementById('feed-strip').hidden && !document.querySelector('#rows .feed-warn') && document.getElementById('chart-warn').hidden`)
	b.checkNoErrors(t)
}

// TestWatchlistAndLayoutPersist: the watchlist (pinned to the top of the
// board, always subscribed), the filter, the sort and the time zone survive
// a reload.
func TestWatchlistAndLayoutPersist(t *testing.T) {
	ts := startServer(t, false, nil)
	b := newBrowser(t, 1440, 900)
	b.do(t, chromedp.EmulateViewport(1440, 900), chromedp.Navigate(ts.url("/#NVDA")))
	waitBoardMoves(t, b)
	// Each step waits for the state the next one acts on: the star
	// toggles whatever symbol is selected when the click lands.
	// The star sits next to the symbol's name, so it moves when the
	// chart header shows another symbol: wait for the header too.
	b.waitFor(t, "NVDA selected from the address", 10*time.Second, `__tickstream.ui().selected === 'NVDA' && document.getElementById('chart-topic').textContent === 'NVDA'`)
	// Neither it nor the chart's controls move as the live figures change
	// width: a click aimed at one lands on it.
	var moved []string
	b.eval(t, `(() => {
		const ids = ['watch', 'ov-vwap', 'ov-period', 'split', 'intervals'];
		const at = () => ids.map((id) => { const r = document.getElementById(id).getBoundingClientRect(); return r.left + ',' + r.top; });
		const before = at();
		for (const id of ['chart-price', 'chart-chg', 'chart-vol']) document.getElementById(id).textContent += ' 123,456,789.00';
		const after = at();
		return ids.filter((id, i) => before[i] !== after[i]).map((id, i) => id + ' ' + before[ids.indexOf(id)] + ' → ' + after[ids.indexOf(id)]);
	})()`, &moved)
	if len(moved) > 0 {
		t.Errorf("when the live figures grew, these moved: %v", moved)
	}
	b.do(t, chromedp.Click(chromedp.CSS("#watch")))
	b.waitFor(t, "NVDA watched", 5*time.Second, `__tickstream.ui().watch.join() === 'NVDA'`)
	b.do(t, chromedp.Evaluate[chromedp.Void](`__tickstream.select('SOL-USD')`))
	b.waitFor(t, "SOL-USD selected", 5*time.Second, `__tickstream.ui().selected === 'SOL-USD' && document.getElementById('chart-topic').textContent === 'SOL-USD'`)
	b.do(t, chromedp.Click(chromedp.CSS("#watch")))
	b.waitFor(t, "SOL-USD watched", 5*time.Second, `__tickstream.ui().watch.sort().join() === 'NVDA,SOL-USD'`)
	b.do(t, chromedp.SendKeys(chromedp.CSS("#filter"), "-"))
	b.do(t, chromedp.Click(chromedp.CSS(`#board th[data-key="price"] button`)))
	b.waitFor(t, "the watchlist saved", 5*time.Second, `JSON.parse(localStorage.getItem('tickstream.watchlist')).sort().join() === 'NVDA,SOL-USD'`)
	b.do(t, chromedp.Reload())
	b.waitFor(t, "the page again", 15*time.Second, `window.__tickstream && document.querySelectorAll('#rows tr').length >= 2`)
	// The filter applies to watched symbols too: NVDA (no '-') is hidden
	// but stays subscribed; SOL-USD is pinned first.
	b.waitFor(t, "the watchlist pinned on top", 10*time.Second, `(() => {
		const o = [...document.querySelectorAll('#rows tr')].map((r) => r.dataset.topic);
		return o[0] === 'SOL-USD' && !o.includes('NVDA') && !!document.querySelector('#rows tr[data-topic="SOL-USD"] .star');
	})()`)
	// The subscriptions follow once the new connection is live.
	b.waitFor(t, "both watched symbols subscribed", 10*time.Second, `(() => { const s = __tickstream.subscribed(); return s.includes('NVDA') && s.includes('SOL-USD'); })()`)
	var st struct {
		Filter, Sort string
		Subs         []string
	}
	b.eval(t, `({Filter: document.getElementById('filter').value, Sort: document.querySelector('#board th[data-key="price"]').getAttribute('aria-sort'), Subs: __tickstream.subscribed()})`, &st)
	if st.Filter != "-" || st.Sort != "descending" || !contains(st.Subs, "NVDA") || !contains(st.Subs, "SOL-USD") {
		t.Errorf("after a reload: filter %q, price sort %q, subscribed %v; want the filter, the sort and both watched symbols", st.Filter, st.Sort, st.Subs)
	}
	b.checkNoErrors(t)
}

// TestDashBench measures the page (not asserted; see README): frames per
// second and long tasks (PerformanceObserver) with 500 topics at 2,000
// ticks/s in total at the 250 ms throttle, in headless Chromium. Run with
// TICKSTREAM_DASH_BENCH=1 go test -count=1 -run TestDashBench -v ./dashboard/
func TestDashBench(t *testing.T) {
	if os.Getenv("TICKSTREAM_DASH_BENCH") != "1" {
		t.Skip("skipping: set TICKSTREAM_DASH_BENCH=1 to measure fps and long tasks")
	}
	const topics, total = 500, 2000.0
	extra := topics - 8 // the simulator's 8 symbols tick 20 times a second each
	ts := startServer(t, false, seedTopics(extra))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		sink := ts.bus.Sink("bench")
		per10ms := (total - 8*20) / 100
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		var acc float64
		var i int
		prices := make([]float64, extra)
		for j := range prices {
			prices[j] = 100 + float64(j)
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
			acc += per10ms
			now := time.Now().UnixMilli()
			for ; acc >= 1; acc-- {
				j := i % extra
				i++
				prices[j] *= 1 + 0.0005*(float64(i%7)-3)
				tick := feeds.Tick{Topic: fmt.Sprintf("SYM-%03d", j), TS: now}
				tick.Set(feeds.FieldPrice, float64(int64(prices[j]*100))/100)
				tick.Set(feeds.FieldSize, 1)
				_ = sink.Publish(tick)
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })

	b := newBrowser(t, 1440, 900)
	b.do(t, chromedp.EmulateViewport(1440, 900), chromedp.Navigate(ts.url("/#BTC-USD")))
	b.waitFor(t, "500 rows", 20*time.Second, fmt.Sprintf(`Object.keys(__tickstream.board()).length >= %d && !__tickstream.chart(1).loading`, topics))
	b.do(t, chromedp.Evaluate[chromedp.Void](`(() => {
		window.__bench = {fps: [], long: []};
		new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__bench.long.push(e.duration); }).observe({type: 'longtask'});
		let n = 0, start = performance.now();
		const f = (now) => { n++; if (now - start >= 1000) { window.__bench.fps.push(n * 1000 / (now - start)); n = 0; start = now; } requestAnimationFrame(f); };
		requestAnimationFrame(f);
	})()`))
	type result struct {
		FPS  []float64
		Long []float64
		Msgs string
		Subs int
	}
	measure := func(name string, d time.Duration) {
		b.do(t, chromedp.Evaluate[chromedp.Void](`window.__bench.fps = []; window.__bench.long = [];`))
		time.Sleep(d)
		var r result
		b.eval(t, `({FPS: window.__bench.fps, Long: window.__bench.long, Msgs: document.getElementById('st-msgs').textContent, Subs: __tickstream.subscribed().length})`, &r)
		fps := append([]float64(nil), r.FPS...)
		sort.Float64s(fps)
		var med, lo, maxLong float64
		if len(fps) > 0 {
			med, lo = fps[len(fps)/2], fps[0]
		}
		for _, x := range r.Long {
			maxLong = max(maxLong, x)
		}
		t.Logf("%s: %d topics, %.0f ticks/s, throttle 250 ms, %d subscribed, %s: median %.1f fps (min %.1f) over %d s; %d long tasks, longest %.0f ms",
			name, topics, total, r.Subs, r.Msgs, med, lo, len(r.FPS), len(r.Long), maxLong)
	}
	time.Sleep(3 * time.Second) // warm up
	measure("sorted by symbol", 15*time.Second)
	b.do(t, chromedp.Click(chromedp.CSS(`#board th[data-key="pct"] button`)))
	measure("sorted by change %", 15*time.Second)
	b.checkNoErrors(t)
}
