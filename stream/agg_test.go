package stream

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream/protocol"
)

func cloneUpdate(u *Update) Update {
	c := *u
	c.Data = slices.Clone(u.Data)
	c.json = slices.Clone(u.json)
	return c
}

func sameUpdate(a, b Update) bool {
	return a.Topic == b.Topic && a.Epoch == b.Epoch && a.Seq == b.Seq && a.TS == b.TS &&
		reflect.DeepEqual(a.Agg, b.Agg) && a.Accepted.Equal(b.Accepted) && slices.Equal(a.Data, b.Data) && bytes.Equal(a.json, b.json)
}

// randTicks returns n random ticks of topic, ts mostly increasing.
func randTicks(rng *rand.Rand, topic string, n int) []tick.Tick {
	ticks := make([]tick.Tick, n)
	ts := int64(1_700_000_000_000)
	for i := range ticks {
		ts += rng.Int64N(500) - 50 // a few late ticks
		ticks[i] = randTick(rng, topic, ts)
	}
	return ticks
}

func seqRange(from uint64, n int) []uint64 {
	s := make([]uint64, n)
	for i := range s {
		s[i] = from + uint64(i)
	}
	return s
}

// foldWindows folds ticks (seqs 1..n) into windows split at random
// points and returns one encoded update per window with the window's
// bounds.
func foldWindows(t *testing.T, rng *rand.Rand, ticks []tick.Tick) (ups []*Update, bounds [][2]int) {
	t.Helper()
	var w window
	start := 0
	accepted := time.Unix(1_700_000_000, 0)
	for i := range ticks {
		w.fold(&ticks[i], uint64(i+1), accepted.Add(time.Duration(i)*time.Millisecond))
		if i == len(ticks)-1 || rng.IntN(4) == 0 {
			u := w.take("T", "e1").encoded()
			if !w.empty() || len(w.data) != 0 {
				t.Fatalf("window not empty after take: %+v", w)
			}
			r := refOf(ticks[start:i+1], seqRange(uint64(start+1), i+1-start))
			if err := r.checkUpdate(u); err != nil {
				t.Fatalf("window [%d,%d]: %v", start, i, err)
			}
			if u.TS != ticks[i].TS || !u.Accepted.Equal(accepted.Add(time.Duration(i)*time.Millisecond)) {
				t.Fatalf("window [%d,%d]: ts %d accepted %v, want the last tick's", start, i, u.TS, u.Accepted)
			}
			ups = append(ups, u)
			bounds = append(bounds, [2]int{start, i + 1})
			start = i + 1
		}
	}
	return ups, bounds
}

// TestCoalesceProperty folds random tick streams into windows split at
// random points, then merges the windows again in random groupings with
// every merge path the bus uses, and checks each result against the
// reference model of the spec: n, o, h, l, c, v, data (MERGE) and seq.
func TestCoalesceProperty(t *testing.T) {
	t.Parallel()
	for seed := uint64(1); seed <= 300; seed++ {
		rng := rand.New(rand.NewPCG(seed, 0x5eed))
		ticks := randTicks(rng, "T", 1+rng.IntN(80))
		all := refOf(ticks, seqRange(1, len(ticks)))
		ups, bounds := foldWindows(t, rng, ticks)

		// The windows' encodings decode to the same values.
		for i, u := range ups {
			r := refOf(ticks[bounds[i][0]:bounds[i][1]], seqRange(uint64(bounds[i][0]+1), bounds[i][1]-bounds[i][0]))
			if err := r.checkWire(decodeMsg(t, updateMessage(u))); err != nil {
				t.Fatalf("seed %d window %d: %v", seed, i, err)
			}
		}

		// Agg.Merge alone, random grouping of adjacent aggregates.
		aggs := make([]protocol.Agg, len(ups))
		for i, u := range ups {
			aggs[i] = u.Agg
		}
		for len(aggs) > 1 {
			i := rng.IntN(len(aggs) - 1)
			aggs[i].Merge(aggs[i+1])
			aggs = slices.Delete(aggs, i+1, i+2)
		}
		if err := all.checkUpdate(&Update{Agg: aggs[0], Seq: all.seq, Data: refData(all)}); err != nil {
			t.Fatalf("seed %d: Agg.Merge: %v", seed, err)
		}

		// Update.mergedWith and queued.merge, mixed at random. The
		// original updates are shared between subscribers and must
		// never change.
		orig := make([]Update, len(ups))
		for i, u := range ups {
			orig[i] = cloneUpdate(u)
		}
		qs := make([]queued, len(ups))
		for i, u := range ups {
			qs[i] = queued{Message: updateMessage(u), upd: u}
		}
		for len(qs) > 1 {
			i := rng.IntN(len(qs) - 1)
			if rng.IntN(2) == 0 {
				qs[i].merge(qs[i+1].upd)
				if !qs[i].private || qs[i].JSON != nil || qs[i].Seq != qs[i+1].upd.Seq {
					t.Fatalf("seed %d: queued.merge left %+v", seed, qs[i].Message)
				}
			} else {
				m := qs[i].upd.mergedWith(qs[i+1].upd)
				qs[i] = queued{Message: updateMessage(m), upd: m}
			}
			qs = slices.Delete(qs, i+1, i+2)
		}
		final := qs[0].upd
		if err := all.checkUpdate(final); err != nil {
			t.Fatalf("seed %d: merged %d windows: %v", seed, len(ups), err)
		}
		if final.TS != ticks[len(ticks)-1].TS {
			t.Fatalf("seed %d: merged ts %d, want %d", seed, final.TS, ticks[len(ticks)-1].TS)
		}
		if err := all.checkWire(decodeMsg(t, updateMessage(final.encoded()))); err != nil {
			t.Fatalf("seed %d: merged encoding: %v", seed, err)
		}
		for i, u := range ups {
			if !sameUpdate(*u, orig[i]) {
				t.Fatalf("seed %d: shared update %d changed by merging:\n got %+v\nwant %+v", seed, i, *u, orig[i])
			}
		}
	}
}

