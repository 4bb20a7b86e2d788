package stream

import (
	"sync"
	"time"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream/protocol"
)

// histEntry is one raw tick kept for resume and /api/history.
type histEntry struct {
	seq      uint64
	ts       int64
	fields   []tick.Field
	accepted time.Time
}

// topic is one topic's state. Every field is guarded by mu.
type topic struct {
	name string
	bus  *Bus
	feed string // the feed that created it (MaxTopicsPerFeed)
	idx  uint64 // its number in order of creation; guarded by Bus.mu

	// evicted is set, under Bus.mu and mu, when the topic is dropped
	// from the bus: a publish or join that finds it set looks again.
	evicted bool

	mu       sync.Mutex
	seq      uint64
	ts       int64
	latest   []tick.Field
	accepted time.Time
	hist     []histEntry // ring; grows by append up to HistoryDepth
	histHead int         // index of the oldest entry once full
	candles  []candleRing
	groups   map[time.Duration]*group
	snap     []byte // cached snapshot encoding for seq snapSeq, hour snapHour
	snapSeq  uint64
	rec      StoreRecord // scratch for Store.Append
	// lineage is the earlier epochs whose cursors resume here (see
	// StoredTopic.Lineage).
	lineage  []EpochSeq
	snapHour int64

	rateSec   int64 // Unix second of rateCount
	rateCount int   // ticks accepted in second rateSec
	ratePrev  int   // ticks accepted in the second before rateSec

	shard int // which instant flusher fans out its throttle-0 ticks
}

func newTopic(b *Bus, name string) *topic {
	t := &topic{name: name, bus: b, groups: make(map[time.Duration]*group)}
	t.shard = int(b.nextShard.Add(1) % uint32(len(b.instant)))
	t.candles = make([]candleRing, len(CandleIntervals))
	for i, iv := range CandleIntervals {
		t.candles[i].ms = iv.MS
	}
	return t
}

// group is the subscribers of one topic with one throttle interval.
type group struct {
	topic    *topic
	interval time.Duration
	members  []*membership
	win      window
	// instant holds a throttle-0 group's ticks not yet fanned out, one
	// window each (the last one folds several only past
	// maxInstantBacklog, when the instant flusher falls behind).
	instant []window
	// joins hold members who joined while the window already had ticks:
	// they must not get the ticks folded before they joined (their
	// snapshot or replay covered those). Their first update is built at
	// the flush from history, so publishing costs nothing per joiner.
	joins   []*joinWindow
	dirty   bool // queued on a flusher
	removed bool // no longer in topic.groups
}

// maxInstantBacklog bounds a throttle-0 group's ticks waiting for the
// instant flusher; past it they coalesce (agg stays exact).
const maxInstantBacklog = 1024

// joinWindow is the members who joined after seq afterSeq, before the
// window's flush.
type joinWindow struct {
	afterSeq uint64
	members  []*membership
}

// membership is one subscriber's subscription to one topic.
type membership struct {
	sub   *Subscriber
	topic *topic
	group *group
	index int         // in group.members; -1 while in join
	join  *joinWindow // non-nil until the first flush after joining
	named bool        // the client named the topic (not only a pattern)
}

// publish applies one validated tick. It is called with t.mu unlocked.
// With a store, the tick is appended to its queue under the lock (in seq
// order) and publish then waits, unlocked, for what the store's sync
// policy promises before a publish returns. It returns false, and applies
// nothing, if t has been evicted.
func (t *topic) publish(tk *tick.Tick, accepted time.Time) (uint64, bool) {
	t.mu.Lock()
	if t.evicted {
		t.mu.Unlock()
		return 0, false
	}
	seq, ticket := t.publishLocked(tk, accepted, 0)
	t.mu.Unlock()
	if st := t.bus.cfg.Store; st != nil {
		st.Settle(ticket)
	}
	return seq, true
}

