package store

import (
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream"
)

// A topic's ticks bucket holds records of two forms, told apart by the
// length of their key:
//
//   - one tick: key seq (8 bytes, big-endian) → accept time (Unix ns, 8
//     bytes) + the tick as JSON;
//   - a run of consecutive ticks, as one commit writes them: key first seq
//     + last seq (16 bytes) → per tick, accept time (8 bytes) + the JSON's
//     length (uvarint) + the tick as JSON.
//
// Keys sort by first seq either way. A run costs one B+tree insert for up
// to maxRun ticks; stores written before runs existed hold single ticks.

// maxRun bounds the ticks of one run: a run cut short by pruning is
// rewritten, so it is kept to a few pages.
const maxRun = 64

// tickEntry is one tick of a record: its seq, accept time, JSON, and the
// offset of its entry in the record's value.
type tickEntry struct {
	seq uint64
	acc int64
	js  []byte
	off int
}

// recordSeqs returns the first and last seq of the record with key k.
func recordSeqs(k []byte) (first, last uint64, err error) {
	switch len(k) {
	case 8:
		first = binary.BigEndian.Uint64(k)
		return first, first, nil
	case 16:
		first, last = binary.BigEndian.Uint64(k), binary.BigEndian.Uint64(k[8:])
		if last < first {
			return 0, 0, fmt.Errorf("ticks %d-%d: bad run", first, last)
		}
		return first, last, nil
	}
	return 0, 0, fmt.Errorf("tick key of %d bytes", len(k))
}

// eachTick calls f for each tick of the record k, v, in seq order, while
// f returns true.
func eachTick(k, v []byte, f func(e tickEntry) bool) error {
	first, last, err := recordSeqs(k)
	if err != nil {
		return err
	}
	if len(k) == 8 {
		if len(v) < 8 {
			return fmt.Errorf("tick %d: short value", first)
		}
		f(tickEntry{seq: first, acc: int64(binary.BigEndian.Uint64(v)), js: v[8:]})
		return nil
	}
	off := 0
	for seq := first; ; seq++ {
		rest := v[off:]
		if len(rest) < 9 {
			return fmt.Errorf("tick %d: short run", seq)
		}
		l, n := binary.Uvarint(rest[8:])
		if n <= 0 || uint64(len(rest)-8-n) < l {
			return fmt.Errorf("tick %d: bad length in run", seq)
		}
		end := 8 + n + int(l)
		if !f(tickEntry{seq: seq, acc: int64(binary.BigEndian.Uint64(rest)), js: rest[8+n : end], off: off}) {
			return nil
		}
		off += end
		if seq == last {
			if off != len(v) {
				return fmt.Errorf("ticks %d-%d: trailing bytes in run", first, last)
			}
			return nil
		}
	}
}

func decodeEntry(e tickEntry) (stream.StoredTick, error) {
	tk, err := tick.ParseTick(e.js)
	if err != nil {
		return stream.StoredTick{}, fmt.Errorf("tick %d: %w", e.seq, err)
	}
	return stream.StoredTick{Seq: e.seq, TS: tk.TS, Accepted: time.Unix(0, e.acc), Fields: tk.Fields}, nil
}

// putTicks writes the batch's records recs of st, in runs of consecutive
// seqs. Keys and values are in s.arena, kept until the commit.
func (s *Store) putTicks(st *topicState, batch []stream.StoreRecord) error {
	recs := st.recs
	for len(recs) > 0 {
		n := 1
		for n < len(recs) && n < maxRun && batch[recs[n]].Seq == batch[recs[n-1]].Seq+1 {
			n++
		}
		first, last := &batch[recs[0]], &batch[recs[n-1]]
		start := len(s.arena)
		s.arena = be8(s.arena, first.Seq)
		if n > 1 {
			s.arena = be8(s.arena, last.Seq)
		}
		key := s.arena[start:len(s.arena):len(s.arena)]
		start = len(s.arena)
		for _, i := range recs[:n] {
			r := &batch[i]
			s.arena = be8(s.arena, uint64(r.Accepted.UnixNano()))
			if n == 1 {
				s.arena = tick.Tick{Topic: placeholderTopic, TS: r.TS, Fields: r.Fields}.AppendJSON(s.arena)
				break
			}
			s.scratch = tick.Tick{Topic: placeholderTopic, TS: r.TS, Fields: r.Fields}.AppendJSON(s.scratch[:0])
			s.arena = binary.AppendUvarint(s.arena, uint64(len(s.scratch)))
			s.arena = append(s.arena, s.scratch...)
		}
		if err := st.ticks.Put(key, s.arena[start:len(s.arena):len(s.arena)]); err != nil {
			return err
		}
		recs = recs[n:]
	}
	return nil
}

