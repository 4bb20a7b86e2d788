package server_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/server"
)

// soakHeapBound is how much the live heap may have grown over the soak
// (README, Deploying): it ends with the clients it started with, so what
// churn left behind must be noise.
const soakHeapBound = 16 << 20

// TestSoak runs for TICKSTREAM_SOAK (e.g. 60s; skipped when unset) with
// clients connecting and disconnecting over WebSocket and SSE while 50
// topics tick, plus one long-lived client that must get every tick. At
// the end, with the churners gone, the goroutine count is back to its
// baseline and the live heap within soakHeapBound of it. The numbers are
// logged (README, Deploying).
func TestSoak(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("TICKSTREAM_SOAK"))
	if err != nil || d <= 0 {
		t.Skip("set TICKSTREAM_SOAK=60s to run the soak")
	}
	e := startServer(t, func(bc *stream.BusConfig, sc *server.Config) {
		bc.Heartbeat = 5 * time.Second
		sc.AcceptRatePerIP, sc.AcceptBurstPerIP = 10_000, 10_000 // churn from one address
	})
	// Fill every topic's history first: its rings then stay the same size,
	// so the heap measures what churn leaves, not history filling up.
	for i := range 50 * 1000 { // history_depth 1000
		e.publish(fmt.Sprintf("SOAK.%02d", i%50), 1, f("price", float64(i)), f("sent_us", 0))
	}
	good := newGoodClient(t, e, "SOAK.00")
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if e.bus.Subscribers() != 1 {
			return fmt.Errorf("not subscribed yet")
		}
		return nil
	})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var published atomic.Uint64
	wg.Add(1)
	go func() { // 50 topics, one tick every ms in turn
		defer wg.Done()
		tk := time.NewTicker(time.Millisecond)
		defer tk.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			topic := fmt.Sprintf("SOAK.%02d", i%50)
			seq, err := e.bus.Publish("soak", feeds.Tick{Topic: topic, Fields: []feeds.Field{
				feeds.F("price", float64(i)), feeds.F("sent_us", float64(time.Now().UnixMicro()))}})
			if err != nil {
				good.fail("publish: %v", err)
				return
			}
			if topic == "SOAK.00" {
				published.Store(seq)
			}
		}
	}()
	time.Sleep(200 * time.Millisecond) // the first flushers start
	runtime.GC()
	baseG := runtime.NumGoroutine()
	base := liveHeap()

	var sessions, failures atomic.Int64
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := &http.Client{Transport: &http.Transport{}}
			defer hc.CloseIdleConnections()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(50+(w*37+i*11)%300)*time.Millisecond)
				var err error
				if (w+i)%2 == 0 {
					err = soakWS(ctx, e.addr, hc)
				} else {
					err = soakSSE(ctx, e.url("/sse?topics=SOAK.*&throttle_ms=50"), hc)
				}
				cancel()
				if err != nil {
					failures.Add(1)
				}
				sessions.Add(1)
			}
		}()
	}
	var peakG int
	var peakHeap uint64
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		time.Sleep(500 * time.Millisecond)
		peakG = max(peakG, runtime.NumGoroutine())
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		peakHeap = max(peakHeap, ms.HeapAlloc)
	}
	close(stop)
	wg.Wait()
	want := published.Load()
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if last, problem := good.state(); problem != "" || last != want {
			return fmt.Errorf("good client at seq %d of %d (%s)", last, want, problem)
		}
		return nil
	})
	// Back to the start: the long-lived client only.
	var endG int
	// (fasthttp's idle workers end after 10 s.)
	checkFor(t, 40*time.Second, 50*time.Millisecond, func() error {
		endG = runtime.NumGoroutine()
		if n := e.bus.Subscribers(); n != 1 {
			return fmt.Errorf("%d subscribers", n)
		}
		if endG > baseG+2 {
			buf := make([]byte, 1<<20)
			return fmt.Errorf("%d goroutines, baseline %d:\n%s", endG, baseG, buf[:runtime.Stack(buf, true)])
		}
		return nil
	})
	grown := int64(liveHeap()) - int64(base)
	t.Logf("soak %v: %d sessions (%d failed to open or ended early), peak %d goroutines (baseline %d, end %d), peak heap %d MiB, live heap %+d KiB at the end",
		d, sessions.Load(), failures.Load(), peakG, baseG, endG, peakHeap>>20, grown>>10)
	if grown > soakHeapBound {
		t.Fatalf("live heap grew %d MiB over the soak, over the %d MiB bound", grown>>20, soakHeapBound>>20)
	}
	if f := failures.Load(); f > sessions.Load()/100 {
		t.Errorf("%d of %d sessions failed", f, sessions.Load())
	}
}

// soakWS subscribes to every soak topic and reads until ctx ends.
func soakWS(ctx context.Context, addr string, hc *http.Client) error {
	conn, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws", &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		return err
	}
	defer conn.CloseNow()
	conn.SetReadLimit(64 << 20)
	if err := conn.Write(ctx, websocket.MessageText, []byte(`{"op":"subscribe","topics":["SOAK.*"],"throttle_ms":50}`)); err != nil {
		return nil // ctx ended
	}
	for {
		if _, _, err := conn.Read(ctx); err != nil {
			return nil
		}
	}
}

// soakSSE reads an SSE stream until ctx ends.
func soakSSE(ctx context.Context, url string, hc *http.Client) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	buf := make([]byte, 32<<10)
	for {
		if _, err := resp.Body.Read(buf); err != nil {
			return nil
		}
	}
}
