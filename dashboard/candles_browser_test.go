package dashboard_test

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestChartBarsEqualServerCandles: ticks whose ts lags the server's clock
// by 80 ms, as exchange feeds' do, stream for a minute; the chart, built
// from /api/candles once and then only from updates, ends with exactly the
// bars /api/candles serves, at throttle 250 ms and at 2 s (where one
// update spans two 1-second bars), for 1s and 1m bars (issue #8, item 3).
func TestChartBarsEqualServerCandles(t *testing.T) {
	d := time.Minute
	if testing.Short() {
		d = 15 * time.Second
	}
	for _, tc := range []struct {
		throttleMS int
		interval   string
	}{{250, "1s"}, {2000, "1s"}, {2000, "1m"}} {
		t.Run(fmt.Sprintf("%dms_%s", tc.throttleMS, tc.interval), func(t *testing.T) {
			t.Parallel()
			testChartBars(t, tc.throttleMS, tc.interval, d)
		})
	}
}

func testChartBars(t *testing.T, throttleMS int, interval string, d time.Duration) {
	const topic = "LAG-X"
	ts := startServer(t, false, nil)
	ts.publish(t, []pubTick{{topic, time.Now().UnixMilli() - 80, 100, 0.5}})
	b := newBrowser(t, 1440, 900)
	b.do(t, chromedp.EmulateViewport(1440, 900), chromedp.Navigate(ts.url("/#"+topic)))
	b.waitFor(t, "the chart of "+topic, 20*time.Second, `(() => { const c = __tickstream.chart(1); return c.topic === 'LAG-X' && !c.loading && c.bars.length > 0; })()`)
	b.do(t, chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`__tickstream.setThrottle(%d); __tickstream.setInterval(%q)`, throttleMS, interval)))
	b.waitFor(t, "the "+interval+" chart", 20*time.Second, fmt.Sprintf(`(() => { const c = __tickstream.chart(1); return c.interval === %q && !c.loading; })()`, interval))

	// Ticks every ~40 ms, lagging the clock by 80 ms, with decimal sizes.
	rng := rand.New(rand.NewPCG(uint64(throttleMS), 7))
	price := 100.0
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		var batch []pubTick
		for range 1 + rng.IntN(3) {
			price = math.Round((price+(rng.Float64()-0.5)*0.4)*100) / 100
			size := float64(1+rng.IntN(999)) / 1000
			batch = append(batch, pubTick{topic, time.Now().UnixMilli() - 80, price, size})
		}
		ts.publish(t, batch)
		time.Sleep(time.Duration(20+rng.IntN(40)) * time.Millisecond)
	}
	// The last window is flushed within one throttle.
	time.Sleep(time.Duration(throttleMS)*time.Millisecond + time.Second)

	type bar struct {
		T          int64
		O, H, L, C float64
		V          float64
		N          int64
	}
	var page []bar
	b.eval(t, `__tickstream.chart(2000).bars.map((b) => ({T: b.t, O: b.o, H: b.h, L: b.l, C: b.c, V: Number(b.vs ?? b.v), N: b.n}))`, &page)
	res, err := http.Get(ts.url("/api/candles?topic=" + topic + "&interval=" + interval + "&limit=2000"))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var raw []struct {
		T          int64
		O, H, L, C json.Number
		V          json.Number
		N          int64
	}
	if err := json.NewDecoder(res.Body).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	server := map[int64]bar{}
	for _, r := range raw {
		f := func(n json.Number) float64 { v, _ := n.Float64(); return v }
		server[r.T] = bar{r.T, f(r.O), f(r.H), f(r.L), f(r.C), f(r.V), r.N}
	}
	wantBars := int(d / time.Second / 2) // at least: a bar every second
	if interval == "1m" {
		wantBars = 1
	}
	if len(page) < wantBars {
		t.Fatalf("the chart has %d %s bars after %v, want at least %d", len(page), interval, d, wantBars)
	}
	for _, p := range page {
		s, ok := server[p.T]
		if !ok {
			t.Errorf("chart bar %d is not in /api/candles", p.T)
			continue
		}
		if p != s {
			t.Errorf("bar %d: chart %+v, /api/candles %+v", p.T, p, s)
		}
	}
	for tt := range server {
		if tt >= page[0].T {
			found := false
			for _, p := range page {
				found = found || p.T == tt
			}
			if !found {
				t.Errorf("/api/candles bar %d is missing from the chart", tt)
			}
		}
	}
	b.checkNoErrors(t)
}
