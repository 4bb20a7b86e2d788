package dashboard_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/sim"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/server"
)

// The browser tests drive Debian's Chromium, headless, against the real
// server on loopback. Without Chromium they skip, unless
// TICKSTREAM_BROWSER_TESTS=1 says that CI installed it (then they fail).
// TICKSTREAM_CHROME names another Chrome binary. TICKSTREAM_SCREENSHOT=1
// writes testdata/screenshot.png.

func chromePath(t *testing.T) string {
	t.Helper()
	candidates := []string{os.Getenv("TICKSTREAM_CHROME"), "/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	msg := "browser tests need Chromium (apt-get install chromium) or TICKSTREAM_CHROME=/path/to/chrome"
	if os.Getenv("TICKSTREAM_BROWSER_TESTS") == "1" {
		t.Fatal(msg + "; TICKSTREAM_BROWSER_TESTS=1 is set, so they must run")
	}
	t.Skip("skipping: " + msg + "; set TICKSTREAM_BROWSER_TESTS=1 to make this a failure")
	return ""
}

// testServer is a bus with the simulator feed and a server on loopback that
// can be restarted on the same address with the same bus, so that epoch and
// seq continue.
type testServer struct {
	t        *testing.T
	bus      *stream.Bus
	stopFeed func()
	cfg      server.Config
	addr     string

	mu   sync.Mutex
	srv  *server.Server
	done chan error
}

func startServer(t *testing.T, disableWS bool, seed func(*stream.Bus)) *testServer {
	t.Helper()
	return startServerWith(t, func(c *server.Config) { c.DisableWebSocket = disableWS }, seed)
}

// startServerWith is startServer with more settings (e.g. a feed status
// reporter).
func startServerWith(t *testing.T, configure func(*server.Config), seed func(*stream.Bus)) *testServer {
	t.Helper()
	ts := &testServer{t: t, cfg: server.Config{RetryBase: 300 * time.Millisecond}}
	if configure != nil {
		configure(&ts.cfg)
	}
	ts.startBus(seed)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
	ts.serve(ln)
	t.Cleanup(func() {
		ts.shutdown()
		ts.stopBus()
	})
	return ts
}

// startBus starts a new bus (a new epoch) with the simulator feed.
func (ts *testServer) startBus(seed func(*stream.Bus)) {
	bus, err := stream.NewBus(stream.BusConfig{Heartbeat: 2 * time.Second})
	if err != nil {
		ts.t.Fatal(err)
	}
	if seed != nil {
		seed(bus)
	}
	src, err := sim.NewSource("sim", sim.Options{Rate: 20, History: -1}) // live ticks only
	if err != nil {
		ts.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = src.Run(ctx, bus.Sink("sim"))
	}()
	ts.bus, ts.cfg.Bus = bus, bus
	ts.stopFeed = func() { cancel(); <-done }
}

func (ts *testServer) stopBus() {
	ts.stopFeed()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ts.bus.Close(ctx); err != nil {
		ts.t.Errorf("bus close: %v", err)
	}
}

func (ts *testServer) serve(ln net.Listener) {
	srv, err := server.New(ts.cfg)
	if err != nil {
		ts.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	ts.mu.Lock()
	ts.srv, ts.done = srv, done
	ts.mu.Unlock()
}

func (ts *testServer) shutdown() {
	ts.mu.Lock()
	srv, done := ts.srv, ts.done
	ts.srv = nil
	ts.mu.Unlock()
	if srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		ts.t.Errorf("server shutdown: %v", err)
	}
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, server.ErrServerClosed) {
			ts.t.Errorf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		ts.t.Error("Serve did not return after Shutdown")
	}
}

