package record_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
	srv, err := server.New(server.Config{Bus: bus, SendBufferBytes: 4 << 10, WriteTimeout: time.Minute})
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

// gatedWriter passes writes through until armed; then every write waits
// until it is released, as a stalled disk would.
type gatedWriter struct {
	syncBuffer
	armed   atomic.Bool
	release chan struct{}
	once    sync.Once
}

func newGatedWriter(t *testing.T) *gatedWriter {
	w := &gatedWriter{release: make(chan struct{})}
	t.Cleanup(w.open)
	return w
}

func (w *gatedWriter) Write(p []byte) (int, error) {
	if w.armed.Load() {
		<-w.release
	}
	return w.syncBuffer.Write(p)
}

func (w *gatedWriter) open() { w.once.Do(func() { close(w.release) }) }

// logRecords collects the records of a slog.Logger.
type logRecords struct {
	mu      sync.Mutex
	records []slog.Record
}

func (l *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.records = append(l.records, r.Clone())
	return nil
}
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecords) WithGroup(string) slog.Handler      { return l }

// has reports whether a record's message starts with prefix.
func (l *logRecords) has(prefix string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.records {
		if strings.HasPrefix(r.Message, prefix) {
			return true
		}
	}
	return false
}

// sum adds up the int attribute key of every record with message msg.
func (l *logRecords) sum(msg, key string) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var total int64
	for _, r := range l.records {
		if r.Message != msg {
			continue
		}
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == key && a.Value.Kind() == slog.KindUint64 {
				total += int64(a.Value.Uint64())
			} else if a.Key == key {
				total += a.Value.Int64()
			}
			return true
		})
	}
	return total
}

// smallRcvBufClient dials with a small receive buffer (set before
// connecting, which turns off the kernel's autotuning), so that a recorder
// that stops reading stops the server's writes within a few KiB instead
// of megabytes.
func smallRcvBufClient() *http.Client {
	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10)
		})
		return errors.Join(err, serr)
	}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

// steppedDown starts a server whose clients step down early, a recorder
// writing to a gated writer, and publishes on topics until the recorder
// has written something. It returns the bus, the writer, a publish
// function (distinct prices, recorded in order), and the published ticks.
type stepDownEnv struct {
	t         *testing.T
	bus       *stream.Bus
	out       *gatedWriter
	log       *logRecords
	published []feeds.Tick
	n         int
	addr      string
	stop      func()
	reg       *prometheus.Registry
}

// stepDowns is how many times the server has stepped a client down.
func (e *stepDownEnv) stepDowns() float64 {
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "tickstream_lagging_stepdowns_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

var stepTopics = []string{"BTC-USD", "ETH-USD"}

func (e *stepDownEnv) publish(k int) {
	e.t.Helper()
	for range k {
		tk := feeds.Tick{Topic: stepTopics[e.n%len(stepTopics)], TS: 1_700_000_000_000 + int64(e.n)}
		tk.Set("price", 1000+float64(e.n)/100)
		tk.Set("size", float64(e.n%7+1))
		if e.n%3 == 0 {
			tk.Set("bid", 999+float64(e.n)/100)
		}
		e.n++
		if _, err := e.bus.Publish("test", tk); err != nil {
			e.t.Fatal(err)
		}
		e.published = append(e.published, tk)
	}
}

func startStepDown(t *testing.T, historyDepth int) *stepDownEnv {
	reg := prometheus.NewRegistry()
	bus, err := stream.NewBus(stream.BusConfig{
		Metrics:         stream.NewMetrics(reg),
		HistoryDepth:    historyDepth,
		MaxPendingBytes: 4 << 10,
		LagThrottle:     20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeBus(t, bus) })
	e := &stepDownEnv{t: t, bus: bus, reg: reg, out: newGatedWriter(t), log: &logRecords{}}
	e.addr, e.stop = serve(t, bus, "127.0.0.1:0")
	e.publish(2)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- record.Run(ctx, record.Options{
			URL: "ws://" + e.addr + "/ws", Topics: stepTopics, Out: e.out,
			Logger:     slog.New(e.log),
			MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
			HTTPClient: smallRcvBufClient(),
		})
	}()
	t.Cleanup(func() {
		e.out.open()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil on cancel", err)
		}
	})
	feedtest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		e.publish(1)
		if out := e.out.String(); len(parseLines(t, out)) < 2 {
			return errors.New("not recording yet")
		}
		return nil
	})
	return e
}

// burst stalls the recorder's output, publishes k ticks, waits until the
// server has stepped the recorder down, and releases the output.
func (e *stepDownEnv) burst(k int) {
	e.t.Helper()
	before := e.stepDowns()
	e.out.armed.Store(true)
	e.publish(k)
	feedtest.CheckFor(e.t, 20*time.Second, 5*time.Millisecond, func() error {
		// (It may already have caught up: a merged update is small.)
		if e.stepDowns() == before {
			return errors.New("the recorder is not stepped down")
		}
		return nil
	})
	e.out.open()
}

