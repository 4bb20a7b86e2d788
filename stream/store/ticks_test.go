package store

import (
	"path/filepath"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream"
)

// ticksFixture fills a ticks bucket with single ticks as earlier versions
// wrote them (1-10, 41), runs as commits write them (11-40 in one batch,
// 42-200 in one batch: several runs of at most maxRun), and returns the
// bolt file. Tick seq n was accepted at n µs and has ts n.
func ticksFixture(t *testing.T) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "t.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	rec := func(seq uint64) stream.StoreRecord {
		return stream.StoreRecord{Topic: "A", Seq: seq, TS: int64(seq), Accepted: time.UnixMicro(int64(seq)),
			Fields: []tick.Field{tick.F(tick.FieldPrice, float64(seq)/4)}}
	}
	s := &Store{}
	put := func(tb *bolt.Bucket, from, to uint64) error {
		var batch []stream.StoreRecord
		st := &topicState{ticks: tb}
		for seq := from; seq <= to; seq++ {
			st.recs = append(st.recs, len(batch))
			batch = append(batch, rec(seq))
		}
		return s.putTicks(st, batch)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		tb, err := tx.CreateBucket(bTicks)
		if err != nil {
			return err
		}
		for _, seq := range []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 41} {
			r := rec(seq)
			v := tick.Tick{Topic: placeholderTopic, TS: r.TS, Fields: r.Fields}.AppendJSON(be8(nil, uint64(r.Accepted.UnixNano())))
			if err := tb.Put(be8(nil, seq), v); err != nil {
				return err
			}
		}
		if err := put(tb, 11, 40); err != nil {
			return err
		}
		return put(tb, 42, 200)
	})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func seqsOf[T stream.HistoryTick | stream.StoredTick](t *testing.T, ticks []T) []uint64 {
	t.Helper()
	var out []uint64
	for _, tk := range ticks {
		switch tk := any(tk).(type) {
		case stream.HistoryTick:
			if tk.TS != int64(tk.Seq) || tk.Data[0].Value.Float() != float64(tk.Seq)/4 {
				t.Fatalf("tick %d: %+v", tk.Seq, tk)
			}
			out = append(out, tk.Seq)
		case stream.StoredTick:
			if tk.TS != int64(tk.Seq) || tk.Accepted.UnixMicro() != int64(tk.Seq) {
				t.Fatalf("tick %d: %+v", tk.Seq, tk)
			}
			out = append(out, tk.Seq)
		}
	}
	return out
}

func span(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

// Single ticks and runs read back alike: by range from every seq, and
// the newest ones at load.
func TestTickRecordsReadBack(t *testing.T) {
	db := ticksFixture(t)
	err := db.View(func(tx *bolt.Tx) error {
		tb := tx.Bucket(bTicks)
		for after := uint64(0); after <= 201; after++ {
			for _, limit := range []int{1, 7, 64, 1000} {
				oldest, got, err := readTicks(tb, after, limit)
				if err != nil {
					t.Fatal(err)
				}
				var want []uint64
				if after < 200 {
					want = span(after+1, min(200, after+uint64(limit)))
				}
				if oldest != 1 || !slices.Equal(seqsOf(t, got), want) {
					t.Fatalf("after %d limit %d: oldest %d, %v; want 1, %v", after, limit, oldest, seqsOf(t, got), want)
				}
			}
		}
		for _, depth := range []int{1, 63, 64, 65, 150, 190, 200, 500} {
			got, err := loadTicks(tb, 200, depth)
			if err != nil {
				t.Fatal(err)
			}
			if want := span(uint64(max(1, 201-depth)), 200); !slices.Equal(seqsOf(t, got), want) {
				t.Fatalf("depth %d: %v, want %v", depth, seqsOf(t, got), want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Pruning by seq or by accept time cuts single ticks and runs alike, a
// run cut short included, and says how many it deleted.
func TestTickRecordsPrune(t *testing.T) {
	for _, cut := range []uint64{1, 2, 10, 11, 12, 40, 41, 42, 43, 105, 106, 200, 201} {
		for _, byAge := range []bool{false, true} {
			db := ticksFixture(t)
			err := db.Update(func(tx *bolt.Tx) error {
				tb := tx.Bucket(bTicks)
				del := func(seq uint64, _ int64) bool { return seq < cut }
				if byAge {
					del = func(_ uint64, acc int64) bool { return acc < time.UnixMicro(int64(cut)).UnixNano() }
				}
				n, err := pruneTicks(tb, del)
				if err != nil || n != int(cut-1) {
					t.Fatalf("cut %d: pruned %d, %v; want %d", cut, n, err, cut-1)
				}
				_, got, err := readTicks(tb, 0, 1000)
				if err != nil {
					t.Fatal(err)
				}
				if want := span(cut, 200); !slices.Equal(seqsOf(t, got), want) {
					t.Fatalf("cut %d: %v, want %v", cut, seqsOf(t, got), want)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A gap in seqs (a sequencer's) splits runs; a load stops at it.
func TestTickRunsSplitAtGaps(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "t.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		tb, err := tx.CreateBucket(bTicks)
		if err != nil {
			return err
		}
		st := &topicState{ticks: tb}
		var batch []stream.StoreRecord
		for _, seq := range []uint64{1, 2, 3, 7, 8, 9, 10} {
			st.recs = append(st.recs, len(batch))
			batch = append(batch, stream.StoreRecord{Seq: seq, TS: int64(seq), Accepted: time.UnixMicro(int64(seq)), Fields: []tick.Field{tick.F(tick.FieldPrice, float64(seq)/4)}})
		}
		if err := (&Store{}).putTicks(st, batch); err != nil {
			return err
		}
		got, err := loadTicks(tb, 10, 100)
		if err != nil || !slices.Equal(seqsOf(t, got), span(7, 10)) {
			t.Fatalf("load: %v, %v; want 7-10", seqsOf(t, got), err)
		}
		_, h, err := readTicks(tb, 2, 100)
		if err != nil || !slices.Equal(seqsOf(t, h), []uint64{3, 7, 8, 9, 10}) {
			t.Fatalf("history after 2: %v, %v", seqsOf(t, h), err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
