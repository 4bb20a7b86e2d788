package replay

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/csv"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/feedtest"
	"github.com/tickstream/tickstream/feeds/tick"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	binanceCSV = "../../testdata/ticks/binance_spot_trades_btcusdt_ethusdt_2024-08-08_head2000.csv"
	equityCSV  = "../../testdata/ticks/us_equity_trades_ibm_aig_bac_2013-10-07_head2000.csv.gz"
)

// readCSV reads a testdata CSV (gunzipped if needed) into a header and rows.
func readCSV(t *testing.T, path string) (header []string, rows [][]string) {
	t.Helper()
	recs, err := csv.NewReader(strings.NewReader(strings.Join(feedtest.Lines(t, path), "\n"))).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return recs[0], recs[1:]
}

func num(t *testing.T, s string) tick.Num {
	t.Helper()
	v, err := tick.ParseNum(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// binanceWant is the Binance trades file as ticks, built straight from
// the CSV columns (trade_time_ms, symbol, price, qty) so that it does not
// share code with the decoder under test.
func binanceWant(t *testing.T) []feeds.Tick {
	_, rows := readCSV(t, binanceCSV)
	names := map[string]string{"BTCUSDT": "BTC-USD", "ETHUSDT": "ETH-USD"}
	var want []feeds.Tick
	for _, r := range rows {
		ts, _ := strconv.ParseInt(r[0], 10, 64)
		want = append(want, feeds.Tick{Topic: names[r[1]], TS: ts, Fields: []feeds.Field{
			{Name: "price", Value: num(t, r[3])}, {Name: "size", Value: num(t, r[4])},
		}})
	}
	return want
}

func equityWant(t *testing.T) []feeds.Tick {
	_, rows := readCSV(t, equityCSV)
	var want []feeds.Tick
	for _, r := range rows {
		tm, err := time.Parse(time.RFC3339, r[0])
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, feeds.Tick{Topic: r[1], TS: tm.UnixMilli(), Fields: []feeds.Field{
			{Name: "price", Value: num(t, r[3])}, {Name: "size", Value: num(t, r[4])},
		}})
	}
	return want
}

// writeNDJSON writes ticks in the tick format, gzipped if name ends in .gz.
func writeNDJSON(t *testing.T, name string, ticks []feeds.Tick) string {
	t.Helper()
	var b []byte
	for _, tk := range ticks {
		b = append(tk.AppendJSON(b), '\n')
	}
	if strings.HasSuffix(name, ".gz") {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Write(b)
		zw.Close()
		b = buf.Bytes()
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func run(t *testing.T, o Options) []feeds.Tick {
	t.Helper()
	s, err := NewSource("test", o)
	if err != nil {
		t.Fatal(err)
	}
	sink := &feedtest.Sink{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Run(ctx, sink); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Run did not finish at the end of the file")
	}
	return sink.Ticks()
}

func TestReplayRecordedData(t *testing.T) {
	t.Parallel()
	bin := binanceWant(t)
	eq := equityWant(t)
	if len(bin) != 2000 || len(eq) != 2000 {
		t.Fatalf("testdata: %d and %d rows, want 2000", len(bin), len(eq))
	}
	tests := []struct {
		name string
		opts func(t *testing.T) Options
		want []feeds.Tick
	}{
		{"binance csv", func(*testing.T) Options {
			return Options{File: binanceCSV, TSUnit: "ms", Fields: map[string]string{"price": "price", "size": "qty"},
				Rename: map[string]string{"BTCUSDT": "BTC-USD", "ETHUSDT": "ETH-USD"}}
		}, bin},
		{"binance csv auto ts", func(*testing.T) Options {
			return Options{File: binanceCSV, Fields: map[string]string{"price": "price", "size": "qty"},
				Rename: map[string]string{"BTCUSDT": "BTC-USD", "ETHUSDT": "ETH-USD"}}
		}, bin},
		{"equity csv.gz rfc3339", func(*testing.T) Options {
			return Options{File: equityCSV, TSColumn: "ts_utc", TSUnit: "rfc3339"}
		}, eq},
		{"equity csv.gz auto", func(*testing.T) Options { return Options{File: equityCSV} }, eq},
		{"ndjson tick format", func(t *testing.T) Options {
			return Options{File: writeNDJSON(t, "bin.ndjson", bin)}
		}, bin},
		{"ndjson.gz tick format", func(t *testing.T) Options {
			return Options{File: writeNDJSON(t, "eq.ndjson.gz", eq), Speed: 0}
		}, eq},
		{"ndjson mapped", func(t *testing.T) Options {
			path := filepath.Join(t.TempDir(), "m.jsonl")
			var b strings.Builder
			_, rows := readCSV(t, binanceCSV)
			for _, r := range rows {
				b.WriteString(`{"T":` + r[0] + `,"s":"` + r[1] + `","p":"` + r[3] + `","q":"` + r[4] + `","m":true}` + "\n")
			}
			os.WriteFile(path, []byte(b.String()), 0o644)
			return Options{File: path, TopicColumn: "s", TSColumn: "T", TSUnit: "ms",
				Fields: map[string]string{"price": "p", "size": "q"},
				Rename: map[string]string{"BTCUSDT": "BTC-USD", "ETHUSDT": "ETH-USD"}}
		}, bin},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := feedtest.Equal(run(t, tt.opts(t)), tt.want); diff != "" {
				t.Error(diff)
			}
		})
	}
}

func TestReplayLoopShiftsTime(t *testing.T) {
	t.Parallel()
	want := binanceWant(t)[:50]
	path := writeNDJSON(t, "loop.ndjson", want)
	got := run(t, Options{File: path, Loop: true, Loops: 3})
	if len(got) != 150 {
		t.Fatalf("got %d ticks, want 150", len(got))
	}
	span := want[49].TS - want[0].TS
	shift := span + span/49
	for i, tk := range got {
		w := want[i%50]
		if tk.TS != w.TS+int64(i/50)*shift || tk.Topic != w.Topic {
			t.Fatalf("tick %d: ts %d topic %s, want ts %d + %d×%d", i, tk.TS, tk.Topic, w.TS, i/50, shift)
		}
		if i > 0 && tk.TS < got[i-1].TS {
			t.Fatalf("tick %d goes back in time", i)
		}
	}
}

func TestReplayPacesBySpeed(t *testing.T) {
	t.Parallel()
	ticks := []feeds.Tick{
		{Topic: "A", TS: 1000, Fields: []feeds.Field{tick.F("price", 1)}},
		{Topic: "A", TS: 1100, Fields: []feeds.Field{tick.F("price", 2)}},
		{Topic: "A", TS: 1300, Fields: []feeds.Field{tick.F("price", 3)}},
	}
	path := writeNDJSON(t, "pace.ndjson", ticks)
	start := time.Now()
	got := run(t, Options{File: path, Speed: 2}) // 300 ms of data at 2× → 150 ms
	if el := time.Since(start); el < 140*time.Millisecond || el > 2*time.Second {
		t.Errorf("took %v, want about 150ms", el)
	}
	if diff := feedtest.Equal(got, ticks); diff != "" {
		t.Error(diff)
	}

	// Rebase: shifted by whole hours to within two hours before the start.
	start = time.Now()
	got = run(t, Options{File: path, Rebase: true})
	if d := start.UnixMilli() - got[0].TS; d < -1000 || d > 2*3600_000 || (got[0].TS-1000)%3600_000 != 0 || got[2].TS-got[0].TS != 300 {
		t.Errorf("rebased ts %d, %d; start %d", got[0].TS, got[2].TS, start.UnixMilli())
	}
}

func TestReplayStopsOnCancel(t *testing.T) {
	t.Parallel()
	s, err := NewSource("slow", Options{File: binanceCSV, Speed: 1, Loop: true, Fields: map[string]string{"price": "price"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sink := &feedtest.Sink{}
	done := make(chan error)
	go func() { done <- s.Run(ctx, sink) }()
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if sink.Len() == 0 {
			return errors.New("no tick yet")
		}
		return nil
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run on cancel = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run ignored cancel")
	}
}

func TestReplaySkipsBadRows(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "bad.csv")
	os.WriteFile(path, []byte("ts,symbol,price\n1000,A,1\n1001,A,oops\n1002,bad topic!,2\n,A,3\n1004,A,NaN\n1005,A\n1006,A,4\n"), 0o644)
	got := run(t, Options{File: path, TSUnit: "ms"})
	want := []feeds.Tick{
		{Topic: "A", TS: 1000, Fields: []feeds.Field{tick.F("price", 1)}},
		{Topic: "A", TS: 1006, Fields: []feeds.Field{tick.F("price", 4)}},
	}
	if diff := feedtest.Equal(got, want); diff != "" {
		t.Error(diff)
	}
}

func TestReplayPublishErrorFails(t *testing.T) {
	t.Parallel()
	s, err := NewSource("x", Options{File: binanceCSV, Fields: map[string]string{"price": "price"}})
	if err != nil {
		t.Fatal(err)
	}
	sink := &feedtest.Sink{}
	boom := errors.New("bus closed")
	sink.FailWith(boom)
	if err := s.Run(context.Background(), sink); !errors.Is(err, boom) {
		t.Errorf("Run = %v, want %v", err, boom)
	}
}

func TestNewBadOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, yaml, want string
	}{
		{"missing file", `{file: nope/missing.csv}`, `feed "r": options.file: open nope/missing.csv: no such file`},
		{"no file", `{speed: 1}`, `feed "r": options.file: missing`},
		{"unknown key", `{file: ` + binanceCSV + `, sped: 1}`, `feed "r": options: yaml: unmarshal errors:`},
		{"bad format", `{file: x.txt}`, `feed "r": options.format: cannot tell`},
		{"bad speed", `{file: ` + binanceCSV + `, speed: fast}`, `speed "fast": want a number or "max"`},
		{"negative speed", `{file: ` + binanceCSV + `, speed: -1}`, `feed "r": options.speed: -1`},
		{"bad unit", `{file: ` + binanceCSV + `, ts_unit: hours}`, `feed "r": options.ts_unit: "hours"`},
		{"missing column", `{file: ` + binanceCSV + `, fields: {price: last}}`, `feed "r": options.fields: price: no column "last"`},
		{"missing ts column", `{file: ` + binanceCSV + `, ts_column: when, fields: {price: price}}`, `feed "r": options.ts_column: no column "when"`},
		{"bad rename", `{file: ` + binanceCSV + `, rename: {BTCUSDT: "BTC USD"}, fields: {price: price}}`, `feed "r": options.rename: BTCUSDT: "BTC USD"`},
		{"loops without loop", `{file: ` + binanceCSV + `, loops: 2, fields: {price: price}}`, `feed "r": options.loops: set, but loop is false`},
		{"ndjson columns without mapping", `{file: x.ndjson, ts_column: T}`, `feed "r": options.fields: topic_column, ts_column and ts_unit need`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var n yaml.Node
			if err := yaml.Unmarshal([]byte(tt.yaml), &n); err != nil {
				t.Fatal(err)
			}
			_, err := New(feeds.Config{Name: "r", Type: "replay", Options: *n.Content[0]})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v\nwant it to contain %s", err, tt.want)
			}
		})
	}
}

