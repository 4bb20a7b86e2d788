package store_test

import (
	"syscall"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/store"
)

// cpuNow is the process's CPU time so far: user + system, and user.
func cpuNow() (total, user time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), time.Duration(ru.Utime.Nano())
}

// recGen makes the records the bus appends: one tick of price, size, bid
// and ask per record, spread round-robin over the topics, with the bars
// the tick changed (the bus's candle fold, simplified: ticks in order).
type recGen struct {
	topics []string
	ts     []int64 // per topic, Unix µs
	bars   [][]stream.Candle
	step   int64 // µs between a topic's ticks
	base   time.Time
	i      int
	rec    stream.StoreRecord
	fields []tick.Field
	slab   []tick.Field // the records' fields until their commit
}

func newRecGen(topics, ticksPerCommit int, commitEvery time.Duration) *recGen {
	g := &recGen{base: time.Now().Add(-time.Hour)}
	for i := range topics {
		g.topics = append(g.topics, "TOPIC-"+string(rune('A'+i%26))+string(rune('a'+i/26)))
		g.ts = append(g.ts, g.base.UnixMicro())
		g.bars = append(g.bars, make([]stream.Candle, len(stream.CandleIntervals)))
	}
	// A topic's ticks per commit, over the commit interval.
	g.step = max(1, commitEvery.Microseconds()*int64(topics)/int64(ticksPerCommit))
	g.fields = []tick.Field{
		tick.F(tick.FieldPrice, 61837.63), tick.F(tick.FieldSize, 0.0161),
		tick.F(tick.FieldBid, 61837.62), tick.F(tick.FieldAsk, 61837.64),
	}
	return g
}

// committed says the records so far are committed: their fields' slab is
// free again.
func (g *recGen) committed() { g.slab = g.slab[:0] }

func (g *recGen) next() *stream.StoreRecord {
	ti := g.i % len(g.topics)
	g.i++
	g.ts[ti] += g.step
	us := g.ts[ti]
	ts := us / 1000
	r := &g.rec
	r.Topic, r.TS, r.Accepted = g.topics[ti], ts, time.UnixMicro(us)
	r.Seq = uint64(g.i/len(g.topics) + 1)
	// The bus copies a tick's fields per publish; here they come from a
	// slab reused once they are committed, so that allocs/op is the
	// store's.
	n := len(g.slab)
	g.slab = append(g.slab, g.fields...)
	r.Fields = g.slab[n:len(g.slab):len(g.slab)]
	r.Fields[0].Value = tick.NumInt(int64(61800 + g.i%97))
	price, size := r.Fields[0].Value, r.Fields[1].Value
	r.NBars = 0
	for i, iv := range stream.CandleIntervals {
		bar := &g.bars[ti][i]
		t := ts - ts%iv.MS
		isNew := bar.N == 0 || bar.T != t
		if isNew {
			*bar = stream.Candle{T: t, O: price, H: price, L: price, C: price, V: size, N: 1}
		} else {
			if price.Cmp(bar.H) > 0 {
				bar.H = price
			}
			if price.Cmp(bar.L) < 0 {
				bar.L = price
			}
			bar.C, bar.V, bar.N = price, bar.V.Add(size), bar.N+1
		}
		r.Bars[r.NBars] = stream.StoreBar{Interval: i, New: isNew, Bar: *bar}
		r.NBars++
	}
	return r
}

// The store's cost per tick as the writer commits it, in the shapes of a
// loaded server: ticks spread over topics, one commit (one bbolt
// transaction, fsync included) per sync interval of 100 ms. ns/op and
// allocs/op are per tick; cpu-ns/tick is the process's CPU time (the
// writer's goroutine, the kernel's time in pwrite and fsync, the appends)
// per tick, user-ns/tick its part outside the kernel.
//
//	go test -run '^$' -bench StoreCommit -benchmem -benchtime=200000x ./stream/store/
func BenchmarkStoreCommit(b *testing.B) {
	for _, tc := range []struct {
		name            string
		topics, perTick int
		retention       int
	}{
		{"topics=50/ticks=100", 50, 100, 100000},
		{"topics=8/ticks=2000", 8, 2000, 100000},
		{"topics=1/ticks=10", 1, 10, 100000},
		// Every commit prunes as many ticks as it adds.
		{"topics=50/ticks=100/retention=100", 50, 100, 100},
		{"topics=8/ticks=2000/retention=1000", 8, 2000, 1000},
	} {
		b.Run(tc.name, func(b *testing.B) {
			st, err := store.Open(store.Options{
				Dir: b.TempDir(), Logger: quiet,
				// The server's defaults; commits only on Flush.
				SyncInterval: time.Hour, RetentionTicks: tc.retention, RetentionAge: 24 * time.Hour, MaxBytes: 1 << 30,
			})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := st.Load("bench", 1000, 500); err != nil {
				b.Fatal(err)
			}
			g := newRecGen(tc.topics, tc.perTick, 100*time.Millisecond)
			// Warm up: every topic's buckets exist, as on a running server,
			// and a small retention is reached.
			warm := 3 * tc.perTick
			if tc.retention < 10000 {
				warm = max(warm, (tc.retention+1)*tc.topics)
			}
			for i := range warm {
				st.Append(g.next())
				if (i+1)%tc.perTick == 0 {
					st.Flush()
					g.committed()
				}
			}
			st.Flush()
			g.committed()
			b.ReportAllocs()
			b.ResetTimer()
			cpu, user := cpuNow()
			for i := range b.N {
				st.Append(g.next())
				if (i+1)%tc.perTick == 0 {
					st.Flush()
					g.committed()
				}
			}
			st.Flush()
			cpu2, user2 := cpuNow()
			b.ReportMetric(float64(cpu2-cpu)/float64(b.N), "cpu-ns/tick")
			b.ReportMetric(float64(user2-user)/float64(b.N), "user-ns/tick")
			b.StopTimer()
			if err := st.Close(); err != nil {
				b.Fatal(err)
			}
		})
	}
}
