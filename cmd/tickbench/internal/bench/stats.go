package bench

import (
	"math"
	"math/bits"
	"sync/atomic"
)

// Histogram counts latencies in microseconds in log-linear buckets: exact
// below 1024 µs, then 512 buckets per power of two (relative error under
// 0.2 %). Values past maxHistUS land in the last bucket. It is safe for
// concurrent Record calls (atomic adds); Merge and Quantile read it.
type Histogram struct {
	counts [histBuckets]atomic.Uint64
	max    atomic.Int64
	total  atomic.Uint64
}

const (
	subBits     = 9 // 512 sub-buckets per power of two
	linearLimit = 1 << (subBits + 1)
	maxHistUS   = 1 << 36 // ~19 h
	histBuckets = linearLimit + (36-subBits-1)*(1<<subBits)
)

func bucketOf(us int64) int {
	if us < 0 {
		us = 0
	}
	if us < linearLimit {
		return int(us)
	}
	if us >= maxHistUS {
		return histBuckets - 1
	}
	exp := bits.Len64(uint64(us)) - 1 // >= subBits+1
	shift := exp - subBits
	sub := int(us>>shift) - (1 << subBits) // 0..511
	return linearLimit + (exp-subBits-1)*(1<<subBits) + sub
}

// bucketHigh is the largest value that falls in bucket i.
func bucketHigh(i int) int64 {
	if i < linearLimit {
		return int64(i)
	}
	j := i - linearLimit
	exp := j/(1<<subBits) + subBits + 1
	sub := int64(j%(1<<subBits)) + (1 << subBits)
	shift := exp - subBits
	return (sub+1)<<shift - 1
}

// Record adds one latency in microseconds.
func (h *Histogram) Record(us int64) {
	if us < 0 {
		us = 0
	}
	h.counts[bucketOf(us)].Add(1)
	h.total.Add(1)
	for i := 0; i < 64; i++ { // bounded CAS loop
		m := h.max.Load()
		if us <= m || h.max.CompareAndSwap(m, us) {
			return
		}
	}
}

// Merge adds o's counts into h.
func (h *Histogram) Merge(o *Histogram) {
	for i := range o.counts {
		if c := o.counts[i].Load(); c != 0 {
			h.counts[i].Add(c)
		}
	}
	h.total.Add(o.total.Load())
	if m := o.max.Load(); m > h.max.Load() {
		h.max.Store(m)
	}
}

// Count is the number of values recorded.
func (h *Histogram) Count() uint64 { return h.total.Load() }

// Max is the largest value recorded (exact).
func (h *Histogram) Max() int64 { return h.max.Load() }

// Quantile returns the value at quantile q (0..1): the upper bound of the
// bucket holding the ceil(q*n)-th smallest value, capped at the exact max.
// It returns 0 for an empty histogram.
func (h *Histogram) Quantile(q float64) int64 {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	if rank < 1 {
		rank = 1
	}
	if rank > n {
		rank = n
	}
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			v := bucketHigh(i)
			if m := h.max.Load(); v > m {
				v = m
			}
			return v
		}
	}
	return h.max.Load()
}

// maxGaps bounds the gap ranges a tracker remembers to tell a late
// (out-of-order) update from a duplicate.
const maxGaps = 256

type seqRange struct{ lo, hi uint64 } // inclusive

// Tracker accounts one client's deliveries of one topic by seq. An update
// covering n ticks ending at seq covers [seq-n+1, seq]. It is not safe for
// concurrent use: each client owns its trackers.
type Tracker struct {
	started   bool
	base      uint64 // seq of the snapshot (or one before the first update)
	last      uint64 // highest seq covered
	Covered   uint64 // ticks covered exactly once, in order or late
	Updates   uint64 // update messages
	Dup       uint64 // ticks covered more than once
	OutOfOrd  uint64 // update messages that arrived after a later one
	gapMissed uint64 // ticks inside gaps not (yet) filled
	gaps      []seqRange
}

// Snapshot sets the starting point: ticks after seq are expected.
func (t *Tracker) Snapshot(seq uint64) {
	if t.started {
		return // a second snapshot (e.g. after reset) is not expected here
	}
	t.started, t.base, t.last = true, seq, seq
}

// Base is the seq the tracker started after.
func (t *Tracker) Base() uint64 { return t.base }

// Last is the highest seq covered so far.
func (t *Tracker) Last() uint64 { return t.last }

// Update accounts one update covering n ticks ending at seq.
func (t *Tracker) Update(seq, n uint64) {
	if n == 0 {
		n = 1
	}
	t.Updates++
	if n > seq {
		n = seq
	}
	first := seq - n + 1
	if !t.started {
		// No snapshot: the first update defines where this client starts.
		t.started, t.base, t.last = true, first-1, first-1
	}
	switch {
	case first == t.last+1:
		t.Covered += n
		t.last = seq
	case first > t.last+1:
		gap := seqRange{t.last + 1, first - 1}
		t.gapMissed += gap.hi - gap.lo + 1
		if len(t.gaps) < maxGaps {
			t.gaps = append(t.gaps, gap)
		}
		t.Covered += n
		t.last = seq
	default: // first <= last: some or all of it was seen or skipped before
		var fresh uint64
		if seq > t.last {
			fresh = seq - t.last
			t.Covered += fresh
			t.last = seq
		}
		old := seqRange{first, seq - fresh} // the part at or below the old last
		filled := t.fillGaps(old)
		if filled > 0 {
			t.OutOfOrd++
			t.Covered += filled
		}
		t.Dup += (old.hi - old.lo + 1) - filled
	}
}

// fillGaps removes r from the remembered gaps and returns how many ticks
// of r were inside gaps.
func (t *Tracker) fillGaps(r seqRange) uint64 {
	var filled uint64
	out := t.gaps[:0]
	for _, g := range t.gaps {
		lo, hi := max(g.lo, r.lo), min(g.hi, r.hi)
		if lo > hi {
			out = append(out, g)
			continue
		}
		filled += hi - lo + 1
		if g.lo < lo {
			out = append(out, seqRange{g.lo, lo - 1})
		}
		if hi < g.hi {
			out = append(out, seqRange{hi + 1, g.hi})
		}
	}
	t.gaps = out
	t.gapMissed -= min(filled, t.gapMissed)
	return filled
}

// Missing is how many ticks up to expectLast were never covered: the
// unfilled gaps plus the tail after the last covered seq.
func (t *Tracker) Missing(expectLast uint64) uint64 {
	m := t.gapMissed
	if expectLast > t.last {
		m += expectLast - t.last
	}
	return m
}