// restart shuts the HTTP server down and starts a new one on the same
// address, after a pause during which the page's reconnects fail. With
// fresh, the new server has a new bus (a new epoch, no history), as after a
// process restart; else the same bus, so epoch and seq continue.
func (ts *testServer) restart(pause time.Duration, fresh bool) {
	ts.shutdown()
	if fresh {
		ts.stopBus()
		ts.startBus(nil)
	}
	time.Sleep(pause)
	var ln net.Listener
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		ln, err = net.Listen("tcp", ts.addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		ts.t.Fatalf("listen again on %s: %v", ts.addr, err)
	}
	ts.serve(ln)
}

func (ts *testServer) url(path string) string { return "http://" + ts.addr + path }

type pubTick struct {
	Topic string  `json:"topic"`
	TS    int64   `json:"ts"`
	Price float64 `json:"price"`
	Size  float64 `json:"size"`
}

func (ts *testServer) publish(t *testing.T, ticks []pubTick) {
	t.Helper()
	ts.publishJSON(t, ticks, len(ticks))
}

// publishJSON publishes ticks (anything that marshals to a JSON array of
// n ticks) and checks every one was accepted.
func (ts *testServer) publishJSON(t *testing.T, ticks any, n int) {
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
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil || res.StatusCode != 200 || out.Accepted != n {
		t.Fatalf("publish: status %d, accepted %d of %d, err %v", res.StatusCode, out.Accepted, n, err)
	}
}

// browser is one headless Chromium tab that records console errors and
// uncaught exceptions.
type browser struct {
	ctx context.Context

	mu     sync.Mutex
	errors []string
}

func newBrowser(t *testing.T, width, height int) *browser {
	t.Helper()
	exe := chromePath(t)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(width, height),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("no-proxy-server", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		acancel()
	})
	b := &browser{ctx: ctx}
	err := chromedp.Listen(ctx, func(ev any) {
		var msg string
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type != runtime.ConsoleAPICalledTypeError && ev.Type != runtime.ConsoleAPICalledTypeAssert {
				return
			}
			var parts []string
			for _, a := range ev.Args {
				if len(a.Value) > 0 {
					parts = append(parts, string(a.Value))
				} else {
					parts = append(parts, a.Description)
				}
			}
			msg = "console." + string(ev.Type) + ": " + strings.Join(parts, " ")
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			msg = "exception: " + d.Text
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
		default:
			return
		}
		b.mu.Lock()
		b.errors = append(b.errors, msg)
		b.mu.Unlock()
	})
	if err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return b
}

func (b *browser) do(t *testing.T, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatal(err)
	}
}

// eval evaluates a JavaScript expression and decodes its JSON value into v.
func (b *browser) eval(t *testing.T, expr string, v any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](expr))
	if err != nil {
		t.Fatalf("eval %s: %v", expr, err)
	}
	if v != nil {
		if err := json.Unmarshal(raw, v); err != nil {
			t.Fatalf("eval %s: decode %s: %v", expr, raw, err)
		}
	}
}

// waitFor polls a JavaScript boolean expression until it is true.
func (b *browser) waitFor(t *testing.T, what string, timeout time.Duration, expr string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var ok bool
		b.eval(t, "!!("+expr+")", &ok)
		if ok {
			return
		}
		if time.Now().After(deadline) {
			var state any
			b.eval(t, `({status: window.__tickstream && __tickstream.status(), stats: window.__tickstream && __tickstream.stats()})`, &state)
			t.Fatalf("timed out after %v waiting for %s (%s); page state: %v; console: %v", timeout, what, expr, state, b.consoleErrors())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (b *browser) consoleErrors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errors...)
}

func (b *browser) checkNoErrors(t *testing.T) {
	t.Helper()
	if errs := b.consoleErrors(); len(errs) > 0 {
		t.Errorf("browser console has %d errors:\n%s", len(errs), strings.Join(errs, "\n"))
	}
}

type boardRow struct {
	Price  float64           `json:"price"`
	Open   float64           `json:"open"`
	Volume float64           `json:"volume"`
	Seq    uint64            `json:"seq"`
	Epoch  string            `json:"epoch"`
	Cells  map[string]string `json:"cells"`
}

