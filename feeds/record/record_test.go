package record_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/feedtest"
	"github.com/tickstream/tickstream/feeds/record"
	"github.com/tickstream/tickstream/feeds/replay"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/server"
)

// TestMain checks for leaks, except fasthttp's process-wide date updater
// and its worker pool's cleaner, which sleeps out its interval after the
// server stops.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
	)
}

const binanceCSV = "../../testdata/ticks/binance_spot_trades_btcusdt_ethusdt_2024-08-08_head2000.csv"

// syncBuffer is an io.Writer that tests can read while Run writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// serve runs a tickstream server for bus on addr ("127.0.0.1:0" for any
// port) and returns its address and a stop function.
func serve(t *testing.T, bus *stream.Bus, addr string) (string, func()) {
	t.Helper()
	srv, err := server.New(server.Config{Bus: bus})
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	// Rebinding the port a stopped server used can briefly fail.
	feedtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				t.Errorf("Shutdown: %v", err)
			}
			<-done
		})
	}
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

func closeBus(t *testing.T, bus *stream.Bus) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := bus.Close(ctx); err != nil {
		t.Error(err)
	}
}

// parseLines parses the complete lines of s; the writer may be in the
// middle of a line.
func parseLines(t *testing.T, s string) []feeds.Tick {
	var out []feeds.Tick
	s = s[:strings.LastIndexByte(s, '\n')+1]
	for _, l := range strings.Split(s, "\n") {
		if l == "" {
			continue
		}
		tk, err := feeds.ParseTick([]byte(l))
		if err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		out = append(out, tk)
	}
	return out
}

// suffixOf checks, per topic, that got is published[k:] for some k: a
// recording that started late, but then lost and repeated nothing. Order
// across topics is not part of the contract (each topic flushes on its
// own, and resume replays topic by topic).
func suffixOf(got, published []feeds.Tick) error {
	if len(got) == 0 {
		return errors.New("nothing recorded")
	}
	for _, topic := range []string{"BTC-USD", "ETH-USD"} {
		g, p := byTopic(got, topic), byTopic(published, topic)
		k := len(p) - len(g)
		if k < 0 {
			return fmt.Errorf("%s: recorded %d ticks, only %d published", topic, len(g), len(p))
		}
		if diff := feedtest.Equal(g, p[k:]); diff != "" {
			return fmt.Errorf("%s: recording is not the last %d published ticks: %s", topic, len(g), diff)
		}
	}
	return nil
}

func byTopic(ticks []feeds.Tick, topic string) []feeds.Tick {
	var out []feeds.Tick
	for _, tk := range ticks {
		if tk.Topic == topic {
			out = append(out, tk)
		}
	}
	return out
}

func TestRecordReplayRoundTrip(t *testing.T) {
	ticks := feedtest.BinanceTrades(t, binanceCSV)
	bus, err := stream.NewBus(stream.BusConfig{HistoryDepth: 2000})
	if err != nil {
		t.Fatal(err)
	}
	defer closeBus(t, bus)
	addr, stop := serve(t, bus, "127.0.0.1:0")

	publish := func(from, to int) {
		for _, tk := range ticks[from:to] {
			if _, err := bus.Publish("test", tk); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(0, 2) // both topics exist before the recorder subscribes

	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- record.Run(ctx, record.Options{
			URL: "ws://" + addr + "/ws", Topics: []string{"BTC-USD", "ETH-USD"}, Out: out,
			MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil on cancel", err)
		}
	}()

	// Publish until the recorder demonstrably receives.
	n := 2
	feedtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		publish(n, n+1)
		n++
		if out.String() == "" {
			return errors.New("nothing recorded yet")
		}
		return nil
	})
	publish(n, 800)

	// The server goes away; ticks keep arriving on the bus meanwhile.
	stop()
	publish(800, 1400)
	_, stop2 := serve(t, bus, addr)
	defer stop2()
	publish(1400, len(ticks))

	var got []feeds.Tick
	feedtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		got = parseLines(t, out.String())
		return suffixOf(got, ticks)
	})
	if len(got) < len(ticks)-100 {
		t.Errorf("recorded only %d of %d", len(got), len(ticks))
	}

	// Replay the recording into a fresh bus: the same ticks come out.
	file := filepath.Join(t.TempDir(), "session.ndjson")
	if err := os.WriteFile(file, []byte(out.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := replay.NewSource("replay", replay.Options{File: file})
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := stream.NewBus(stream.BusConfig{HistoryDepth: 2000})
	if err != nil {
		t.Fatal(err)
	}
	defer closeBus(t, fresh)
	if err := src.Run(context.Background(), fresh.Sink("replay")); err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"BTC-USD", "ETH-USD"} {
		want := byTopic(got, topic)
		h, err := fresh.History(topic, 0, 2000)
		if err != nil {
			t.Fatal(err)
		}
		var replayed []feeds.Tick
		for _, ht := range h.Ticks {
			replayed = append(replayed, feeds.Tick{Topic: topic, TS: ht.TS, Fields: ht.Data})
		}
		if diff := feedtest.Equal(replayed, want); diff != "" {
			t.Errorf("%s: %s", topic, diff)
		}
	}
}

func TestRunOptions(t *testing.T) {
	t.Parallel()
	if err := record.Run(context.Background(), record.Options{Out: &syncBuffer{}}); !errors.Is(err, record.ErrNoTopics) {
		t.Errorf("no topics: %v", err)
	}
	if err := record.Run(context.Background(), record.Options{Topics: []string{"X"}}); !errors.Is(err, record.ErrNoOut) {
		t.Errorf("no out: %v", err)
	}
	// No server: Run keeps retrying until ctx ends, then returns nil.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := record.Run(ctx, record.Options{URL: "ws://127.0.0.1:1/ws", Topics: []string{"X"}, Out: &syncBuffer{}, MinBackoff: time.Millisecond}); err != nil {
		t.Errorf("Run = %v", err)
	}
}
