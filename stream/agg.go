package stream

import (
	"time"

	"github.com/tickstream/tickstream/feeds"
)

// Agg is what happened inside one coalescing window.
type Agg struct {
	N        int64   // ticks folded in
	O        float64 // first price
	H        float64 // highest price
	L        float64 // lowest price
	C        float64 // last price
	V        float64 // sum of size
	HasPrice bool    // whether any tick in the window carried a price
}

// foldPrice adds one price to the OHLC.
func (a *Agg) foldPrice(p float64) {
	if !a.HasPrice {
		a.O, a.H, a.L, a.C, a.HasPrice = p, p, p, p, true
		return
	}
	if p > a.H {
		a.H = p
	}
	if p < a.L {
		a.L = p
	}
	a.C = p
}

// Merge folds b, which happened after a, into a.
func (a *Agg) Merge(b Agg) {
	a.N += b.N
	a.V += b.V
	if !b.HasPrice {
		return
	}
	if !a.HasPrice {
		a.O, a.H, a.L, a.C, a.HasPrice = b.O, b.H, b.L, b.C, true
		return
	}
	if b.H > a.H {
		a.H = b.H
	}
	if b.L < a.L {
		a.L = b.L
	}
	a.C = b.C
}

// window accumulates ticks between two flushes.
type window struct {
	agg      Agg
	data     []feeds.Field
	seq      uint64
	ts       int64
	accepted time.Time
}

func (w *window) empty() bool { return w.agg.N == 0 }

func (w *window) fold(t *feeds.Tick, seq uint64, accepted time.Time) {
	w.agg.N++
	for _, f := range t.Fields {
		switch f.Name {
		case feeds.FieldPrice:
			w.agg.foldPrice(f.Value)
		case feeds.FieldSize:
			w.agg.V += f.Value
		}
	}
	w.data = mergeFields(w.data, t.Fields)
	w.seq, w.ts, w.accepted = seq, t.TS, accepted
}

// take returns the window's update and empties the window.
func (w *window) take(topic, epoch string) *Update {
	u := &Update{
		Topic:    topic,
		Epoch:    epoch,
		Seq:      w.seq,
		TS:       w.ts,
		Data:     append([]feeds.Field(nil), w.data...),
		Agg:      w.agg,
		Accepted: w.accepted,
	}
	w.agg = Agg{}
	w.data = w.data[:0]
	return u
}

// mergeFields sets every field of src in dst (MERGE semantics).
func mergeFields(dst, src []feeds.Field) []feeds.Field {
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
	Data     []feeds.Field
	Agg      Agg
	Accepted time.Time // when the bus accepted the last tick folded in
	json     []byte
}

// encoded fills in the wire encoding before u is shared, and returns u.
func (u *Update) encoded() *Update {
	u.json = appendUpdate(nil, u)
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
		Data:     mergeFields(append([]feeds.Field(nil), u.Data...), later.Data),
		Agg:      u.Agg,
		Accepted: later.Accepted,
	}
	m.Agg.Merge(later.Agg)
	return m
}