// bar is a chart bar as the page holds it (plain numbers).
type bar struct {
	T int64   `json:"t"`
	O float64 `json:"o"`
	H float64 `json:"h"`
	L float64 `json:"l"`
	C float64 `json:"c"`
	V float64 `json:"v"`
	N int64   `json:"n"`
}

type chartState struct {
	Topic    string `json:"topic"`
	Interval string `json:"interval"`
	Loading  bool   `json:"loading"`
	Bars     []bar  `json:"bars"`
}

type pageStats struct {
	Connects  int    `json:"connects"`
	Resets    int    `json:"resets"`
	Fallbacks int    `json:"fallbacks"`
	Gaps      int    `json:"gaps"`
	Dups      int    `json:"dups"`
	Overlaps  int    `json:"overlaps"`
	Bad       int    `json:"bad"`
	LastError string `json:"lastError"`
}

func (b *browser) board(t *testing.T) map[string]boardRow {
	t.Helper()
	var out map[string]boardRow
	b.eval(t, `__tickstream.board()`, &out)
	return out
}

func (b *browser) chart(t *testing.T, n int) chartState {
	t.Helper()
	var out chartState
	b.eval(t, fmt.Sprintf(`__tickstream.chart(%d)`, n), &out)
	return out
}

func (b *browser) stats(t *testing.T) pageStats {
	t.Helper()
	var out pageStats
	b.eval(t, `__tickstream.stats()`, &out)
	return out
}

func (b *browser) badge(t *testing.T) (state, transport, label string) {
	t.Helper()
	var out struct{ State, Transport, Label string }
	b.eval(t, `(() => { const e = document.getElementById('badge'); return {State: e.dataset.state, Transport: e.dataset.transport, Label: e.textContent.trim()}; })()`, &out)
	return out.State, out.Transport, out.Label
}

// waitBoardMoves waits until the board shows every simulator symbol with a
// price, and then until the prices change.
func waitBoardMoves(t *testing.T, b *browser) {
	t.Helper()
	syms, _ := json.Marshal(sim.DefaultSymbols)
	b.waitFor(t, "the simulator's topics on the board", 20*time.Second,
		fmt.Sprintf(`%s.every((s) => { const r = document.querySelector('#rows tr[data-topic="' + s + '"] td[data-col="price"]'); return r && /\d/.test(r.textContent); })`, syms))
	before := b.board(t)
	b.waitFor(t, "prices to change", 10*time.Second, fmt.Sprintf(`(() => {
		const before = %s, now = __tickstream.board();
		return Object.keys(before).filter((k) => now[k] && now[k].price !== before[k]).length >= 3;
	})()`, mustJSON(pricesOf(before))))
}

