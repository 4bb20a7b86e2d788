package bench

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

func TestTrackerInOrderCoalesced(t *testing.T) {
	var tr Tracker
	tr.Snapshot(10)
	tr.Update(11, 1)
	tr.Update(15, 4) // 12..15
	tr.Update(16, 0) // n absent counts as 1
	tr.Update(26, 10)
	if tr.Covered != 16 || tr.Dup != 0 || tr.OutOfOrd != 0 || tr.Updates != 4 {
		t.Fatalf("covered %d dup %d ooo %d updates %d, want 16 0 0 4", tr.Covered, tr.Dup, tr.OutOfOrd, tr.Updates)
	}
	if m := tr.Missing(26); m != 0 {
		t.Fatalf("missing %d, want 0", m)
	}
	if m := tr.Missing(30); m != 4 {
		t.Fatalf("missing with 4 more expected: %d, want 4", m)
	}
}

func TestTrackerGapDupReorder(t *testing.T) {
	cases := []struct {
		name                   string
		snap                   uint64
		updates                [][2]uint64 // seq, n
		expectLast             uint64      // absolute seq
		covered, dup, ooo, mis uint64
	}{
		{"gap", 0, [][2]uint64{{1, 1}, {5, 2}}, 5, 3, 0, 0, 2},                              // 2,3 missing
		{"tail", 0, [][2]uint64{{3, 3}}, 8, 3, 0, 0, 5},                                     // 4..8 never came
		{"exact dup", 0, [][2]uint64{{2, 2}, {2, 2}}, 2, 2, 2, 0, 0},                        // whole update again
		{"partial overlap", 0, [][2]uint64{{4, 4}, {6, 3}}, 6, 6, 1, 0, 0},                  // 4..6 after 1..4: 4 twice
		{"late fills gap", 0, [][2]uint64{{1, 1}, {6, 2}, {4, 3}}, 6, 6, 0, 1, 0},           // 2..4 arrive after 5..6
		{"late half dup", 0, [][2]uint64{{2, 2}, {6, 2}, {4, 3}}, 6, 6, 1, 1, 0},            // 2 dup, 3..4 fill
		{"snapshot base", 100, [][2]uint64{{101, 1}, {103, 1}}, 104, 2, 0, 0, 2},            // 102 and 104
		{"no snapshot", 0, [][2]uint64{}, 0, 0, 0, 0, 0},                                    // nothing expected
		{"old before snapshot", 50, [][2]uint64{{50, 1}, {51, 1}}, 51, 1, 1, 0, 0},          // seq 50 is the snapshot's
		{"reorder two gaps", 0, [][2]uint64{{1, 1}, {9, 1}, {3, 2}, {8, 5}}, 9, 9, 0, 2, 0}, // 2..3 then 4..8
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var tr Tracker
			if c.name != "no snapshot" {
				tr.Snapshot(c.snap)
			}
			for _, u := range c.updates {
				tr.Update(u[0], u[1])
			}
			got := [4]uint64{tr.Covered, tr.Dup, tr.OutOfOrd, tr.Missing(c.expectLast)}
			want := [4]uint64{c.covered, c.dup, c.ooo, c.mis}
			if got != want {
				t.Fatalf("covered/dup/ooo/missing = %v, want %v", got, want)
			}
		})
	}
}

// TestTrackerRandom checks the tracker against a set-based model: a stream
// of coalesced updates is shuffled locally, some are dropped, some
// repeated; every tick is counted exactly once as covered or missing, and
// duplicates are exactly the ticks seen more than once.
func TestTrackerRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 200; round++ {
		var ups [][2]uint64
		seq := uint64(0)
		for i := 0; i < 50; i++ {
			n := uint64(1 + r.IntN(5))
			seq += n
			ups = append(ups, [2]uint64{seq, n})
		}
		var stream [][2]uint64
		for _, u := range ups {
			switch x := r.IntN(20); {
			case x == 0: // dropped
			case x == 1: // duplicated
				stream = append(stream, u, u)
			default:
				stream = append(stream, u)
			}
		}
		for i := 0; i+1 < len(stream); i++ { // a few adjacent swaps
			if r.IntN(15) == 0 {
				stream[i], stream[i+1] = stream[i+1], stream[i]
			}
		}
		seen := map[uint64]int{}
		var tr Tracker
		tr.Snapshot(0)
		for _, u := range stream {
			tr.Update(u[0], u[1])
			for s := u[0] - u[1] + 1; s <= u[0]; s++ {
				seen[s]++
			}
		}
		var dup uint64
		for _, k := range seen {
			dup += uint64(k - 1)
		}
		if tr.Covered != uint64(len(seen)) || tr.Dup != dup || tr.Covered+tr.Missing(seq) != seq {
			t.Fatalf("round %d: covered %d dup %d missing %d; model: distinct %d dup %d total %d",
				round, tr.Covered, tr.Dup, tr.Missing(seq), len(seen), dup, seq)
		}
	}
}