// publishLocked folds tk as seq, or as the sequencer's next seq when seq
// is 0 (see Bus.Apply for a seq given by the cluster).
func (t *topic) publishLocked(tk *tick.Tick, accepted time.Time, seq uint64) (uint64, uint64) {
	cfg := &t.bus.cfg
	fields := append([]tick.Field(nil), tk.Fields...)

	tk.Fields = fields
	if seq == 0 {
		seq = t.bus.seqr.Next(t.name, t.seq)
	} else if seq != t.seq+1 {
		// A gap: the ring holds consecutive seqs only.
		clear(t.hist)
		t.hist, t.histHead = t.hist[:0], 0
	}
	t.seq = seq
	t.ts, t.accepted = tk.TS, accepted
	t.latest = mergeFields(t.latest, fields)

	e := histEntry{seq: seq, ts: tk.TS, fields: fields, accepted: accepted}
	if len(t.hist) < cfg.HistoryDepth {
		t.hist = append(t.hist, e)
	} else if len(t.hist) > 0 {
		t.hist[t.histHead] = e
		t.histHead = (t.histHead + 1) % len(t.hist)
	}

	var rec *StoreRecord
	if cfg.Store != nil {
		rec = &t.rec // Append copies it
		rec.NBars = 0
	}
	if price, ok := tk.GetNum(tick.FieldPrice); ok {
		size, _ := tk.GetNum(tick.FieldSize)
		for i := range t.candles {
			bar, isNew := t.candles[i].fold(tk.TS, price, size, cfg.CandleDepth)
			if rec != nil && bar != nil {
				rec.Bars[rec.NBars] = StoreBar{Interval: i, New: isNew, Bar: *bar}
				rec.NBars++
			}
		}
	}
	var ticket uint64
	if rec != nil {
		rec.Topic, rec.Seq, rec.TS, rec.Accepted, rec.Fields = t.name, seq, tk.TS, accepted, fields
		ticket = cfg.Store.Append(rec)
	}

	sec := accepted.Unix()
	switch {
	case sec == t.rateSec:
		t.rateCount++
	case sec == t.rateSec+1:
		t.ratePrev, t.rateCount, t.rateSec = t.rateCount, 1, sec
	default:
		t.ratePrev, t.rateCount, t.rateSec = 0, 1, sec
	}

	for _, g := range t.groups {
		if g.interval == 0 {
			// Every tick is one update; the fan-out runs on the bus's
			// instant flusher, not on the publisher's goroutine.
			if len(g.members) == 0 && !g.hasJoiners() {
				continue
			}
			if n := len(g.instant); n == 0 || n < maxInstantBacklog || len(g.joins) > 0 {
				g.instant = append(g.instant, window{})
			}
			g.instant[len(g.instant)-1].fold(tk, seq, accepted)
		} else {
			g.win.fold(tk, seq, accepted)
		}
		if !g.dirty {
			g.dirty = true
			t.bus.schedule(g)
		}
	}
	return seq, ticket
}

// fanout puts u on every member's queue. Called with topic.mu held.
// With wake set, the members whose queue was empty are added to it
// instead of being signalled: the flusher signals them once its pass
// ends, so that a subscriber's updates of one pass go out in one write.
func (g *group) fanout(u *Update, members []*membership, wake *[]*Subscriber) {
	for _, m := range members {
		if m.sub.queueUpdate(u) {
			wakeLater(m.sub, wake)
		}
	}
	if n := u.Agg.N - 1; n > 0 {
		g.topic.bus.metrics.ticksCoalesced.Add(float64(n))
	}
}

// updateRun is a pass's updates of a throttle-0 group, in seq order, as
// its members share them: one queue entry per member instead of one per
// update, and the updates' bytes joined once, which a WebSocket writes as
// they are. At high rates on a hot topic, an entry and a copy per update
// per subscriber were most of the fan-out's cost.
type updateRun struct {
	upds []*Update
	msg  Message // JSON: the updates joined by '\n'; Parts: one per update
}

func (r *updateRun) build() {
	n := len(r.upds) - 1
	for _, u := range r.upds {
		n += len(u.json)
	}
	b := make([]byte, 0, n)
	parts := make([]Message, len(r.upds))
	for i, u := range r.upds {
		if i > 0 {
			b = append(b, '\n')
		}
		b = append(b, u.json...)
		parts[i] = updateMessage(u)
	}
	r.msg = parts[len(parts)-1]
	r.msg.JSON, r.msg.Parts = b, parts
}

// wakeLater adds s to wake, to be signalled when the flusher's pass ends,
// or signals it now when there is no wake list.
func wakeLater(s *Subscriber, wake *[]*Subscriber) {
	if wake != nil {
		*wake = append(*wake, s)
	} else {
		s.signal()
	}
}

// fanoutRun puts r on every member's queue; wake is as for fanout.
func (g *group) fanoutRun(r *updateRun, wake *[]*Subscriber) {
	for _, m := range g.members {
		if m.sub.queueRun(r) {
			wakeLater(m.sub, wake)
		}
	}
	var coalesced int64
	for _, u := range r.upds {
		coalesced += u.Agg.N - 1
	}
	if coalesced > 0 {
		g.topic.bus.metrics.ticksCoalesced.Add(float64(coalesced))
	}
}