func pricesOf(rows map[string]boardRow) map[string]float64 {
	out := make(map[string]float64, len(rows))
	for k, r := range rows {
		out[k] = r.Price
	}
	return out
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// TestBoardAndChart: the board fills with the simulator's topics and moves;
// ticks published over HTTP show on the board and as the last candle.
func TestBoardAndChart(t *testing.T) {
	ts := startServer(t, false, nil)
	b := newBrowser(t, 1440, 900)
	b.do(t, chromedp.EmulateViewport(1440, 900), chromedp.Navigate(ts.url("/")))
	waitBoardMoves(t, b)
	b.waitFor(t, "a live WebSocket badge", 10*time.Second, `document.getElementById('badge').dataset.state === 'live' && document.getElementById('badge').dataset.transport === 'ws'`)
	if _, _, label := b.badge(t); !strings.Contains(label, "WebSocket") {
		t.Errorf("badge says %q, want it to name WebSocket", label)
	}

	// Known ticks for a new topic, all in one minute.
	minute := time.Now().UnixMilli() / 60_000 * 60_000
	ts.publish(t, []pubTick{
		{"TEST-X", minute + 1, 100, 1},
		{"TEST-X", minute + 2, 105, 2},
		{"TEST-X", minute + 3, 98, 3},
	})
	b.waitFor(t, "TEST-X on the board", 10*time.Second, `(() => { const r = __tickstream.board()['TEST-X']; return r && r.price === 98; })()`)

	// Select it and watch the 1m chart: the backfill, then live updates.
	b.do(t, chromedp.Click(chromedp.CSS(`#rows tr[data-topic="TEST-X"]`)), chromedp.Click(chromedp.CSS(`#intervals button[data-interval="1m"]`)))
	b.waitFor(t, "the TEST-X chart backfill", 10*time.Second,
		`(() => { const c = __tickstream.chart(5); return c.topic === 'TEST-X' && c.interval === '1m' && !c.loading && c.bars.length === 1 && c.bars[0].c === 98; })()`)
	if got := b.chart(t, 5).Bars[0]; got != (bar{T: minute, O: 100, H: 105, L: 98, C: 98, V: 6, N: 3}) {
		t.Errorf("backfilled bar = %+v", got)
	}
	ts.publish(t, []pubTick{
		{"TEST-X", minute + 4, 110, 1},
		{"TEST-X", minute + 5, 95, 1},
		{"TEST-X", minute + 6, 101.25, 1},
	})
	want := bar{T: minute, O: 100, H: 110, L: 95, C: 101.25, V: 9, N: 6}
	b.waitFor(t, "the live candle", 10*time.Second, fmt.Sprintf(`(() => {
		const c = __tickstream.chart(5), w = %s;
		const b = c.bars[c.bars.length - 1];
		return c.bars.length === 1 && b.t === w.t && b.o === w.o && b.h === w.h && b.l === w.l && b.c === w.c && b.v === w.v && b.n === w.n;
	})()`, mustJSON(want)))
	b.waitFor(t, "TEST-X's last price in the board's DOM", 5*time.Second,
		`document.querySelector('#rows tr[data-topic="TEST-X"] td[data-col="price"]').textContent === '101.25'`)
	row := b.board(t)["TEST-X"]
	if row.Open != 100 || row.Price != 101.25 {
		t.Errorf("TEST-X row = %+v, want open 100 (first price seen) and price 101.25", row)
	}
	if got := row.Cells["pct"]; got != "+1.25%" {
		t.Errorf("TEST-X change %% cell = %q, want +1.25%%", got)
	}
	// The chart's header and legend show it too.
	var legend string
	b.eval(t, `document.getElementById('legend').textContent`, &legend)
	if !strings.Contains(legend, "H 110.00") || !strings.Contains(legend, "L 95.00") || strings.Contains(legend, "110.000") {
		t.Errorf("legend = %q, want the live bar's high and low", legend)
	}

	// A late update gets its own older bar, in order, as on the server
	// (docs/protocol.md, candles from updates), and the live bar goes on.
	ts.publish(t, []pubTick{{"TEST-X", minute - 3*60_000, 90, 1}})
	b.waitFor(t, "the late tick", 10*time.Second, `__tickstream.board()['TEST-X'].price === 90`)
	ts.publish(t, []pubTick{{"TEST-X", minute + 7, 102, 1}})
	b.waitFor(t, "the tick after a late one", 10*time.Second, fmt.Sprintf(`(() => { const c = __tickstream.chart(5); return c.bars.length === 2 && c.bars[0].t === %d && c.bars[0].c === 90 && c.bars[0].n === 1 && c.bars[1].c === 102 && c.bars[1].l === 95 && c.bars[1].n === 7; })()`, minute-3*60_000))

	// Sorting and filtering.
	b.do(t, chromedp.SendKeys(chromedp.CSS("#filter"), "usd"))
	b.waitFor(t, "the filter", 5*time.Second, `[...document.querySelectorAll('#rows tr')].every((tr) => tr.dataset.topic.includes('USD')) && document.querySelectorAll('#rows tr').length === 5`)
	b.do(t, chromedp.Click(chromedp.CSS(`#board th[data-key="price"]`)))
	b.waitFor(t, "sorting by price, highest first", 5*time.Second, `(() => {
		const ps = [...document.querySelectorAll('#rows tr')].map((tr) => __tickstream.board()[tr.dataset.topic].price);
		return ps.length === 5 && ps.every((p, i) => i === 0 || ps[i - 1] >= p);
	})()`)

	// Themes: the toggle switches and is remembered.
	var theme string
	b.eval(t, `document.documentElement.dataset.theme`, &theme)
	b.do(t, chromedp.Click(chromedp.CSS("#theme")))
	b.waitFor(t, "the other theme", 5*time.Second, fmt.Sprintf(`document.documentElement.dataset.theme !== %q && localStorage.getItem('tickstream.theme') === document.documentElement.dataset.theme`, theme))

	st := b.stats(t)
	if st.Gaps != 0 || st.Overlaps != 0 || st.Bad != 0 {
		t.Errorf("stats = %+v, want no gaps, overlaps or bad frames", st)
	}
	b.checkNoErrors(t)
}

// TestSSEFallback: with WebSocket refused, the page streams over SSE, says
// so, and a throttle change re-subscribes over POST without a hole.
func TestSSEFallback(t *testing.T) {
	ts := startServer(t, true, nil)
	b := newBrowser(t, 1280, 800)
	b.do(t, chromedp.Navigate(ts.url("/#ETH-USD")))
	waitBoardMoves(t, b)
	b.waitFor(t, "a live SSE badge", 10*time.Second, `document.getElementById('badge').dataset.state === 'live' && document.getElementById('badge').dataset.transport === 'sse'`)
	if _, _, label := b.badge(t); !strings.Contains(label, "SSE") {
		t.Errorf("badge says %q, want it to name SSE", label)
	}
	if st := b.stats(t); st.Fallbacks < 1 {
		t.Errorf("stats = %+v, want a fallback to SSE", st)
	}

	// Change the throttle: unsubscribe + subscribe with resume over POST.
	b.waitFor(t, "the ETH-USD chart", 10*time.Second, `(() => { const c = __tickstream.chart(1); return c.topic === 'ETH-USD' && !c.loading; })()`)
	before := b.board(t)["ETH-USD"].Seq
	b.do(t, chromedp.Evaluate[chromedp.Void](`(() => { const s = document.getElementById('throttle'); s.value = '1000'; s.dispatchEvent(new Event('change')); })()`))
	b.waitFor(t, "updates after the throttle change", 10*time.Second, fmt.Sprintf(`__tickstream.board()['ETH-USD'].seq > %d + 40`, before))
	st := b.stats(t)
	if st.Gaps != 0 || st.Overlaps != 0 || st.Connects != 1 {
		t.Errorf("stats after the throttle change = %+v, want no gaps or overlaps on the same connection", st)
	}
	if s, tr, _ := b.badge(t); s != "live" || tr != "sse" {
		t.Errorf("badge = %s/%s after the throttle change", s, tr)
	}
	b.checkNoErrors(t)
}

// TestReconnectNoHole: the server restarts (same bus, so epoch and seq
// continue); the page reconnects by itself and resumes every topic from its
// cursor: no gap in seq, and the chart's 1s bars hold every tick.
func TestReconnectNoHole(t *testing.T) {
	for _, tc := range []struct {
		name      string
		disableWS bool
		transport string
	}{
		{"ws", false, "ws"},
		{"sse", true, "sse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, tc.disableWS, nil)
			b := newBrowser(t, 1280, 800)
			b.do(t, chromedp.Navigate(ts.url("/#BTC-USD")))
			b.waitFor(t, "live", 15*time.Second, fmt.Sprintf(`document.getElementById('badge').dataset.state === 'live' && document.getElementById('badge').dataset.transport === %q`, tc.transport))
			b.do(t, chromedp.Click(chromedp.CSS(`#intervals button[data-interval="1s"]`)))
			b.waitFor(t, "a few 1s bars", 15*time.Second, `(() => { const c = __tickstream.chart(10); return c.topic === 'BTC-USD' && c.interval === '1s' && !c.loading && c.bars.length >= 3; })()`)
			first := b.chart(t, 1).Bars[0].T

			ts.restart(1500*time.Millisecond, false)
			// The page moves between "reconnecting" (the countdown) and
			// "connecting" (an attempt) while the server is down, so the
			// badge, its label and the announcement are read in the same
			// evaluation that sees the countdown.
			b.waitFor(t, "the reconnecting badge", 10*time.Second, `(() => {
				const e = document.getElementById('badge');
				if (e.dataset.state !== 'reconnecting') return false;
				window.__reconnecting = {Label: e.textContent.trim(), BadgeLive: !!e.closest('[aria-live],[role=status],[role=alert]'), Said: document.getElementById('conn-live').textContent};
				return true;
			})()`)
			var seen struct {
				Label     string
				BadgeLive bool
				Said      string
			}
			b.eval(t, `window.__reconnecting`, &seen)
			if !strings.HasPrefix(seen.Label, "Reconnecting in ") || !strings.HasSuffix(seen.Label, " s") {
				t.Errorf("badge while the server is down says %q, want \"Reconnecting in N s\"", seen.Label)
			}
			// Screen readers hear the state, not every second of the
			// countdown: the badge is in no live region, the status text
			// has no number.
			if seen.BadgeLive || strings.ContainsAny(seen.Said, "0123456789") || !strings.Contains(seen.Said, "Reconnecting") {
				t.Errorf("while reconnecting: badge in a live region %v, announced %q; want the countdown outside live regions and the state announced once", seen.BadgeLive, seen.Said)
			}
			b.waitFor(t, "live again", 20*time.Second, fmt.Sprintf(`__tickstream.stats().connects >= 2 && document.getElementById('badge').dataset.state === 'live' && document.getElementById('badge').dataset.transport === %q`, tc.transport))
			time.Sleep(2500 * time.Millisecond) // more bars after the restart

			st := b.stats(t)
			if st.Gaps != 0 || st.Overlaps != 0 || st.Resets != 0 {
				t.Errorf("stats = %+v, want no gaps, overlaps or resets across the restart", st)
			}
			// Every second from before the restart to now has its bar, and
			// the ticks folded in match the server's own 1s candles.
			c := b.chart(t, 2000)
			var from int
			for from < len(c.Bars) && c.Bars[from].T < first {
				from++
			}
			bars := c.Bars[from:]
			if len(bars) < 5 {
				t.Fatalf("only %d bars since %d", len(bars), first)
			}
			for i := 1; i < len(bars); i++ {
				if bars[i].T-bars[i-1].T != 1000 {
					t.Errorf("hole in the chart between %d and %d", bars[i-1].T, bars[i].T)
				}
			}
			server, err := ts.bus.Candles("BTC-USD", "1s", 2000)
			if err != nil {
				t.Fatal(err)
			}
			// Compare whole bars strictly inside the range: the client
			// keys a throttled update by its last tick, so a window that
			// straddles a second boundary lands in the later bar.
			var got, want int64
			lo, hi := bars[1].T, bars[len(bars)-2].T
			for _, x := range bars {
				if x.T >= lo && x.T <= hi {
					got += x.N
				}
			}
			for _, x := range server {
				if x.T >= lo && x.T <= hi {
					want += x.N
				}
			}
			t.Logf("stats %+v; %d bars since the restart-1; ticks in bars %d..%d: page %d, server %d", st, len(bars), lo, hi, got, want)
			if math.Abs(float64(got-want)) > 10 {
				t.Errorf("ticks in bars %d..%d: page %d, server %d", lo, hi, got, want)
			}
			b.checkNoErrors(t)
		})
	}
}