// TestRecordSteppedDownKeepsEveryTick: a recorder too slow for a burst is
// stepped down, so the server merges the burst into updates with agg.n > 1;
// the recording still holds every tick exactly once, in order (issue 7.9).
func TestRecordSteppedDownKeepsEveryTick(t *testing.T) {
	t.Parallel()
	const n = 4000
	e := startStepDown(t, 2*n)
	e.burst(n)
	e.publish(10) // and life goes on

	var got []feeds.Tick
	feedtest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		got = parseLines(t, e.out.String())
		if len(got) < n {
			return fmt.Errorf("%d ticks recorded", len(got))
		}
		return suffixOf(got, e.published)
	})
	// The recording is a suffix of what was published (ticks published
	// before the recorder subscribed are not in it): it must hold at
	// least the burst and what came after, every tick once, in order.
	if len(got) < n+10 {
		t.Errorf("recorded %d ticks, want at least the %d of the burst and after", len(got), n+10)
	}
	if missing := e.log.sum(record.LogMissing, "missing"); missing != 0 {
		t.Errorf("logged %d missing ticks, want none", missing)
	}
	if !e.log.has("record: the server stepped the recorder down") {
		t.Errorf("the step-down was not logged")
	}
}

// holes checks, per topic, that got is published from some tick on, in
// order, each tick once, with nothing but whole ticks left out; it returns
// how many were left out and whether the last published tick is in.
func holes(got, published []feeds.Tick) (missing int, complete bool, err error) {
	complete = true
	for _, topic := range stepTopics {
		g, p := byTopic(got, topic), byTopic(published, topic)
		at := make(map[int64]int, len(p)) // ts is unique per tick
		for i, tk := range p {
			at[tk.TS] = i
		}
		prev := -1
		for _, tk := range g {
			i, ok := at[tk.TS]
			if !ok {
				return 0, false, fmt.Errorf("%s: recorded a tick never published: %v", topic, tk)
			}
			if diff := feedtest.Equal([]feeds.Tick{tk}, p[i:i+1]); diff != "" {
				return 0, false, fmt.Errorf("%s: %s", topic, diff)
			}
			if prev >= 0 && i <= prev {
				return 0, false, fmt.Errorf("%s: tick %d recorded after tick %d (reordered or twice)", topic, i, prev)
			}
			if prev >= 0 {
				missing += i - prev - 1
			}
			prev = i
		}
		complete = complete && prev == len(p)-1
	}
	return missing, complete, nil
}

// TestRecordSteppedDownPastHistory: a burst larger than the server's
// history leaves a hole; the recording holds what history still had, in
// order and once, and the log counts exactly the ticks left out.
func TestRecordSteppedDownPastHistory(t *testing.T) {
	t.Parallel()
	const n, depth = 3000, 200
	e := startStepDown(t, depth)
	e.burst(n)
	e.publish(10)

	var missing int
	feedtest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		var complete bool
		var err error
		missing, complete, err = holes(parseLines(t, e.out.String()), e.published)
		if err == nil && !complete {
			err = errors.New("the last ticks are not recorded yet")
		}
		return err
	})
	if missing == 0 || missing > n {
		t.Errorf("%d ticks left out of a burst of %d past a history of %d per topic", missing, n, depth)
	}
	if logged := e.log.sum(record.LogMissing, "missing"); logged != int64(missing) {
		t.Errorf("logged %d missing ticks, the recording lacks %d", logged, missing)
	}
}

// TestRecordReconnectPastHistory: the server goes away while more ticks
// are published than it keeps; after the restart the server resets the
// recorder's cursor, and the recorder writes what history still has,
// counts the rest, and goes on.
func TestRecordReconnectPastHistory(t *testing.T) {
	t.Parallel()
	const depth = 100
	e := startStepDown(t, depth)
	e.publish(50)
	feedtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, complete, err := holes(parseLines(t, e.out.String()), e.published)
		if err == nil && !complete {
			err = errors.New("not all recorded yet")
		}
		return err
	})
	e.stop()
	e.publish(5 * depth)
	_, stop := serve(t, e.bus, e.addr)
	defer stop()
	e.publish(10)

	var missing int
	feedtest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		var complete bool
		var err error
		missing, complete, err = holes(parseLines(t, e.out.String()), e.published)
		if err == nil && !complete {
			err = errors.New("the last ticks are not recorded yet")
		}
		return err
	})
	if missing == 0 {
		t.Errorf("nothing left out, though the server kept only %d of %d ticks per topic", depth, 5*depth/2)
	}
	if logged := e.log.sum(record.LogMissing, "missing"); logged != int64(missing) {
		t.Errorf("logged %d missing ticks, the recording lacks %d", logged, missing)
	}
}