// flush closes the group's window. Called by a flusher with topic.mu held;
// wake is as for fanout.
func (g *group) flush(wake *[]*Subscriber) {
	g.dirty = false
	t := g.topic
	epoch := t.bus.cfg.Epoch
	if g.interval == 0 {
		if len(g.instant) > 1 && len(g.joins) == 0 && len(g.members) > 0 {
			// Several ticks since the last pass: one run, one queue entry
			// per member, its bytes joined once.
			r := &updateRun{upds: make([]*Update, len(g.instant))}
			for i := range g.instant {
				r.upds[i] = g.instant[i].take(t.name, epoch).encoded()
			}
			r.build()
			g.fanoutRun(r, wake)
		} else {
			for i := range g.instant {
				w := &g.instant[i]
				last := w.seq
				u := w.take(t.name, epoch).encoded()
				g.fanout(u, g.members, wake)
				for _, j := range g.joins {
					if last > j.afterSeq {
						g.fanout(u, j.members, wake)
					}
				}
			}
		}
		clear(g.instant)
		g.instant = g.instant[:0]
		if cap(g.instant) > 64 {
			g.instant = nil // a burst's backlog is not kept
		}
	} else if !g.win.empty() {
		u := g.win.take(t.name, epoch)
		if len(g.members) > 0 {
			g.fanout(u.encoded(), g.members, wake)
		}
		g.flushJoins(wake)
	}
	for _, j := range g.joins {
		for _, m := range j.members {
			m.join = nil
			m.index = len(g.members)
			g.members = append(g.members, m)
		}
	}
	clear(g.joins)
	g.joins = g.joins[:0]
}

// flushJoins sends each join point's members the ticks after their join,
// folded from history in one backward pass over the window's ticks (joins
// are in increasing afterSeq order). A member whose join point history no
// longer reaches gets reset and a snapshot instead.
func (g *group) flushJoins(wake *[]*Subscriber) {
	t := g.topic
	var suffix window // the ticks after seq, oldest first
	seq, i := t.seq, len(t.hist)-1
	for k := len(g.joins) - 1; k >= 0; k-- {
		j := g.joins[k]
		for seq > j.afterSeq && i >= 0 {
			suffix.prepend(t.name, t.histAt(i))
			seq, i = seq-1, i-1
		}
		if len(j.members) == 0 {
			continue
		}
		if seq > j.afterSeq {
			for _, m := range j.members {
				t.pushReset(m.sub, protocol.ResetHistoryGap)
				t.pushSnapshot(m.sub)
			}
			continue
		}
		if !suffix.empty() {
			w := suffix // take empties its copy only
			g.fanout(w.take(t.name, t.bus.cfg.Epoch).encoded(), j.members, wake)
		}
	}
}

// remove takes m out of its group. Called with topic.mu held.
func (t *topic) remove(m *membership) {
	g := m.group
	if j := m.join; j != nil {
		for i, x := range j.members {
			if x == m {
				j.members = append(j.members[:i], j.members[i+1:]...)
				break
			}
		}
		m.join = nil
	} else if m.index >= 0 && m.index < len(g.members) && g.members[m.index] == m {
		last := len(g.members) - 1
		g.members[m.index] = g.members[last]
		g.members[m.index].index = m.index
		g.members[last] = nil
		g.members = g.members[:last]
	}
	m.index = -1
	if len(g.members) == 0 && !g.hasJoiners() && !g.removed {
		g.removed = true
		g.win = window{}
		g.instant = nil
		g.joins = nil
		if t.groups[g.interval] == g {
			delete(t.groups, g.interval)
		}
	}
}

func (g *group) hasJoiners() bool {
	for _, j := range g.joins {
		if len(j.members) > 0 {
			return true
		}
	}
	return false
}

// joinCommit records a new membership in its subscriber; it is called by
// joinLocked with topic.mu and Subscriber.subMu held. It returns whether
// the join is still wanted, the subscription's interval, and the
// membership it replaces (of the same topic), if any. When it returns
// false, nothing is joined and nothing is sent.
type joinCommit func(m *membership) (old *membership, interval time.Duration, ok bool)