// TestRestartNewEpoch: a server that comes back with a new epoch (its
// history lost) resets every topic; the page takes the snapshots and
// refetches the chart, which then matches the new server's candles.
func TestRestartNewEpoch(t *testing.T) {
	ts := startServer(t, false, nil)
	b := newBrowser(t, 1280, 800)
	b.do(t, chromedp.Navigate(ts.url("/#ETH-USD")))
	waitBoardMoves(t, b)
	b.do(t, chromedp.Click(chromedp.CSS(`#intervals button[data-interval="1s"]`)))
	b.waitFor(t, "a few 1s bars", 15*time.Second, `(() => { const c = __tickstream.chart(10); return c.topic === 'ETH-USD' && c.interval === '1s' && !c.loading && c.bars.length >= 3; })()`)
	oldEpoch := b.board(t)["ETH-USD"].Epoch
	time.Sleep(2 * time.Second)
	before := b.chart(t, 2000).Bars

	ts.restart(500*time.Millisecond, true)
	newEpoch := ts.bus.Epoch()
	b.waitFor(t, "the new epoch on the board", 20*time.Second, fmt.Sprintf(`__tickstream.stats().connects >= 2 && Object.values(__tickstream.board()).every((r) => r.epoch === %q)`, newEpoch))
	if oldEpoch == newEpoch {
		t.Fatal("the epoch did not change")
	}
	st := b.stats(t)
	if st.Resets < len(sim.DefaultSymbols) || st.Gaps != 0 {
		t.Errorf("stats = %+v, want a reset per topic and no gaps", st)
	}
	// The chart was backfilled from the new server after its bars from
	// before the restart, which are kept; the outage is marked on the
	// chart and in time & sales.
	// (The mark is checked on the page as soon as it shows: the live
	// trades that follow scroll it away later.)
	b.waitFor(t, "the outage marked", 10*time.Second, `__tickstream.chart(1).outages.some((o) => o.lost) && __tickstream.tape().some((x) => x.mark && /restarted/.test(x.text)) && document.querySelectorAll('#tape-rows tr.tape-mark').length > 0`)
	time.Sleep(1500 * time.Millisecond)
	c := b.chart(t, 2000)
	server, err := ts.bus.Candles("ETH-USD", "1s", 2000)
	if err != nil {
		t.Fatal(err)
	}
	if c.Loading || len(c.Bars) == 0 || len(server) == 0 {
		t.Fatalf("chart after the new epoch: %d bars, server has %d", len(c.Bars), len(server))
	}
	if c.Bars[0].T > before[0].T || len(c.Bars) < len(before) {
		t.Errorf("chart after the new epoch: %d bars from %v; before the restart %d bars from %v: history was wiped", len(c.Bars), firstT(c.Bars), len(before), firstT(before))
	}
	at := -1
	for i, x := range c.Bars {
		if x.T == server[0].T {
			at = i
		}
	}
	if at < 0 {
		t.Errorf("chart after the new epoch has no bar at the new server's first bar %d", server[0].T)
	}
	b.checkNoErrors(t)
}