// refData is r's data as fields.
func refData(r ref) []tick.Field {
	var out []tick.Field
	for k, v := range r.data {
		out = append(out, tick.Field{Name: k, Value: v})
	}
	return out
}

func TestAggMerge(t *testing.T) {
	t.Parallel()
	n := func(v float64) tick.Num { x, _ := tick.NumOf(v); return x }
	price := func(cnt int64, o, h, l, c, v float64) protocol.Agg {
		return protocol.Agg{N: cnt, O: n(o), H: n(h), L: n(l), C: n(c), V: n(v), HasPrice: true}
	}
	tests := []struct {
		name string
		a, b protocol.Agg
		want protocol.Agg
	}{
		{"both empty", protocol.Agg{}, protocol.Agg{}, protocol.Agg{}},
		{"no price then price", protocol.Agg{N: 2, V: n(3)}, price(1, 5, 5, 5, 5, 1), price(3, 5, 5, 5, 5, 4)},
		{"price then no price", price(1, 5, 6, 4, 5, 1), protocol.Agg{N: 4, V: n(2)}, price(5, 5, 6, 4, 5, 3)},
		{"exact decimal sum", price(1, 5, 5, 5, 5, 0.0161), price(1, 5, 5, 5, 5, 0.01052), price(2, 5, 5, 5, 5, 0.02662)},
		{"new high", price(2, 5, 6, 4, 5, 0), price(1, 7, 9, 7, 8, 0), price(3, 5, 9, 4, 8, 0)},
		{"new low", price(2, 5, 6, 4, 5, 0), price(1, 3, 3, 1, 2, 0), price(3, 5, 6, 1, 2, 0)},
		{"negative prices", price(1, -1, -1, -1, -1, 0), price(1, -3, -2, -5, -4, 0), price(2, -1, -1, -5, -4, 0)},
		{"zero price counts", protocol.Agg{N: 1}, price(1, 0, 0, 0, 0, 0), price(2, 0, 0, 0, 0, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := tt.a
			got.Merge(tt.b)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Merge = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestMergeFields(t *testing.T) {
	t.Parallel()
	f := func(kv ...any) []tick.Field {
		var out []tick.Field
		for i := 0; i < len(kv); i += 2 {
			out = append(out, tick.F(kv[i].(string), kv[i+1].(float64)))
		}
		return out
	}
	tests := []struct {
		name          string
		dst, src, out []tick.Field
	}{
		{"empty", nil, nil, nil},
		{"into empty", nil, f("a", 1.0), f("a", 1.0)},
		{"overwrite keeps position", f("a", 1.0, "b", 2.0), f("b", 3.0), f("a", 1.0, "b", 3.0)},
		{"append new", f("a", 1.0), f("b", 2.0, "a", 0.0), f("a", 0.0, "b", 2.0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := mergeFields(slices.Clone(tt.dst), tt.src); !slices.Equal(got, tt.out) {
				t.Errorf("mergeFields = %v, want %v", got, tt.out)
			}
		})
	}
}

// stepItem is the expected content of one queue entry.
type stepItem struct {
	msg   Message // a control message
	topic string  // for an update: its topic
	from  uint64  // covers seqs (from, to]
	to    uint64
}

// TestStepDownProperty queues random updates of several topics
// interleaved with snapshot/reset barriers and topic-less messages, steps
// the subscriber down, queues more while it lags, and checks that every
// topic's updates between two barriers merged into one exact update in
// the place of the first, barriers and other messages kept their order,
// and updates shared with another subscriber never changed.
func TestStepDownProperty(t *testing.T) {
	t.Parallel()
	for seed := uint64(1); seed <= 150; seed++ {
		rng := rand.New(rand.NewPCG(seed, 0xd0e))
		b := newTestBus(t, BusConfig{MaxPendingBytes: 1 << 30, LagThrottle: 1500 * time.Millisecond})
		s := newTestSub(t, b)
		other := newTestSub(t, b) // gets the same shared updates, never lags

		topics := []string{"A", "B", "C"}
		log := newTickLog()
		seq := map[string]uint64{}
		var want []stepItem
		mergeable := map[string]int{}
		lagging := false
		var shared []*Update
		var sharedOrig []Update

		pushOne := func() {
			topic := topics[rng.IntN(len(topics))]
			switch k := rng.IntN(10); {
			case k < 7: // an update of 1-4 ticks
				var w window
				from := seq[topic]
				for range 1 + rng.IntN(4) {
					seq[topic]++
					tk := randTick(rng, topic, int64(seq[topic]))
					log.add(tk, seq[topic])
					w.fold(&tk, seq[topic], time.Unix(int64(seq[topic]), 0))
				}
				u := w.take(topic, "e1").encoded()
				shared = append(shared, u)
				sharedOrig = append(sharedOrig, cloneUpdate(u))
				s.pushUpdate(u)
				other.pushUpdate(u)
				if i, ok := mergeable[topic]; ok && lagging {
					want[i].to = u.Seq
					return
				}
				if lagging {
					mergeable[topic] = len(want)
				}
				want = append(want, stepItem{topic: topic, from: from, to: u.Seq})
			case k < 8:
				m := Message{Type: protocol.TypeSnapshot, Topic: topic, Epoch: "e1", Seq: seq[topic],
					JSON: protocol.AppendSnapshot(nil, topic, "e1", seq[topic], 1, nil)}
				s.push(m)
				delete(mergeable, topic)
				want = append(want, stepItem{msg: m})
			case k < 9:
				m := Message{Type: protocol.TypeReset, Topic: topic, JSON: protocol.EncodeReset(topic, protocol.ResetHistoryGap)}
				s.push(m)
				delete(mergeable, topic)
				want = append(want, stepItem{msg: m})
			default:
				m := Message{Type: protocol.TypePong, JSON: protocol.EncodePong([]byte(fmt.Sprint(rng.IntN(100))))}
				s.push(m)
				want = append(want, stepItem{msg: m})
			}
		}

		before := rng.IntN(40)
		for range before {
			pushOne()
		}
		// The expected effect of the step-down on what is queued.
		var merged []stepItem
		for _, it := range want {
			if it.msg.Type != "" {
				if it.msg.Topic != "" {
					delete(mergeable, it.msg.Topic)
				}
				merged = append(merged, it)
				continue
			}
			if i, ok := mergeable[it.topic]; ok {
				if merged[i].to != it.from {
					t.Fatalf("seed %d: test bug: gap", seed)
				}
				merged[i].to = it.to
				continue
			}
			mergeable[it.topic] = len(merged)
			merged = append(merged, it)
		}
		status := Message{Type: protocol.TypeStatus, JSON: protocol.EncodeStatus(true, 1500)}
		want = append(merged, stepItem{msg: status})
		lagging = true

		s.mu.Lock()
		s.stepDownLocked()
		s.mu.Unlock()
		if !s.Lagging() {
			t.Fatalf("seed %d: not lagging after stepDownLocked", seed)
		}
		for range rng.IntN(40) {
			pushOne()
		}

		got := drainAll(s)
		if len(got) != len(want) {
			t.Fatalf("seed %d: %d messages queued, want %d", seed, len(got), len(want))
		}
		for i, m := range got {
			w := decodeMsg(t, m)
			it := want[i]
			if it.msg.Type != "" {
				if m.Type != it.msg.Type || m.Topic != it.msg.Topic || !bytes.Equal(m.JSON, it.msg.JSON) {
					t.Fatalf("seed %d: message %d is %s, want %s", seed, i, m.JSON, it.msg.JSON)
				}
				continue
			}
			if m.Type != protocol.TypeUpdate || m.Topic != it.topic {
				t.Fatalf("seed %d: message %d is %s, want an update of %s", seed, i, m.JSON, it.topic)
			}
			r, err := log.ref(it.topic, it.from, it.to)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.checkWire(w); err != nil {
				t.Fatalf("seed %d: message %d (%s (%d,%d]): %v\n%s", seed, i, it.topic, it.from, it.to, err, m.JSON)
			}
			if m.Seq != it.to {
				t.Fatalf("seed %d: message %d seq %d, want %d", seed, i, m.Seq, it.to)
			}
		}
		for i, u := range shared {
			if !sameUpdate(*u, sharedOrig[i]) {
				t.Fatalf("seed %d: shared update %d changed", seed, i)
			}
		}
		og := drainAll(other)
		if len(og) != len(shared) {
			t.Fatalf("seed %d: other subscriber got %d updates, want %d", seed, len(og), len(shared))
		}
		for i, m := range og {
			if !bytes.Equal(m.JSON, sharedOrig[i].json) {
				t.Fatalf("seed %d: other subscriber's update %d is %s, want %s", seed, i, m.JSON, sharedOrig[i].json)
			}
		}
		s.Close(nil)
		other.Close(nil)
	}
}