// pruneTicks deletes the oldest ticks of tb while del says so (it is
// asked in seq order, and stops at the first tick it keeps), and returns
// how many it deleted. A run cut short is rewritten from its first kept
// tick on.
func pruneTicks(tb *bolt.Bucket, del func(seq uint64, acc int64) bool) (int, error) {
	n := 0
	c := tb.Cursor()
	for k, v := c.First(); k != nil; k, v = c.First() {
		var keep *tickEntry
		var last uint64
		err := eachTick(k, v, func(e tickEntry) bool {
			last = e.seq
			if del(e.seq, e.acc) {
				return true
			}
			keep = &e
			return false
		})
		if err != nil {
			return n, err
		}
		if keep == nil { // every tick of the record
			first, _, _ := recordSeqs(k)
			if err := c.Delete(); err != nil {
				return n, err
			}
			n += int(last - first + 1)
			continue
		}
		first, last, _ := recordSeqs(k)
		if keep.seq == first {
			return n, nil
		}
		// Rewrite the run from keep on: one tick, or a shorter run.
		var nk, nv []byte
		nk = be8(nk, keep.seq)
		if keep.seq == last {
			nv = append(be8(nil, uint64(keep.acc)), keep.js...)
		} else {
			nk = be8(nk, last)
			nv = append([]byte(nil), v[keep.off:]...)
		}
		if err := c.Delete(); err != nil {
			return n, err
		}
		if err := tb.Put(nk, nv); err != nil {
			return n, err
		}
		return n + int(keep.seq-first), nil
	}
	return n, nil
}

// loadTicks returns the newest ticks of tb, at most depth, consecutive
// and ending at seq, oldest first.
func loadTicks(tb *bolt.Bucket, seq uint64, depth int) ([]stream.StoredTick, error) {
	var out []stream.StoredTick
	var entries []tickEntry
	c := tb.Cursor()
	want := seq
records:
	for k, v := c.Last(); k != nil && len(out) < depth; k, v = c.Prev() {
		entries = entries[:0]
		if err := eachTick(k, v, func(e tickEntry) bool { entries = append(entries, e); return true }); err != nil {
			return nil, err
		}
		for j := len(entries) - 1; j >= 0 && len(out) < depth; j-- {
			if entries[j].seq != want {
				break records // not consecutive: the ring ends here
			}
			t, err := decodeEntry(entries[j])
			if err != nil {
				return nil, err
			}
			out = append(out, t)
			want--
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// readTicks returns the oldest seq of tb, and up to limit ticks after
// afterSeq.
func readTicks(tb *bolt.Bucket, afterSeq uint64, limit int) (uint64, []stream.HistoryTick, error) {
	c := tb.Cursor()
	k, _ := c.First()
	if k == nil {
		return 0, nil, nil
	}
	oldest, _, err := recordSeqs(k)
	if err != nil {
		return 0, nil, err
	}
	from := afterSeq + 1
	k, v := c.Seek(be8(nil, from))
	if first, _, _ := recordSeqs(k); k == nil || first > from {
		// The record before may hold from.
		var pk, pv []byte
		if k == nil {
			pk, pv = c.Last()
		} else {
			pk, pv = c.Prev()
		}
		if _, last, err := recordSeqs(pk); pk != nil && err == nil && last >= from {
			k, v = pk, pv
		} else if k != nil {
			k, v = c.Seek(be8(nil, from))
		}
	}
	var out []stream.HistoryTick
	for ; k != nil && len(out) < limit; k, v = c.Next() {
		var derr error
		err := eachTick(k, v, func(e tickEntry) bool {
			if e.seq < from {
				return true
			}
			t, err := decodeEntry(e)
			if err != nil {
				derr = err
				return false
			}
			out = append(out, stream.HistoryTick{Seq: t.Seq, TS: t.TS, Data: t.Fields})
			return len(out) < limit
		})
		if err != nil {
			return 0, nil, err
		}
		if derr != nil {
			return 0, nil, derr
		}
	}
	return oldest, out, nil
}
