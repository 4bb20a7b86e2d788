package store_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/store"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func open(t *testing.T, dir string, o store.Options) *store.Store {
	t.Helper()
	o.Dir = dir
	if o.Logger == nil {
		o.Logger = quiet
	}
	st, err := store.Open(o)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func newBus(t *testing.T, st stream.Store, depth int) *stream.Bus {
	t.Helper()
	b, err := stream.NewBus(stream.BusConfig{Store: st, HistoryDepth: depth, CandleDepth: 50, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func closeAll(t *testing.T, b *stream.Bus, st *store.Store) {
	t.Helper()
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}

// publishN publishes n ticks of topic with prices and sizes, their ts
// 250 ms apart from base (several 1 s bars, a late tick included).
func publishN(t *testing.T, b *stream.Bus, topic string, from, n int, base int64) {
	t.Helper()
	for i := from; i < from+n; i++ {
		ts := base + int64(i)*250
		if i%7 == 3 {
			ts -= 900 // late: into an earlier bar
		}
		tk := tick.Tick{Topic: topic, TS: ts}
		tk.Set(tick.FieldPrice, 100+float64(i%13)-6.5)
		tk.Set(tick.FieldSize, 0.25*float64(i%5+1))
		if i%10 == 0 {
			tk.Set("oi", float64(i))
		}
		if _, err := b.Publish("test", tk); err != nil {
			t.Fatal(err)
		}
	}
}

type snapshot struct {
	epoch   string
	topics  []stream.TopicInfo
	history map[string]stream.History
	candles map[string][]stream.Candle
}

func snap(t *testing.T, b *stream.Bus) snapshot {
	t.Helper()
	s := snapshot{epoch: b.Epoch(), topics: b.Topics(), history: map[string]stream.History{}, candles: map[string][]stream.Candle{}}
	for i := range s.topics {
		s.topics[i].Rate = 0 // not kept
		name := s.topics[i].Topic
		h, err := b.History(name, 0, 10000)
		if err != nil {
			t.Fatal(err)
		}
		s.history[name] = h
		for _, iv := range stream.CandleIntervals {
			c, err := b.Candles(name, iv.Name, 1000)
			if err != nil {
				t.Fatal(err)
			}
			s.candles[name+"/"+iv.Name] = c
		}
	}
	return s
}

// A bus restarted on its store has the same epoch, seqs, latest fields,
// history and candles, and goes on from the same seq.
func TestRestartKeepsEverything(t *testing.T) {
	dir := t.TempDir()
	st := open(t, dir, store.Options{})
	b := newBus(t, st, 40)
	base := time.Now().Add(-time.Hour).UnixMilli()
	publishN(t, b, "A", 0, 100, base)
	publishN(t, b, "B.x", 0, 30, base)
	st.Flush() // so that History reads the same past the ring
	before := snap(t, b)
	closeAll(t, b, st)

	st = open(t, dir, store.Options{})
	b = newBus(t, st, 40)
	after := snap(t, b)
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("after a restart:\n%+v\nwant\n%+v", after, before)
	}
	if seq, err := b.Publish("test", tick.Tick{Topic: "A", Fields: []tick.Field{tick.F("price", 1)}}); err != nil || seq != 101 {
		t.Fatalf("next publish: seq %d, %v; want 101", seq, err)
	}
	closeAll(t, b, st)
}

// /api/history reads past the memory ring from the store, gap-free.
func TestHistoryBackfillsFromStore(t *testing.T) {
	st := open(t, t.TempDir(), store.Options{})
	b := newBus(t, st, 10)
	publishN(t, b, "A", 0, 200, time.Now().UnixMilli())
	st.Flush()
	h, err := b.History("A", 20, 150)
	if err != nil {
		t.Fatal(err)
	}
	if h.Oldest != 1 || h.Last != 200 || len(h.Ticks) != 150 {
		t.Fatalf("history: oldest %d last %d, %d ticks; want 1, 200, 150", h.Oldest, h.Last, len(h.Ticks))
	}
	for i, tk := range h.Ticks {
		if tk.Seq != uint64(21+i) {
			t.Fatalf("tick %d has seq %d, want %d", i, tk.Seq, 21+i)
		}
	}
	// Across the ring's start.
	h, _ = b.History("A", 185, 100)
	if len(h.Ticks) != 15 || h.Ticks[0].Seq != 186 || h.Ticks[14].Seq != 200 {
		t.Fatalf("history after 185: %d ticks from %v", len(h.Ticks), h.Ticks)
	}
	h, _ = b.History("A", 170, 100)
	if len(h.Ticks) != 30 || h.Ticks[0].Seq != 171 || h.Ticks[29].Seq != 200 {
		t.Fatalf("history after 170: %d ticks", len(h.Ticks))
	}
	closeAll(t, b, st)
}

func TestRetentionByCount(t *testing.T) {
	st := open(t, t.TempDir(), store.Options{RetentionTicks: 50})
	b := newBus(t, st, 10)
	publishN(t, b, "A", 0, 300, time.Now().UnixMilli())
	st.Flush()
	h, _ := b.History("A", 0, 1000)
	if h.Oldest != 251 || len(h.Ticks) != 50 {
		t.Fatalf("oldest %d, %d ticks; want 251 and 50", h.Oldest, len(h.Ticks))
	}
	closeAll(t, b, st)
}

func TestRetentionByAge(t *testing.T) {
	var nowNS atomic.Int64
	nowNS.Store(time.Now().UnixNano())
	clock := func() time.Time { return time.Unix(0, nowNS.Load()) }
	st := open(t, t.TempDir(), store.Options{RetentionAge: time.Minute, Now: clock})
	b, err := stream.NewBus(stream.BusConfig{Store: st, HistoryDepth: 10, Logger: quiet, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, b, "A", 0, 100, clock().UnixMilli()) // accepted "now"
	st.Flush()
	nowNS.Add(int64(2 * time.Minute))
	publishN(t, b, "A", 100, 20, clock().UnixMilli())
	st.Flush()
	st.Maintain()
	h, _ := b.History("A", 0, 1000)
	if h.Oldest != 101 || len(h.Ticks) != 20 {
		t.Fatalf("oldest %d, %d ticks; want 101 and 20", h.Oldest, len(h.Ticks))
	}
	closeAll(t, b, st)
}

// Past store_max_bytes the oldest ticks are pruned: the pages in use and
// the file stay bounded, and the newest ticks are kept.
func TestMaxBytesBoundsTheStore(t *testing.T) {
	const maxBytes = 1 << 20
	dir := t.TempDir()
	st := open(t, dir, store.Options{MaxBytes: maxBytes})
	b := newBus(t, st, 10)
	base := time.Now().UnixMilli()
	for round := range 12 {
		for _, topic := range []string{"A", "B", "C"} {
			publishN(t, b, topic, round*1000, 1000, base)
		}
		st.Flush()
		st.Maintain()
		used, file := st.Bytes()
		if used > maxBytes || file > 4*maxBytes {
			t.Fatalf("round %d: %d bytes in use, file %d: want at most %d in use", round, used, file, maxBytes)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, store.FileName))
	if err != nil || fi.Size() > 4*maxBytes {
		t.Fatalf("file: %v, %v", fi.Size(), err)
	}
	for _, topic := range []string{"A", "B", "C"} {
		h, _ := b.History(topic, 0, 100000)
		if h.Last != 12000 || h.Oldest <= 1 || len(h.Ticks) < 1000 || h.Ticks[len(h.Ticks)-1].Seq != 12000 {
			t.Fatalf("%s: oldest %d last %d, %d ticks: want old ticks pruned, the newest kept", topic, h.Oldest, h.Last, len(h.Ticks))
		}
	}
	closeAll(t, b, st)
}

// A store that was not closed cleanly starts a new epoch; the old one
// stays resumable up to each topic's stored seq (its lineage).
func TestUncleanStartNewEpochWithLineage(t *testing.T) {
	dir := t.TempDir()
	st := open(t, dir, store.Options{})
	b := newBus(t, st, 10)
	publishN(t, b, "A", 0, 30, time.Now().UnixMilli())
	st.Flush()
	// The file as a crash right now would leave it.
	crashed := t.TempDir()
	data, err := os.ReadFile(filepath.Join(dir, store.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(crashed, store.FileName), data, 0o600); err != nil {
		t.Fatal(err)
	}
	old := b.Epoch()
	closeAll(t, b, st)

	st = open(t, crashed, store.Options{})
	state, err := st.Load("new", 10, 10)
	if err != nil {
		t.Fatal(err)
	}
	if state.Epoch != "new" || len(state.Topics) != 1 || state.Topics[0].Seq != 30 ||
		!reflect.DeepEqual(state.Topics[0].Lineage, []stream.EpochSeq{{Epoch: old, Seq: 30}}) || len(state.Topics[0].Ticks) != 10 {
		t.Fatalf("after a crash: epoch %q, %+v", state.Epoch, state.Topics)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	// Closed cleanly now: the epoch stays.
	st = open(t, crashed, store.Options{})
	if state, err = st.Load("other", 10, 10); err != nil || state.Epoch != "new" {
		t.Fatalf("after a clean close: epoch %q, %v", state.Epoch, err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}

// A second process cannot open a store in use.
func TestStoreInUse(t *testing.T) {
	dir := t.TempDir()
	st := open(t, dir, store.Options{})
	defer st.Close()
	if _, err := store.Open(store.Options{Dir: dir, Logger: quiet}); err == nil {
		t.Fatal("a second Open of a store in use succeeded")
	}
}

// The write cost per tick through the bus into the store, committed in
// batches as the writer does (sync every 100 ms, fsync included).
func BenchmarkPublishDurable(b *testing.B) {
	for _, tc := range []struct {
		name string
		o    store.Options
	}{{"sync=100ms", store.Options{}}, {"sync=always", store.Options{SyncAlways: true}}} {
		b.Run(tc.name, func(b *testing.B) {
			o := tc.o
			o.Dir, o.Logger = b.TempDir(), quiet
			st, err := store.Open(o)
			if err != nil {
				b.Fatal(err)
			}
			bus, err := stream.NewBus(stream.BusConfig{Store: st, Logger: quiet})
			if err != nil {
				b.Fatal(err)
			}
			topics := []string{"BTC-USD", "ETH-USD", "SOL-USD", "AAPL"}
			tk := tick.Tick{TS: time.Now().UnixMilli()}
			tk.Set(tick.FieldPrice, 61837.63)
			tk.Set(tick.FieldSize, 0.0161)
			tk.Set(tick.FieldBid, 61837.62)
			tk.Set(tick.FieldAsk, 61837.64)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				tk.Topic = topics[i%len(topics)]
				tk.TS++
				if _, err := bus.Publish("bench", tk); err != nil {
					b.Fatal(err)
				}
			}
			st.Flush() // every tick on disk: the cost includes the commits
			b.StopTimer()
			_ = bus.Close(context.Background())
			_ = st.Close()
		})
	}
}

// A store written before the open bars moved to the meta record and ticks
// were written in runs (every bar in its interval's bucket, every tick a
// record, as earlier versions wrote it) loads the same, and goes on from
// there: after more ticks into its open bars and new ones, and a restart,
// no bar or tick is lost, stale or doubled.
func TestLoadsStoreInEarlierLayout(t *testing.T) {
	dir := t.TempDir()
	st := open(t, dir, store.Options{})
	b := newBus(t, st, 40)
	base := time.Now().Add(-time.Hour).UnixMilli()
	publishN(t, b, "A", 0, 300, base) // 75 bars of 1 s: past the depth of 50
	publishN(t, b, "B.x", 0, 30, base)
	st.Flush()
	before := snap(t, b)
	closeAll(t, b, st)
	everyBarInItsBucket(t, dir)

	st = open(t, dir, store.Options{})
	b = newBus(t, st, 40)
	if after := snap(t, b); !reflect.DeepEqual(before, after) {
		t.Fatalf("loaded from the earlier layout:\n%+v\nwant\n%+v", after, before)
	}
	publishN(t, b, "A", 300, 100, base)
	publishN(t, b, "B.x", 30, 10, base)
	st.Flush()
	before = snap(t, b)
	closeAll(t, b, st)

	st = open(t, dir, store.Options{})
	b = newBus(t, st, 40)
	if after := snap(t, b); !reflect.DeepEqual(before, after) {
		t.Fatalf("after more ticks and a restart:\n%+v\nwant\n%+v", after, before)
	}
	closeAll(t, b, st)
}

// everyBarInItsBucket rewrites the store in dir as earlier versions wrote
// it: each topic's open bars go to their intervals' buckets (key: the
// bar's start, big-endian; value: the bar as JSON), out of the meta
// record, and its ticks are one record each.
func everyBarInItsBucket(t *testing.T, dir string) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, store.FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		root := tx.Bucket([]byte("topics"))
		return root.ForEachBucket(func(name []byte) error {
			tb := root.Bucket(name)
			var meta map[string]json.RawMessage
			if err := json.Unmarshal(tb.Get([]byte("m")), &meta); err != nil {
				return err
			}
			var open map[string]stream.Candle
			if err := json.Unmarshal(meta["open"], &open); err != nil {
				return err
			}
			if len(open) == 0 {
				return fmt.Errorf("topic %s: no open bar in %v", name, meta)
			}
			for iv, bar := range open {
				cb, err := tb.CreateBucketIfNotExists([]byte(iv))
				if err != nil {
					return err
				}
				v, _ := json.Marshal(bar)
				if err := cb.Put(binary.BigEndian.AppendUint64(nil, uint64(bar.T)), v); err != nil {
					return err
				}
			}
			delete(meta, "open")
			v, _ := json.Marshal(meta)
			if err := tb.Put([]byte("m"), v); err != nil {
				return err
			}
			return everyTickOnItsOwn(tb.Bucket([]byte("t")))
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// everyTickOnItsOwn rewrites the runs of ticks in tb (key: first and last
// seq; value: per tick, accept time, JSON length as a uvarint, JSON) as
// one record per tick (key: seq; value: accept time, JSON).
func everyTickOnItsOwn(tb *bolt.Bucket) error {
	type rec struct{ k, v []byte }
	var runs []rec
	err := tb.ForEach(func(k, v []byte) error {
		if len(k) == 16 {
			runs = append(runs, rec{append([]byte(nil), k...), append([]byte(nil), v...)})
		}
		return nil
	})
	if err != nil || len(runs) == 0 {
		return fmt.Errorf("no run of ticks: %v", err)
	}
	for _, r := range runs {
		if err := tb.Delete(r.k); err != nil {
			return err
		}
		first, last := binary.BigEndian.Uint64(r.k), binary.BigEndian.Uint64(r.k[8:])
		v := r.v
		for seq := first; seq <= last; seq++ {
			l, n := binary.Uvarint(v[8:])
			if err := tb.Put(binary.BigEndian.AppendUint64(nil, seq), append(v[:8:8], v[8+n:8+n+int(l)]...)); err != nil {
				return err
			}
			v = v[8+n+int(l):]
		}
	}
	return nil
}