func TestHistogramQuantiles(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var h Histogram
	var vals []int64
	for i := 0; i < 100000; i++ {
		v := int64(math.Exp(r.NormFloat64()*2 + 7)) // log-normal around 1 ms, up to seconds
		vals = append(vals, v)
		h.Record(v)
	}
	slices.Sort(vals)
	for _, q := range []float64{0, 0.5, 0.9, 0.99, 0.999, 1} {
		rank := int(math.Ceil(q * float64(len(vals))))
		rank = max(rank, 1)
		exact := vals[rank-1]
		got := h.Quantile(q)
		if got < exact || float64(got-exact) > 0.002*float64(exact)+1 {
			t.Errorf("q%.3f: got %d, exact %d", q, got, exact)
		}
	}
	if h.Max() != vals[len(vals)-1] || h.Count() != uint64(len(vals)) {
		t.Errorf("max %d count %d, want %d %d", h.Max(), h.Count(), vals[len(vals)-1], len(vals))
	}
	var empty Histogram
	if empty.Quantile(0.5) != 0 {
		t.Errorf("empty histogram quantile is not 0")
	}
}

func TestHistogramSmallExact(t *testing.T) {
	var h Histogram
	for _, v := range []int64{5, 1, 3, 2, 4, -7} { // negative counts as 0
		h.Record(v)
	}
	for q, want := range map[float64]int64{0.5: 2, 0.9: 5, 0.99: 5, 0.1: 0} {
		if got := h.Quantile(q); got != want {
			t.Errorf("q%v = %d, want %d", q, got, want)
		}
	}
}

func TestHistogramBuckets(t *testing.T) {
	prev := -1
	for _, v := range []int64{0, 1, 1023, 1024, 1025, 2047, 2048, 1 << 20, 1<<20 + 1, 1<<35 + 12345, maxHistUS - 1, maxHistUS, math.MaxInt64} {
		b := bucketOf(v)
		if b < prev || b >= histBuckets {
			t.Fatalf("bucketOf(%d) = %d (prev %d, buckets %d)", v, b, prev, histBuckets)
		}
		if v < maxHistUS && bucketHigh(b) < v {
			t.Fatalf("bucketHigh(bucketOf(%d)) = %d < value", v, bucketHigh(b))
		}
		if v < maxHistUS && v >= linearLimit && float64(bucketHigh(b)-v) > 0.002*float64(v) {
			t.Fatalf("bucket of %d is too wide: high %d", v, bucketHigh(b))
		}
		prev = b
	}
}

func TestHistogramConcurrentMerge(t *testing.T) {
	var a, b Histogram
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				a.Record(int64(i))
			}
		}()
	}
	wg.Wait()
	b.Merge(&a)
	if b.Count() != 4000 || b.Max() != 999 || b.Quantile(0.5) != 499 {
		t.Fatalf("count %d max %d p50 %d", b.Count(), b.Max(), b.Quantile(0.5))
	}
}

func TestParseMsgMatchesJSON(t *testing.T) {
	lines := []string{
		`{"type":"update","topic":"bench.T3","epoch":"e1","seq":1234,"ts":1700000000000,"data":{"price":100.5,"size":1,"ctr":17,"sent_us":1700000000000123},"agg":{"n":12,"o":1,"h":2,"l":0.5,"c":1.5,"v":12}}`,
		`{"type":"update","topic":"A","epoch":"e1","seq":7,"ts":1,"data":{"n":99,"sent_us":5},"agg":{"n":3,"v":0}}`,
		`{"type":"snapshot","topic":"A","epoch":"e1","seq":4,"ts":1,"data":{"price":1,"ctr":0,"sent_us":9}}`,
		`{"type":"update","topic":"B","epoch":"e1","seq":8,"ts":1,"data":{"sent_us":1.700000000000123e15},"agg":{"n":1}}`,
	}
	for _, l := range lines {
		var want struct {
			Type, Topic string
			Seq         uint64
			Data        map[string]float64
			Agg         struct{ N uint64 }
		}
		if err := json.Unmarshal([]byte(l), &want); err != nil {
			t.Fatal(err)
		}
		m, ok := parseMsg([]byte(l))
		if !ok || string(m.typ) != want.Type || string(m.topic) != want.Topic || m.seq != want.Seq || m.n != want.Agg.N ||
			m.sentUS != int64(want.Data["sent_us"]) || m.hasCtr != (want.Data["ctr"] != 0 || want.Type == "snapshot") {
			t.Errorf("parseMsg(%s) = %+v, want %+v", l, m, want)
		}
	}
	if m, ok := parseMsg([]byte(`{"type":"status","lagging":true,"throttle_ms":2000}`)); !ok || !m.lagging {
		t.Errorf("status lagging not seen")
	}
	if _, ok := parseMsg([]byte(`not json`)); ok {
		t.Errorf("a line without type parsed")
	}
}

func TestClientTopicsSpread(t *testing.T) {
	count := map[string]int{}
	for i := 0; i < 100; i++ {
		for _, tp := range clientTopics("T", i, 50, 5) {
			count[tp]++
		}
	}
	if len(count) != 50 {
		t.Fatalf("%d topics used, want 50", len(count))
	}
	for tp, n := range count {
		if n != 10 {
			t.Fatalf("%s has %d subscribers, want 10", tp, n)
		}
	}
}

func TestCheckLoopback(t *testing.T) {
	for _, h := range []string{"127.0.0.1", "::1", "127.0.0.9"} {
		if _, err := checkLoopback(t.Context(), h); err != nil {
			t.Errorf("%s refused: %v", h, err)
		}
	}
	for _, h := range []string{"10.0.0.1", "8.8.8.8", "::2"} {
		if _, err := checkLoopback(t.Context(), h); err == nil {
			t.Errorf("%s accepted", h)
		}
	}
}
