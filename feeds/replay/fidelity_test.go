package replay

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/feedtest"
)

const (
	ibmTradesCSV = "../../testdata/ticks/us_equity_trades_ibm_2013-10-07_0930-0945ET.csv.gz"
	ibmQuotesCSV = "../../testdata/ticks/us_equity_quotes_ibm_2013-10-07_handwritten.csv"
)

// refusingSink refuses, like the bus does for a tick over one of its
// limits, every tick older than minTS, and records the rest.
type refusingSink struct {
	feedtest.Sink
	minTS int64
}

func (s *refusingSink) Publish(t feeds.Tick) error {
	if t.TS < s.minTS {
		return &feeds.TickError{Err: feeds.ErrOverLimit, Detail: fmt.Sprintf("ts %d is too old", t.TS)}
	}
	return s.Sink.Publish(t)
}

func newReplaySupervisor(t *testing.T, sink feeds.Sink, cfgs ...feeds.Config) *feeds.Supervisor {
	t.Helper()
	reg := &feeds.Registry{}
	reg.Register("replay", New)
	s, err := feeds.NewSupervisor(feeds.SupervisorConfig{
		Registry: reg, Feeds: cfgs, Sink: func(string) feeds.Sink { return sink },
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, HealthyAfter: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return s
}

// TestReplayRefusedTickIsSkippedNotReplayed: a row the bus refuses in the
// middle of the file is dropped and counted; every good row is published
// exactly once and the feed is not restarted (which would publish the
// file's head again).
func TestReplayRefusedTickIsSkippedNotReplayed(t *testing.T) {
	t.Parallel()
	lines := feedtest.Lines(t, binanceCSV)
	mid := len(lines) / 2
	bad := "1000," + strings.SplitN(lines[mid], ",", 2)[1] // a 1970 ts: refused by the bus
	unmapped := "1723161300000,BTCUSDT,1,oops,1,buy"       // not a number: never a tick
	rows := append([]string{}, lines[:mid]...)
	rows = append(rows, bad)
	rows = append(rows, lines[mid:mid+10]...)
	rows = append(rows, unmapped)
	rows = append(rows, lines[mid+10:]...)
	path := filepath.Join(t.TempDir(), "trades.csv")
	if err := os.WriteFile(path, []byte(strings.Join(rows, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sink := &refusingSink{minTS: 1e12}
	s := newReplaySupervisor(t, sink, feeds.Config{Name: "trades", Type: "replay", Options: yamlNode(t,
		`{file: "`+path+`", topic_column: symbol, ts_column: trade_time_ms, ts_unit: ms, fields: {price: price, size: qty}, rename: {BTCUSDT: BTC-USD, ETHUSDT: ETH-USD}}`)})
	s.Start()
	feedtest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if st := feedtest.FeedStatus(s, "trades"); st.State != feeds.StateStopped {
			return fmt.Errorf("state %s", st.State)
		}
		return nil
	})
	if diff := feedtest.Equal(sink.Ticks(), binanceWant(t)); diff != "" {
		t.Error(diff)
	}
	st := feedtest.FeedStatus(s, "trades")
	if st.Restarts != 0 || st.Dropped != 2 || st.LastDropReason != feeds.DropUnmapped || st.Ticks != uint64(len(lines)-1) {
		t.Errorf("status %+v", st)
	}
}

// TestReplayStopsWhenBusCloses: a closed bus ends the feed (Run returns
// nil), it is not a failure to restart.
func TestReplayStopsWhenBusCloses(t *testing.T) {
	t.Parallel()
	s, err := NewSource("x", Options{File: binanceCSV, Fields: map[string]string{"price": "price"}})
	if err != nil {
		t.Fatal(err)
	}
	sink := &feedtest.Sink{}
	sink.FailWith(fmt.Errorf("stream: %w", feeds.ErrClosed))
	if err := s.Run(context.Background(), sink); err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
}

// TestReplayAbsentValues: in a quote file where each row carries one
// side, absent_values keeps the other side's 0 out of the tick.
func TestReplayAbsentValues(t *testing.T) {
	t.Parallel()
	o := Options{File: ibmQuotesCSV, AbsentValues: map[string]float64{"bid": 0, "ask": 0, "bid_size": 0, "ask_size": 0}}
	s, err := NewSource("quotes", o)
	if err != nil {
		t.Fatal(err)
	}
	sink := &dropCountingSink{}
	if err := s.Run(context.Background(), sink); err != nil {
		t.Fatal(err)
	}
	f := func(n string, v float64) feeds.Field { return feeds.F(n, v) }
	ts := func(s string) int64 { tm, _ := time.Parse(time.RFC3339, s); return tm.UnixMilli() }
	want := []feeds.Tick{
		{Topic: "IBM", TS: ts("2013-10-07T13:30:00.028Z"), Fields: []feeds.Field{f("bid", 181.88), f("bid_size", 300)}},
		{Topic: "IBM", TS: ts("2013-10-07T13:30:00.028Z"), Fields: []feeds.Field{f("ask", 181.95), f("ask_size", 200)}},
		{Topic: "IBM", TS: ts("2013-10-07T13:30:00.116Z"), Fields: []feeds.Field{f("bid", 181.89), f("bid_size", 100)}},
		{Topic: "IBM", TS: ts("2013-10-07T13:30:00.310Z"), Fields: []feeds.Field{f("ask", 181.94), f("ask_size", 500)}},
		// 13:30:00.310 T has neither side: skipped.
		{Topic: "IBM", TS: ts("2013-10-07T13:30:01.004Z"), Fields: []feeds.Field{f("bid", 181.90), f("bid_size", 200)}},
		{Topic: "IBM", TS: ts("2013-10-07T13:30:59.999Z"), Fields: []feeds.Field{f("ask", 181.93), f("ask_size", 100)}},
		{Topic: "IBM", TS: ts("2013-10-07T13:31:00.000Z"), Fields: []feeds.Field{f("bid", 181.91), f("bid_size", 400)}},
		{Topic: "IBM", TS: ts("2013-10-07T13:44:59.999Z"), Fields: []feeds.Field{f("bid", 182.50), f("bid_size", 100)}},
		{Topic: "IBM", TS: ts("2013-10-07T13:44:59.999Z"), Fields: []feeds.Field{f("ask", 182.53), f("ask_size", 300)}},
	}
	if diff := feedtest.Equal(sink.Ticks(), want); diff != "" {
		t.Error(diff)
	}
	if sink.drops != 1 {
		t.Errorf("%d drops reported, want 1 (the row with neither side)", sink.drops)
	}

	// The same with NDJSON in the tick format.
	var nd []feeds.Tick
	for _, tk := range want {
		tk = tk.Clone()
		if _, ok := tk.Get("bid"); !ok {
			tk.Fields = append([]feeds.Field{f("bid", 0)}, tk.Fields...)
		} else {
			tk.Fields = append(tk.Fields[:1:1], f("ask", 0), tk.Fields[1])
		}
		nd = append(nd, tk)
	}
	got := run(t, Options{File: writeNDJSON(t, "q.ndjson", nd), AbsentValues: map[string]float64{"bid": 0, "ask": 0}})
	if diff := feedtest.Equal(got, want); diff != "" {
		t.Error("ndjson:", diff)
	}
}

// dropCountingSink records ticks and counts the drops a feed reports.
type dropCountingSink struct {
	feedtest.Sink
	mu    sync.Mutex
	drops int
}

func (s *dropCountingSink) ReportDrop(feeds.DropReason, string) {
	s.mu.Lock()
	s.drops++
	s.mu.Unlock()
}

// TestRebaseSharedHourOffset: replay feeds of one config that start
// within an hour of each other (IBM trades and quotes, 44 ms apart) are
// shifted by exactly the same offset, a whole number of hours, so that the
// 15 one-minute bars of 09:30-09:45 stay 15 and trades and quotes stay
// aligned; a feed of another era in the same config gets its own
// whole-hour offset; none starts in the future; a restart keeps the offset.
func TestRebaseSharedHourOffset(t *testing.T) {
	// Not parallel: the rebase group is per process.
	rebasing.mu.Lock()
	rebasing.open = nil
	rebasing.mu.Unlock()
	now := time.Date(2026, 11, 30, 1, 47, 33, 123_000_000, time.UTC)
	build := func(name string, o Options) *Source {
		o.Rebase = true
		s, err := NewSource(name, o)
		if err != nil {
			t.Fatal(err)
		}
		s.now = func() time.Time { return now }
		return s
	}
	trades := build("trades", Options{File: ibmTradesCSV})
	quotes := build("quotes", Options{File: ibmQuotesCSV, AbsentValues: map[string]float64{"bid": 0, "ask": 0, "bid_size": 0, "ask_size": 0}})
	crypto := build("crypto", Options{File: binanceCSV, TopicColumn: "symbol", TSColumn: "trade_time_ms", Fields: map[string]string{"price": "price"}})
	runAt := func(s *Source, at time.Time) []feeds.Tick {
		s.now = func() time.Time { return at }
		sink := &feedtest.Sink{}
		if err := s.Run(context.Background(), sink); err != nil {
			t.Fatal(err)
		}
		return sink.Ticks()
	}
	gotQ := runAt(quotes, now) // the first to run anchors the group
	gotT := runAt(trades, now.Add(1500*time.Millisecond))
	gotC := runAt(crypto, now.Add(3*time.Second))

	srcT := equityIBM(t)
	srcQ := run(t, Options{File: ibmQuotesCSV, AbsentValues: map[string]float64{"bid": 0, "ask": 0, "bid_size": 0, "ask_size": 0}})
	srcC := binanceWant(t)
	offT, offQ, offC := gotT[0].TS-srcT[0].TS, gotQ[0].TS-srcQ[0].TS, gotC[0].TS-srcC[0].TS
	if offT != offQ {
		t.Errorf("trades offset %d, quotes offset %d: want the same", offT, offQ)
	}
	for name, off := range map[string]int64{"trades": offT, "quotes": offQ, "crypto": offC} {
		if off%time.Hour.Milliseconds() != 0 {
			t.Errorf("%s offset %d ms is not a whole number of hours", name, off)
		}
	}
	for name, p := range map[string][2][]feeds.Tick{"trades": {gotT, srcT}, "quotes": {gotQ, srcQ}, "crypto": {gotC, srcC}} {
		got, src := p[0], p[1]
		if len(got) != len(src) {
			t.Fatalf("%s: %d ticks, want %d", name, len(got), len(src))
		}
		if got[0].TS > now.UnixMilli() || got[0].TS < now.Add(-2*time.Hour).UnixMilli() {
			t.Errorf("%s starts at %d, want within 2 h before %d", name, got[0].TS, now.UnixMilli())
		}
		if g, w := minutes(got), minutes(src); g != w {
			t.Errorf("%s: %d one-minute bars, want %d", name, g, w)
		}
	}
	if n := minutes(gotT); n != 15 {
		t.Errorf("IBM 09:30-09:45: %d one-minute bars, want 15", n)
	}
	// A restart (another Run, later) keeps the offset.
	if again := runAt(trades, now.Add(time.Hour)); again[0].TS != gotT[0].TS {
		t.Errorf("restart: first ts %d, was %d", again[0].TS, gotT[0].TS)
	}
}

func equityIBM(t *testing.T) []feeds.Tick {
	return run(t, Options{File: ibmTradesCSV})
}

// minutes counts the distinct one-minute buckets of ticks.
func minutes(ticks []feeds.Tick) int {
	seen := map[int64]bool{}
	for _, tk := range ticks {
		seen[tk.TS/60_000] = true
	}
	return len(seen)
}

// TestReplayTruncatesFractionalSeconds: ts in seconds with a fraction is
// truncated to the millisecond, never rounded into the next second.
func TestReplayTruncatesFractionalSeconds(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "s.csv")
	os.WriteFile(path, []byte("time,symbol,price\n1534614057.9996,XBT/USD,6400.5\n1534614057.321597,XBT/USD,6400.6\n"), 0o644)
	got := run(t, Options{File: path, TSUnit: "s"})
	if len(got) != 2 || got[0].TS != 1534614057999 || got[1].TS != 1534614057321 {
		t.Errorf("got %v", got)
	}
}

func yamlNode(t *testing.T, s string) yaml.Node {
	t.Helper()
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(s), &n); err != nil {
		t.Fatal(err)
	}
	return *n.Content[0]
}