func TestSpeedMax(t *testing.T) {
	t.Parallel()
	var o struct{ Speed Speed }
	if err := yaml.Unmarshal([]byte("speed: max"), &o); err != nil || o.Speed != 0 {
		t.Errorf("max: %v %v", o.Speed, err)
	}
	if err := yaml.Unmarshal([]byte("speed: 2.5"), &o); err != nil || o.Speed != 2.5 {
		t.Errorf("2.5: %v %v", o.Speed, err)
	}
}

func TestTimestampUnits(t *testing.T) {
	t.Parallel()
	tests := []struct {
		unit, in string
		want     int64
	}{
		{"", "1723161255342", 1723161255342},
		{"", "1723161255.342", 1723161255342},
		{"", "1723161255342123", 1723161255342},
		{"", "1723161253937085768", 1723161253937},
		{"", "2013-10-07T13:30:00.019Z", 1381152600019},
		{"", "2021-04-17T16:43:30.244075Z", 1618677810244},
		{"s", "1618677817.061845", 1618677817061}, // truncated, not rounded
		{"s", "1534614057.9996", 1534614057999},   // stays in :57
		{"", "1534614057.9996", 1534614057999},
		{"s", "1534614057.321597", 1534614057321},
		{"s", "1.5346140579996e9", 1534614057999},
		{"us", "1534614057999999.9", 1534614057999},
		{"ms", "1534614057999.9", 1534614057999},
		{"", "2013-10-07T13:44:59.9996Z", 1381153499999},
		{"ms", "1000", 1000},
		{"us", "1000000", 1000},
		{"ns", "1000000000", 1000},
		{"rfc3339", "2024-08-08T23:54:15.342+00:00", 1723161255342},
	}
	for _, tt := range tests {
		u, err := parseUnit(tt.unit)
		if err != nil {
			t.Fatal(err)
		}
		got, err := u.parse(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("%s %q = %d, %v; want %d", tt.unit, tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"", "-5", "yesterday", "1e400", "NaN", "1969-01-01T00:00:00Z"} {
		if got, err := unitAuto.parse(in); err == nil {
			t.Errorf("%q = %d, want an error", in, got)
		}
	}
}

// FuzzDecodeRecord feeds CSV lines to the decoder: it must never panic,
// and whatever it accepts must be a valid tick.
func FuzzDecodeRecord(f *testing.F) {
	for _, l := range feedtest.Lines(f, binanceCSV)[1:20] {
		f.Add(l)
	}
	for _, l := range feedtest.Lines(f, equityCSV)[1:20] {
		f.Add(l)
	}
	f.Add(`1,"A,B",3,4,5,6`)
	f.Add(`-1,X,1,1e999,1,buy`)
	f.Add(`,,,,,`)
	header := []string{"ts", "symbol", "trade_id", "price", "qty", "taker_side"}
	d, err := newDecoder(Options{Fields: map[string]string{"price": "price", "size": "qty", "id": "trade_id"}}, header, true)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, line string) {
		rec, err := csv.NewReader(strings.NewReader(line)).Read()
		if err != nil {
			return
		}
		var tk feeds.Tick
		if err := d.decodeRecord(&tk, rec); err != nil {
			return
		}
		if err := tk.Validate(); err != nil {
			t.Fatalf("accepted an invalid tick %+v: %v", tk, err)
		}
	})
}

