// Package feedtest holds test helpers shared by the feed adapters: an
// in-memory capturing Sink and a polling CheckFor.
//
// Concurrency: a Sink is safe for concurrent use. CheckFor runs fn on the
// calling goroutine only.
package feedtest

import (
	"bufio"
	"compress/gzip"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/tick"
)

// Sink records every tick published into it, validated like the bus does,
// so that a feed that emits an invalid tick fails the test the same way it
// would fail in production.
type Sink struct {
	mu    sync.Mutex
	ticks []feeds.Tick
	err   error // returned by Publish instead of recording, if set
	drops []feeds.DropReason
}

var (
	_ feeds.Sink         = (*Sink)(nil)
	_ feeds.DropReporter = (*Sink)(nil)
)

// ReportDrop records a drop the feed reported (feeds.Drop).
func (s *Sink) ReportDrop(reason feeds.DropReason, _ string) {
	s.mu.Lock()
	s.drops = append(s.drops, reason)
	s.mu.Unlock()
}

// Drops returns the reasons of the drops reported so far, in order.
func (s *Sink) Drops() []feeds.DropReason {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]feeds.DropReason(nil), s.drops...)
}

// Publish validates and records a copy of t.
func (s *Sink) Publish(t feeds.Tick) error {
	if err := t.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	s.ticks = append(s.ticks, t.Clone())
	return nil
}

// FailWith makes later Publish calls return err (nil restores them).
func (s *Sink) FailWith(err error) {
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
}

// Ticks returns a copy of the recorded ticks, in publish order.
func (s *Sink) Ticks() []feeds.Tick {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]feeds.Tick, len(s.ticks))
	copy(out, s.ticks)
	return out
}

// Len is the number of recorded ticks.
func (s *Sink) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ticks)
}

// CheckFor calls fn every `every` until it returns nil, failing the test
// with fn's last error if that has not happened within total.
func CheckFor(t testing.TB, total, every time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	var err error
	for time.Now().Before(deadline) {
		if err = fn(); err == nil {
			return
		}
		time.Sleep(every)
	}
	t.Fatalf("after %v: %v", total, err)
}

// Lines returns the non-blank lines of a testdata file, gunzipped if its
// name ends in .gz.
func Lines(t testing.TB, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(path, ".gz") {
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		r = zr
	}
	var lines []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// Equal reports the first difference between two tick lists in their
// JSON form, or "" if they are equal (same count, order, topics, ts and
// fields in the same order).
func Equal(got, want []feeds.Tick) string {
	n := min(len(got), len(want))
	for i := range n {
		g, w := string(got[i].AppendJSON(nil)), string(want[i].AppendJSON(nil))
		if g != w && !sameValues(got[i], want[i]) {
			return "tick " + strconv.Itoa(i) + ":\n got  " + g + "\n want " + w
		}
	}
	if len(got) != len(want) {
		return "got " + strconv.Itoa(len(got)) + " ticks, want " + strconv.Itoa(len(want))
	}
	return ""
}

// sameValues reports whether a and b have the same topic, ts and fields
// in the same order with equal values (181.8800 equals 181.88: a feed keeps
// the source's digits, a test's want may be built from float64s).
func sameValues(a, b feeds.Tick) bool {
	if a.Topic != b.Topic || a.TS != b.TS || len(a.Fields) != len(b.Fields) {
		return false
	}
	for i, f := range a.Fields {
		if f.Name != b.Fields[i].Name || !f.Value.Equal(b.Fields[i].Value) {
			return false
		}
	}
	return true
}

// BinanceTrades reads the shipped Binance trades CSV (trade_time_ms,
// symbol, trade_id, price, qty, …) at path as the ticks a feed should
// publish for it: topics BTC-USD and ETH-USD, price, size and the trade id
// as a custom field.
func BinanceTrades(t testing.TB, path string) []feeds.Tick {
	t.Helper()
	names := map[string]string{"BTCUSDT": "BTC-USD", "ETHUSDT": "ETH-USD"}
	var ticks []feeds.Tick
	for _, l := range Lines(t, path)[1:] {
		r := strings.Split(l, ",")
		ts, _ := strconv.ParseInt(r[0], 10, 64)
		p := tick.MustNum(r[3])
		q := tick.MustNum(r[4])
		id := tick.MustNum(r[2])
		ticks = append(ticks, feeds.Tick{Topic: names[r[1]], TS: ts, Fields: []feeds.Field{
			{Name: "price", Value: p}, {Name: "size", Value: q}, {Name: "trade_id", Value: id},
		}})
	}
	return ticks
}

// FeedStatus returns the status of feed name, or a zero Status.
func FeedStatus(s feeds.StatusReporter, name string) feeds.Status {
	for _, st := range s.Statuses() {
		if st.Name == name {
			return st
		}
	}
	return feeds.Status{}
}
