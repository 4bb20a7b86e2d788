package stream

import (
	"sync"
	"time"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream/protocol"
)

// window accumulates ticks between two flushes.
type window struct {
	agg      protocol.Agg
	data     []tick.Field
	seq      uint64
	ts       int64
	accepted time.Time
}

func (w *window) empty() bool { return w.agg.N == 0 }

func (w *window) fold(t *tick.Tick, seq uint64, accepted time.Time) {
	var price, size tick.Num
	priced := false
	for _, f := range t.Fields {
		switch f.Name {
		case tick.FieldPrice:
			price, priced = f.Value, true
		case tick.FieldSize:
			size = f.Value
		}
	}
	w.agg.Fold(t.TS, price, priced, size)
	w.data = mergeFields(w.data, t.Fields)
	w.seq, w.ts, w.accepted = seq, t.TS, accepted
}

// prepend folds e, which came before every tick in w, into w.
func (w *window) prepend(topic string, e *histEntry) {
	var first window
	tk := tick.Tick{Topic: topic, TS: e.ts, Fields: e.fields}
	first.fold(&tk, e.seq, e.accepted)
	if w.empty() {
		*w = first
		return
	}
	first.agg.Merge(w.agg) // first owns its runs
	w.agg = first.agg
	w.data = mergeFields(first.data, w.data)
}

// take returns the window's update and empties the window.
func (w *window) take(topic, epoch string) *Update {
	u := &Update{
		Topic:    topic,
		Epoch:    epoch,
		Seq:      w.seq,
		TS:       w.ts,
		Data:     append([]tick.Field(nil), w.data...),
		Agg:      w.agg,
		Accepted: w.accepted,
	}
	u.Agg.B = nil
	if len(w.agg.B) > 0 { // the window keeps its buffer
		u.Agg.B = append([]protocol.Part(nil), w.agg.B...)
	}
	w.agg = protocol.Agg{B: w.agg.B[:0]}
	w.data = w.data[:0]
	return u
}

// mergeFields sets every field of src in dst (MERGE semantics).
func mergeFields(dst, src []tick.Field) []tick.Field {
next:
	for _, f := range src {
		for i := range dst {
			if dst[i].Name == f.Name {
				dst[i].Value = f.Value
				continue next
			}
		}
		dst = append(dst, f)
	}
	return dst
}

// Update is one coalesced update of one topic. It is immutable once
// published: the same value and bytes go to every subscriber of a group.
type Update struct {
	Topic    string
	Epoch    string
	Seq      uint64 // seq of the last tick folded in
	TS       int64  // source time of the last tick folded in
	Data     []tick.Field
	Agg      protocol.Agg
	Accepted time.Time // when the bus accepted the last tick folded in
	json     []byte
}

// encodeBufs lends scratch buffers to encoded. Appending to nil would
// grow the bytes four or five times; encoding into scratch and copying
// out at the exact size is one allocation, and the shared bytes hold no
// spare capacity.
var encodeBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// encodeBufKeep is the largest scratch buffer given back to encodeBufs.
const encodeBufKeep = 64 << 10

// encoded fills in the wire encoding before u is shared, and returns u.
func (u *Update) encoded() *Update {
	bp := encodeBufs.Get().(*[]byte)
	b := protocol.AppendUpdate((*bp)[:0], u.Topic, u.Epoch, u.Seq, u.TS, u.Data, &u.Agg)
	u.json = append(make([]byte, 0, len(b)), b...)
	if cap(b) <= encodeBufKeep {
		*bp = b
		encodeBufs.Put(bp)
	}
	return u
}

// JSON returns the update's wire encoding, without a trailing newline.
func (u *Update) JSON() []byte { return u.json }

// mergedWith returns a private copy of u with later folded in.
func (u *Update) mergedWith(later *Update) *Update {
	m := &Update{
		Topic:    u.Topic,
		Epoch:    later.Epoch,
		Seq:      later.Seq,
		TS:       later.TS,
		Data:     mergeFields(append([]tick.Field(nil), u.Data...), later.Data),
		Agg:      u.Agg,
		Accepted: later.Accepted,
	}
	m.Agg.B = append([]protocol.Part(nil), u.Agg.B...) // u's are shared
	m.Agg.Merge(later.Agg)
	return m
}