// join is joinLocked with t.mu taken. A topic evicted since it was
// looked up is brought back first (or its successor joined), so that a
// join never lands on a topic the bus no longer has.
func (t *topic) join(s *Subscriber, cur *protocol.Cursor, commit joinCommit) bool {
	for {
		t.mu.Lock()
		if !t.evicted {
			defer t.mu.Unlock()
			return t.joinLocked(s, cur, commit)
		}
		t.mu.Unlock()
		t = t.bus.revive(t)
	}
}

// joinLocked subscribes s to t. With a cursor it replays from history, or
// sends reset + snapshot; without, a snapshot (none for a topic that has
// no tick yet: its first update carries all). The membership is recorded
// (commit) and the old one it replaces leaves its group under the same
// lock, so no tick falls between them and an unsubscribe that sees the
// new membership finds it in its group. Called with t.mu held.
func (t *topic) joinLocked(s *Subscriber, cur *protocol.Cursor, commit joinCommit) bool {
	if h := t.bus.testHookJoin; h != nil {
		h(t.name, s)
	}
	m := &membership{sub: s, topic: t, index: -1}
	s.subMu.Lock()
	old, interval, ok := commit(m)
	s.subMu.Unlock()
	if !ok {
		return false
	}
	if old != nil {
		t.remove(old)
	}
	epoch := t.bus.cfg.Epoch
	if cur != nil && cur.Epoch != epoch {
		for _, l := range t.lineage {
			if cur.Epoch == l.Epoch && cur.Seq <= l.Seq {
				cur = &protocol.Cursor{Epoch: epoch, Seq: cur.Seq} // the seqs went on
				break
			}
		}
	}
	switch {
	case cur == nil:
		t.pushSnapshot(s)
	case cur.Epoch != epoch:
		t.pushReset(s, protocol.ResetEpoch)
		t.pushSnapshot(s)
	case cur.Seq > t.seq:
		t.pushReset(s, protocol.ResetBadCursor)
		t.pushSnapshot(s)
	case cur.Seq < t.oldestSeq()-1:
		t.pushReset(s, protocol.ResetHistoryGap)
		t.pushSnapshot(s)
	default:
		t.replay(s, cur.Seq, interval)
	}

	g := t.groups[interval]
	if g == nil {
		g = &group{topic: t, interval: interval}
		t.groups[interval] = g
	}
	m.group = g
	if !g.win.empty() || len(g.instant) > 0 {
		var j *joinWindow
		if n := len(g.joins); n > 0 && g.joins[n-1].afterSeq == t.seq {
			j = g.joins[n-1]
		} else {
			j = &joinWindow{afterSeq: t.seq}
			g.joins = append(g.joins, j)
		}
		j.members = append(j.members, m)
		m.join = j
	} else {
		m.index = len(g.members)
		g.members = append(g.members, m)
	}
	return true
}

// oldestSeq is the seq of the oldest kept tick (seq+1 when none is kept).
func (t *topic) oldestSeq() uint64 {
	return t.seq - uint64(len(t.hist)) + 1
}

func (t *topic) histAt(i int) *histEntry { return &t.hist[(t.histHead+i)%len(t.hist)] }

// pushSnapshot sends the latest value, encoded once per seq. Nothing is
// sent for a topic that has no tick yet: its first update carries all.
func (t *topic) pushSnapshot(s *Subscriber) {
	if t.seq == 0 {
		return
	}
	// The reference figures change only with a tick or an hour.
	now := t.bus.cfg.Now().UnixMilli()
	hour := now / refHourMS
	if t.snap == nil || t.snapSeq != t.seq || t.snapHour != hour {
		t.snap = protocol.AppendSnapshotRef(nil, t.name, t.bus.cfg.Epoch, t.seq, t.ts, t.latest, t.refLocked(now))
		t.snapSeq, t.snapHour = t.seq, hour
	}
	s.push(Message{Type: protocol.TypeSnapshot, Topic: t.name, Epoch: t.bus.cfg.Epoch, Seq: t.seq, JSON: t.snap})
}

func (t *topic) pushReset(s *Subscriber, reason string) {
	s.push(Message{Type: protocol.TypeReset, Topic: t.name, JSON: protocol.EncodeReset(t.name, reason)})
}