func firstT(bs []bar) any {
	if len(bs) == 0 {
		return nil
	}
	return bs[0].T
}

// TestScreenshot writes testdata/screenshot.png (desktop, dark theme) and
// testdata/screenshot-phone.png when TICKSTREAM_SCREENSHOT=1.
func TestScreenshot(t *testing.T) {
	if os.Getenv("TICKSTREAM_SCREENSHOT") != "1" {
		t.Skip("skipping: set TICKSTREAM_SCREENSHOT=1 to write testdata/screenshot.png")
	}
	ts := startServer(t, false, seedHistory)
	for _, v := range []struct {
		file          string
		width, height int64
		mobile, split bool
	}{
		{"screenshot.png", 1440, 900, false, false},
		{"screenshot-split.png", 1600, 900, false, true},
		{"screenshot-phone.png", 390, 844, true, false},
	} {
		b := newBrowser(t, int(v.width), int(v.height))
		var opts []chromedp.EmulateViewportOption
		if v.mobile {
			opts = append(opts, chromedp.EmulateMobile, chromedp.EmulateScale(2))
		}
		b.do(t, chromedp.EmulateViewport(v.width, v.height, opts...), chromedp.Navigate(ts.url("/#BTC-USD")))
		b.do(t, chromedp.Click(chromedp.CSS(`#intervals button[data-interval="1s"]`)))
		// With the VWAP and a 20-bar moving average on.
		b.do(t, chromedp.Click(chromedp.CSS(`#ov-vwap`)), chromedp.Click(chromedp.CSS(`#ov-sma`)))
		if v.split {
			b.do(t, chromedp.Click(chromedp.CSS(`#split button[data-split="2"]`)), chromedp.Evaluate[chromedp.Void](`(() => {
				const s = document.getElementById('chart2-interval'); s.value = '1s'; s.dispatchEvent(new Event('change'));
				const i = document.getElementById('chart2-topic'); i.value = 'ETH-USD'; i.dispatchEvent(new Event('change'));
			})()`))
			b.waitFor(t, "the ETH-USD chart", 15*time.Second, `(() => { const c = __tickstream.chart2(400); return c.topic === 'ETH-USD' && !c.loading && c.bars.length > 100; })()`)
		}
		b.waitFor(t, "the BTC-USD chart", 15*time.Second, `(() => { const c = __tickstream.chart(400); return c.topic === 'BTC-USD' && c.interval === '1s' && !c.loading && c.bars.length > 100; })()`)
		b.waitFor(t, "a live badge", 10*time.Second, `document.getElementById('badge').dataset.state === 'live'`)
		time.Sleep(3 * time.Second) // rates, ages, a few live bars and flashes
		png, err := chromedp.Run(b.ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join("testdata", v.file), png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote testdata/%s (%d bytes)", v.file, len(png))
		if state, _, label := b.badge(t); state != "live" {
			t.Errorf("%s: badge says %q; stats %+v", v.file, label, b.stats(t))
		}
		b.checkNoErrors(t)
	}
}

// seedHistory publishes ten minutes of random-walk history for the
// simulator's symbols, ending at its starting prices, so that the
// screenshot shows a chart with history as after a few minutes of running.
func seedHistory(bus *stream.Bus) {
	start := map[string]float64{
		"BTC-USD": 64000, "ETH-USD": 3100, "SOL-USD": 145, "DOGE-USD": 0.16,
		"AAPL": 226, "MSFT": 418, "NVDA": 121, "EUR-USD": 1.09,
	}
	rng := rand.New(rand.NewPCG(7, 11))
	const step = 200 * time.Millisecond
	const n = int(8 * time.Minute / step)
	now := time.Now().Add(-time.Second)
	sink := bus.Sink("seed")
	for _, sym := range sim.DefaultSymbols {
		p0, ok := start[sym]
		if !ok {
			continue
		}
		// Walk backwards from the start price, then publish forwards.
		prices := make([]float64, n)
		p := p0
		for i := n - 1; i >= 0; i-- {
			prices[i] = p
			p *= math.Exp(0.0009 * rng.NormFloat64())
		}
		for i, price := range prices {
			ts := now.Add(-time.Duration(n-i) * step).UnixMilli()
			tick := feeds.Tick{Topic: sym, TS: ts}
			tick.Set(feeds.FieldPrice, price)
			tick.Set(feeds.FieldSize, math.Round(rng.ExpFloat64()*100)/100+0.01)
			_ = sink.Publish(tick)
		}
	}
}