// FuzzDecodeLine feeds NDJSON lines through both NDJSON modes.
func FuzzDecodeLine(f *testing.F) {
	f.Add(`{"topic":"BTC-USD","ts":1700000000000,"price":1.5,"size":2,"fields":{"oi":7}}`)
	f.Add(`{"T":1723161255342,"s":"BTCUSDT","p":"61837.63000000","q":"0.02000000"}`)
	f.Add(`{"T":"2024-08-08T23:54:15Z","s":"X","p":1e308}`)
	f.Add(`[1,2]`)
	f.Add(`{"topic":null}`)
	plain := &Source{}
	mapped := &Source{}
	var err error
	mapped.dec, err = newDecoder(Options{TopicColumn: "s", TSColumn: "T", Fields: map[string]string{"price": "p", "size": "q"}},
		[]string{"T", "s", "p", "q"}, false)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, line string) {
		for _, s := range []*Source{plain, mapped} {
			var tk feeds.Tick
			if err := s.decodeLine(&tk, []byte(line)); err != nil {
				continue
			}
			if err := tk.Validate(); err != nil {
				t.Fatalf("accepted an invalid tick %+v: %v", tk, err)
			}
		}
	})
}

func TestReplayLoopWithoutTimestampsStops(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "nots.ndjson")
	os.WriteFile(path, []byte(`{"topic":"A","price":1}`+"\n"+`{"topic":"A","price":2}`+"\n"), 0o644)
	if got := run(t, Options{File: path, Loop: true, Speed: 1}); len(got) != 2 || got[0].TS != 0 {
		t.Errorf("got %v, want one pass of 2 unstamped ticks", got)
	}
}