// replay sends the kept ticks after seq, folded into windows of the
// subscription's interval by source time, like live ones.
func (t *topic) replay(s *Subscriber, after uint64, interval time.Duration) {
	if after >= t.seq {
		return
	}
	first := int(after + 1 - t.oldestSeq())
	var w window
	bucket := int64(-1)
	ms := interval.Milliseconds()
	for i := first; i < len(t.hist); i++ {
		e := t.histAt(i)
		b := int64(i) // throttle 0: one update per tick
		if ms > 0 {
			b = e.ts / ms
		}
		if !w.empty() && b != bucket {
			s.pushUpdate(w.take(t.name, t.bus.cfg.Epoch).encoded())
		}
		bucket = b
		tk := tick.Tick{Topic: t.name, TS: e.ts, Fields: e.fields}
		w.fold(&tk, e.seq, e.accepted)
	}
	if !w.empty() {
		s.pushUpdate(w.take(t.name, t.bus.cfg.Epoch).encoded())
	}
}

const refHourMS = 3_600_000

// refLocked returns the rolling 24-hour reference figures at now (Unix
// ms) from the hourly bars: those starting in the hour 23 hours before
// now's hour or later. Nil when there is none. Called with t.mu held.
func (t *topic) refLocked(now int64) *protocol.Ref {
	i := intervalIndex("1h")
	if i < 0 {
		return nil
	}
	r := &t.candles[i]
	from := now - now%refHourMS - 23*refHourMS
	var ref *protocol.Ref
	for k := 0; k < r.n(); k++ {
		b := r.at(k)
		if b.T < from {
			continue
		}
		if ref == nil {
			ref = &protocol.Ref{Since: b.T, O: b.O, H: b.H, L: b.L}
		}
		if b.H.Cmp(ref.H) > 0 {
			ref.H = b.H
		}
		if b.L.Cmp(ref.L) < 0 {
			ref.L = b.L
		}
		ref.V = ref.V.Add(b.V)
		ref.N += b.N
	}
	return ref
}

// info returns the topic's public summary.
func (t *topic) info(now time.Time) TopicInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	rate := 0
	switch sec := now.Unix(); sec {
	case t.rateSec:
		rate = max(t.ratePrev, t.rateCount)
	case t.rateSec + 1:
		rate = t.rateCount
	}
	return TopicInfo{
		Topic: t.name, Epoch: t.bus.cfg.Epoch, Seq: t.seq, TS: t.ts,
		Data: append(protocol.Fields(nil), t.latest...), Rate: rate,
		Ref: t.refLocked(now.UnixMilli()),
	}
}

// TopicInfo is what /api/topics shows for one topic.
type TopicInfo struct {
	Topic string          `json:"topic"`
	Epoch string          `json:"epoch"`
	Seq   uint64          `json:"seq"`
	TS    int64           `json:"ts"`
	Data  protocol.Fields `json:"data"`
	// Rate is ticks accepted in the last whole second.
	Rate int `json:"rate"`
	// Ref is the rolling 24-hour reference figures (open, high, low,
	// volume since Ref.Since); nil while the topic had no price then.
	Ref *protocol.Ref `json:"ref,omitempty"`
	// Feed is the feed that last published the topic, and BackupFor the
	// primaries it stands in for right now when it is a backup covering
	// failed feeds (its prices are a stand-in, e.g. the simulator's for
	// an exchange). The bus leaves them empty; the HTTP server fills them
	// in when its feeds report sources (feeds.SourceReporter).
	Feed      string   `json:"feed,omitempty"`
	BackupFor []string `json:"backup_for,omitempty"`
}

// HistoryTick is one raw tick from history.
type HistoryTick struct {
	Seq  uint64          `json:"seq"`
	TS   int64           `json:"ts"`
	Data protocol.Fields `json:"data"`
}

// History is one page of raw ticks.
type History struct {
	Topic  string        `json:"topic"`
	Epoch  string        `json:"epoch"`
	Oldest uint64        `json:"oldest_seq"` // oldest seq still kept
	Last   uint64        `json:"last_seq"`   // the topic's current seq
	Ticks  []HistoryTick `json:"ticks"`
}

func (t *topic) history(afterSeq uint64, limit int) History {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := History{Topic: t.name, Epoch: t.bus.cfg.Epoch, Oldest: t.oldestSeq(), Last: t.seq, Ticks: []HistoryTick{}}
	start := 0
	if afterSeq >= h.Oldest {
		start = int(afterSeq + 1 - h.Oldest)
	}
	for i := start; i < len(t.hist) && len(h.Ticks) < limit; i++ {
		e := t.histAt(i)
		h.Ticks = append(h.Ticks, HistoryTick{Seq: e.seq, TS: e.ts, Data: e.fields})
	}
	return h
}

func (t *topic) candleBars(interval, limit int) ([]Candle, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.candles[interval].last(limit), t.seq
}
