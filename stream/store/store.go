// Package store is tickstream's embedded store: a stream.Store kept in
// one bbolt file (go.etcd.io/bbolt) under a data directory.
//
// Layout: bucket "meta" holds the epoch and whether the last run closed
// cleanly; bucket "topics" holds one bucket per topic with its state
// ("m": seq, source time, accept time, latest fields, epoch lineage), its
// raw ticks ("t": seq → accept time + the tick in its JSON form, as
// tick.AppendJSON writes it, so a change of the tick's encoding passes
// through) and its candles (one bucket per interval: bar start → bar as
// JSON).
//
// Writes: Append puts the tick on a bounded queue (no I/O on the
// publisher's goroutine); one writer goroutine commits the queue in
// batches, one bbolt transaction each (one fsync of the pages and one of
// the meta page). The sync policy says when: every Options.SyncInterval
// (a crash or power loss loses at most the ticks accepted in the last
// interval, plus what the writer was committing), or at once with
// Options.SyncAlways (Settle then returns only after the tick's commit, so
// a publish that returned is never lost). bbolt is copy-on-write with two
// checksummed meta pages: a commit cut short leaves the previous one, so a
// crash never corrupts the file.
//
// Bounds: per topic the newest Options.RetentionTicks ticks accepted in
// the last Options.RetentionAge are kept, and the candle depth's bars per
// interval; past Options.MaxBytes of pages in use, the oldest ticks of
// every topic are pruned.
package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream"
)

// FileName is the store's file in its data directory.
const FileName = "tickstream.db"

// Options configure a Store. Every zero value means the documented default.
type Options struct {
	// Dir is the data directory; it is created if missing.
	Dir string
	// SyncAlways makes Settle wait for the tick's commit: a publish that
	// returned is on disk.
	SyncAlways bool
	// SyncInterval is how often the queue is committed (and fsynced)
	// without SyncAlways. Zero value means 100 ms.
	SyncInterval time.Duration
	// RetentionTicks is how many ticks each topic keeps. Zero value means
	// no bound by count.
	RetentionTicks int
	// RetentionAge is how long a tick is kept after it was accepted. Zero
	// value means no bound by age.
	RetentionAge time.Duration
	// MaxBytes bounds the pages in use; past it the oldest ticks are
	// pruned. Zero value means no bound.
	MaxBytes int64
	// QueueLen bounds the ticks waiting for the writer; Append waits while
	// it is full. Zero value means 65536.
	QueueLen int
	// Registerer receives the store's metrics; nil means unregistered.
	Registerer prometheus.Registerer
	// Logger logs store events. Zero value means slog.Default().
	Logger *slog.Logger
	// Now is the clock. Zero value means time.Now.
	Now func() time.Time
}

// ErrInUse is returned by Open when another process holds the store.
var ErrInUse = errors.New("store: the data directory is in use by another process")

var (
	bMeta    = []byte("meta")
	bTopics  = []byte("topics")
	bTicks   = []byte("t")
	kMeta    = []byte("m")
	kEpoch   = []byte("epoch")
	kState   = []byte("state")
	vClean   = []byte("clean")
	vRunning = []byte("running")
)

// maxLineage bounds the earlier epochs remembered per topic.
const maxLineage = 16

// Store is the bbolt stream.Store. Its methods are safe for concurrent use.
type Store struct {
	db   *bolt.DB
	opts Options
	log  *slog.Logger
	m    metrics

	mu        sync.Mutex
	cond      *sync.Cond // queue space, commits
	q, spare  []stream.StoreRecord
	ticket    uint64 // of the last append
	committed uint64 // every ticket up to it is committed (or failed)
	closed    bool
	started   bool
	kick      chan struct{}
	maintReq  chan chan struct{}
	quit      chan struct{}
	done      chan struct{}

	// Owned by the writer (and by Load before it starts).
	topics      map[string]*topicState
	candleDepth int
	arena       []byte
	lastMaint   time.Time
}

type topicState struct {
	seq     uint64
	ts      int64
	acc     int64 // Unix ns
	latest  []tick.Field
	lineage []stream.EpochSeq
	bars    []int // stored bars per interval
}

type topicMeta struct {
	Seq     uint64            `json:"seq"`
	TS      int64             `json:"ts"`
	Acc     int64             `json:"acc"`
	Latest  string            `json:"latest"` // tick JSON lines of at most tick.MaxFields fields each
	Lineage []stream.EpochSeq `json:"lineage,omitempty"`
}

type metrics struct {
	fileBytes, usedBytes atomic.Int64
	written, commits     prometheus.Counter
	errs                 prometheus.Counter
	pruned               *prometheus.CounterVec
	commitTime           prometheus.Histogram
}

// Open opens (or creates) the store in opts.Dir. Load must be called
// before Append; Close must be called after the bus is closed.
func Open(opts Options) (*Store, error) {
	if opts.SyncInterval <= 0 {
		opts.SyncInterval = 100 * time.Millisecond
	}
	if opts.QueueLen <= 0 {
		opts.QueueLen = 65536
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, err
	}
	db, err := bolt.Open(filepath.Join(opts.Dir, FileName), 0o600, &bolt.Options{
		Timeout:      time.Second,
		FreelistType: bolt.FreelistMapType,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, ErrInUse
	}
	if err != nil {
		return nil, err
	}
	s := &Store{
		db: db, opts: opts, log: opts.Logger,
		kick: make(chan struct{}, 1), maintReq: make(chan chan struct{}), quit: make(chan struct{}), done: make(chan struct{}),
		topics: make(map[string]*topicState),
	}
	s.cond = sync.NewCond(&s.mu)
	s.initMetrics()
	s.updateSize()
	return s, nil
}

func (s *Store) initMetrics() {
	s.m.written = prometheus.NewCounter(prometheus.CounterOpts{Name: "tickstream_store_ticks_written_total", Help: "Ticks committed to the store."})
	s.m.commits = prometheus.NewCounter(prometheus.CounterOpts{Name: "tickstream_store_commits_total", Help: "Store transactions committed (each one fsync)."})
	s.m.errs = prometheus.NewCounter(prometheus.CounterOpts{Name: "tickstream_store_errors_total", Help: "Store commits that failed (their ticks are not stored)."})
	s.m.pruned = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tickstream_store_pruned_ticks_total", Help: "Ticks pruned from the store, by reason: count, age, size."}, []string{"reason"})
	s.m.commitTime = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tickstream_store_commit_seconds", Help: "Time of one store commit, fsync included.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}})
	if r := s.opts.Registerer; r != nil {
		r.MustRegister(s.m.written, s.m.commits, s.m.errs, s.m.pruned, s.m.commitTime,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tickstream_store_file_bytes", Help: "Size of the store's file."},
				func() float64 { return float64(s.m.fileBytes.Load()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tickstream_store_bytes", Help: "Bytes of the store's pages in use (bounded by store_max_bytes)."},
				func() float64 { return float64(s.m.usedBytes.Load()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tickstream_store_queue_ticks", Help: "Accepted ticks waiting to be committed."},
				func() float64 { return float64(s.QueueLen()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tickstream_store_lag_seconds", Help: "Age of the oldest tick waiting to be committed (0 when none waits)."},
				func() float64 { return s.Lag().Seconds() }),
		)
	}
}

// QueueLen is the number of ticks waiting to be committed.
func (s *Store) QueueLen() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.q)
}

// Lag is the age of the oldest tick waiting to be committed.
func (s *Store) Lag() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.q) == 0 {
		return 0
	}
	return max(0, s.opts.Now().Sub(s.q[0].Accepted))
}

// Bytes is the size of the pages in use, and of the file.
func (s *Store) Bytes() (used, file int64) {
	return s.m.usedBytes.Load(), s.m.fileBytes.Load()
}

func (s *Store) updateSize() {
	_ = s.db.View(func(tx *bolt.Tx) error {
		st := s.db.Stats()
		s.m.usedBytes.Store(tx.Size() - int64(st.FreeAlloc))
		return nil
	})
	if fi, err := os.Stat(s.db.Path()); err == nil {
		s.m.fileBytes.Store(fi.Size())
	}
}

func be8(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }

// Load implements stream.Store. It starts the writer.
func (s *Store) Load(newEpoch string, historyDepth, candleDepth int) (*stream.StoreState, error) {
	s.mu.Lock()
	if s.started || s.closed {
		s.mu.Unlock()
		return nil, errors.New("store: Load called twice or after Close")
	}
	s.started = true
	s.mu.Unlock()
	s.candleDepth = candleDepth
	st := &stream.StoreState{}
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bMeta)
		if err != nil {
			return err
		}
		root, err := tx.CreateBucketIfNotExists(bTopics)
		if err != nil {
			return err
		}
		epoch := string(meta.Get(kEpoch))
		crashed := epoch != "" && !bytes.Equal(meta.Get(kState), vClean)
		if epoch == "" || crashed {
			if crashed {
				s.log.Warn("store: the last run did not close cleanly; ticks accepted after its last commit are lost: a new epoch starts, earlier cursors up to each topic's stored seq still resume",
					"old_epoch", epoch, "epoch", newEpoch)
			}
			if err := meta.Put(kEpoch, []byte(newEpoch)); err != nil {
				return err
			}
		}
		old := epoch
		if epoch == "" || crashed {
			epoch = newEpoch
		}
		st.Epoch = epoch
		if err := meta.Put(kState, vRunning); err != nil {
			return err
		}
		return root.ForEachBucket(func(name []byte) error {
			b := root.Bucket(name)
			ts, err := s.loadTopic(b, string(name), historyDepth, candleDepth)
			if err != nil {
				return fmt.Errorf("topic %q: %w", name, err)
			}
			state := s.topics[string(name)]
			if crashed && old != "" {
				state.lineage = append(state.lineage, stream.EpochSeq{Epoch: old, Seq: state.seq})
				if n := len(state.lineage); n > maxLineage {
					state.lineage = state.lineage[n-maxLineage:]
				}
				ts.Lineage = state.lineage
				if err := s.putMeta(b, state); err != nil {
					return err
				}
			}
			st.Topics = append(st.Topics, *ts)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	s.updateSize()
	go s.run()
	return st, nil
}

func (s *Store) loadTopic(b *bolt.Bucket, name string, historyDepth, candleDepth int) (*stream.StoredTopic, error) {
	state := &topicState{bars: make([]int, len(stream.CandleIntervals))}
	if v := b.Get(kMeta); v != nil {
		var m topicMeta
		if err := json.Unmarshal(v, &m); err != nil {
			return nil, err
		}
		latest, err := decodeLatest(m.Latest)
		if err != nil {
			return nil, err
		}
		state.seq, state.ts, state.acc, state.latest, state.lineage = m.Seq, m.TS, m.Acc, latest, m.Lineage
	}
	s.topics[name] = state
	ts := &stream.StoredTopic{Name: name, Seq: state.seq, TS: state.ts, Accepted: time.Unix(0, state.acc),
		Latest: append([]tick.Field(nil), state.latest...), Lineage: state.lineage}
	if tb := b.Bucket(bTicks); tb != nil && historyDepth > 0 {
		c := tb.Cursor()
		want := state.seq
		for k, v := c.Last(); k != nil && len(ts.Ticks) < historyDepth; k, v = c.Prev() {
			seq := binary.BigEndian.Uint64(k)
			if seq != want {
				break // not consecutive: the ring ends here
			}
			t, err := decodeTick(seq, v)
			if err != nil {
				return nil, err
			}
			ts.Ticks = append(ts.Ticks, t)
			want--
		}
		for i, j := 0, len(ts.Ticks)-1; i < j; i, j = i+1, j-1 {
			ts.Ticks[i], ts.Ticks[j] = ts.Ticks[j], ts.Ticks[i]
		}
	}
	ts.Candles = make([][]stream.Candle, len(stream.CandleIntervals))
	for i, iv := range stream.CandleIntervals {
		cb := b.Bucket([]byte(iv.Name))
		if cb == nil {
			continue
		}
		state.bars[i] = cb.Stats().KeyN
		var bars []stream.Candle
		c := cb.Cursor()
		for k, v := c.Last(); k != nil && len(bars) < candleDepth; k, v = c.Prev() {
			var bar stream.Candle
			if err := json.Unmarshal(v, &bar); err != nil {
				return nil, err
			}
			bars = append(bars, bar)
		}
		for l, r := 0, len(bars)-1; l < r; l, r = l+1, r-1 {
			bars[l], bars[r] = bars[r], bars[l]
		}
		ts.Candles[i] = bars
	}
	return ts, nil
}

func decodeTick(seq uint64, v []byte) (stream.StoredTick, error) {
	if len(v) < 8 {
		return stream.StoredTick{}, fmt.Errorf("tick %d: short value", seq)
	}
	tk, err := tick.ParseTick(v[8:])
	if err != nil {
		return stream.StoredTick{}, fmt.Errorf("tick %d: %w", seq, err)
	}
	return stream.StoredTick{Seq: seq, TS: tk.TS, Accepted: time.Unix(0, int64(binary.BigEndian.Uint64(v))), Fields: tk.Fields}, nil
}

// placeholderTopic stands for the topic in stored ticks: the bucket
// names it, so each tick does not repeat it.
const placeholderTopic = "."

func encodeLatest(fields []tick.Field) string {
	var b []byte
	for len(fields) > 0 {
		n := min(len(fields), tick.MaxFields)
		b = tick.Tick{Topic: placeholderTopic, Fields: fields[:n]}.AppendJSON(b)
		b = append(b, '\n')
		fields = fields[n:]
	}
	return string(b)
}

func decodeLatest(s string) ([]tick.Field, error) {
	var out []tick.Field
	for line := range strings.SplitSeq(strings.TrimSpace(s), "\n") {
		if line == "" {
			continue
		}
		tk, err := tick.ParseTick([]byte(line))
		if err != nil {
			return nil, err
		}
		out = append(out, tk.Fields...)
	}
	return out, nil
}

func (s *Store) putMeta(b *bolt.Bucket, st *topicState) error {
	v, err := json.Marshal(topicMeta{Seq: st.seq, TS: st.ts, Acc: st.acc, Latest: encodeLatest(st.latest), Lineage: st.lineage})
	if err != nil {
		return err
	}
	return b.Put(kMeta, v)
}

// Append implements stream.Store.
func (s *Store) Append(rec *stream.StoreRecord) uint64 {
	s.mu.Lock()
	for len(s.q) >= s.opts.QueueLen && !s.closed {
		s.cond.Wait()
	}
	if s.closed || !s.started {
		s.mu.Unlock()
		return 0
	}
	s.q = append(s.q, *rec)
	s.ticket++
	t := s.ticket
	n := len(s.q)
	s.mu.Unlock()
	if s.opts.SyncAlways || n >= s.opts.QueueLen/2 {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	return t
}

// Settle implements stream.Store: with SyncAlways it waits for the commit
// of ticket.
func (s *Store) Settle(ticket uint64) {
	if !s.opts.SyncAlways || ticket == 0 {
		return
	}
	s.mu.Lock()
	for s.committed < ticket {
		s.cond.Wait()
	}
	s.mu.Unlock()
}

// Flush commits what is queued and returns when it is on disk.
func (s *Store) Flush() {
	s.mu.Lock()
	t := s.ticket
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	s.mu.Lock()
	for s.committed < t && s.started {
		s.cond.Wait()
	}
	s.mu.Unlock()
}

func (s *Store) run() {
	defer close(s.done)
	every := s.opts.SyncInterval
	if s.opts.SyncAlways {
		every = time.Second // maintenance only
	}
	tk := time.NewTicker(every)
	defer tk.Stop()
	for {
		stop, force := false, chan struct{}(nil)
		select {
		case <-s.kick:
		case <-tk.C:
		case force = <-s.maintReq:
		case <-s.quit:
			stop = true
		}
		for s.flush() {
		}
		s.maintain(force != nil)
		if force != nil {
			close(force)
		}
		if stop {
			return
		}
	}
}

// Maintain commits what is queued and enforces the age and size bounds
// now (the writer does so every second), then returns.
func (s *Store) Maintain() {
	done := make(chan struct{})
	select {
	case s.maintReq <- done:
		<-done
	case <-s.done:
	}
}

// flush commits one batch: what was queued. It reports whether it
// committed anything.
func (s *Store) flush() bool {
	s.mu.Lock()
	batch := s.q
	s.q, s.spare = s.spare[:0], nil
	last := s.ticket
	s.cond.Broadcast() // room in the queue
	s.mu.Unlock()
	if len(batch) > 0 {
		start := time.Now()
		if err := s.commit(batch); err != nil {
			s.m.errs.Inc()
			s.log.Error("store: commit failed; its ticks are not stored", "ticks", len(batch), "err", err)
		} else {
			s.m.commits.Inc()
			s.m.written.Add(float64(len(batch)))
			s.m.commitTime.Observe(time.Since(start).Seconds())
		}
	}
	clear(batch) // drop the fields it shares with the bus
	s.mu.Lock()
	s.spare = batch[:0]
	s.committed = last
	s.cond.Broadcast()
	s.mu.Unlock()
	return len(batch) > 0
}

type txTopic struct {
	b, ticks *bolt.Bucket
	bars     []*bolt.Bucket
	state    *topicState
	// changed holds the last state of each bar the batch changed: a bar
	// is written once per batch however many ticks it took.
	changed map[barKey]stream.Candle
}

type barKey struct {
	interval int
	t        int64
}

func (s *Store) commit(batch []stream.StoreRecord) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		root := tx.Bucket(bTopics)
		touched := make(map[string]*txTopic)
		arena := s.arena[:0]
		for i := range batch {
			r := &batch[i]
			tt := touched[r.Topic]
			if tt == nil {
				var err error
				if tt, err = s.openTopic(root, r.Topic); err != nil {
					return err
				}
				touched[r.Topic] = tt
			}
			start := len(arena)
			arena = be8(arena, r.Seq)
			key := arena[start:len(arena):len(arena)]
			start = len(arena)
			arena = be8(arena, uint64(r.Accepted.UnixNano()))
			arena = tick.Tick{Topic: placeholderTopic, TS: r.TS, Fields: r.Fields}.AppendJSON(arena)
			if err := tt.ticks.Put(key, arena[start:len(arena):len(arena)]); err != nil {
				return err
			}
			for _, bar := range r.Bars[:r.NBars] {
				if bar.Interval < 0 || bar.Interval >= len(tt.bars) || bar.Bar.T < 0 {
					continue
				}
				tt.changed[barKey{bar.Interval, bar.Bar.T}] = bar.Bar
				if bar.New {
					tt.state.bars[bar.Interval]++
				}
			}
			st := tt.state
			st.seq, st.ts, st.acc = r.Seq, r.TS, r.Accepted.UnixNano()
			st.latest = mergeFields(st.latest, r.Fields)
		}
		s.arena = arena[:0]
		for _, tt := range touched {
			if err := s.putBars(tt, &arena); err != nil {
				return err
			}
			if err := s.putMeta(tt.b, tt.state); err != nil {
				return err
			}
			if n := uint64(s.opts.RetentionTicks); n > 0 && tt.state.seq > n {
				cut := tt.state.seq - n + 1 // keep seqs from cut on
				pruned, err := pruneWhile(tt.ticks, func(k, _ []byte) bool { return binary.BigEndian.Uint64(k) < cut })
				if err != nil {
					return err
				}
				if pruned > 0 {
					s.m.pruned.WithLabelValues("count").Add(float64(pruned))
				}
			}
		}
		return nil
	})
}

func (s *Store) openTopic(root *bolt.Bucket, name string) (*txTopic, error) {
	b, err := root.CreateBucketIfNotExists([]byte(name))
	if err != nil {
		return nil, err
	}
	tt := &txTopic{b: b, bars: make([]*bolt.Bucket, len(stream.CandleIntervals)), changed: make(map[barKey]stream.Candle)}
	if tt.ticks, err = b.CreateBucketIfNotExists(bTicks); err != nil {
		return nil, err
	}
	tt.ticks.FillPercent = 1 // appended in key order: fill pages
	for i, iv := range stream.CandleIntervals {
		if tt.bars[i], err = b.CreateBucketIfNotExists([]byte(iv.Name)); err != nil {
			return nil, err
		}
		tt.bars[i].FillPercent = 1
	}
	tt.state = s.topics[name]
	if tt.state == nil {
		tt.state = &topicState{bars: make([]int, len(stream.CandleIntervals))}
		s.topics[name] = tt.state
	}
	return tt, nil
}

// putBars writes the bars the batch changed, then drops the oldest bars
// of each interval past the candle depth, as the bus's rings do.
func (s *Store) putBars(tt *txTopic, arena *[]byte) error {
	for k, bar := range tt.changed {
		v, err := json.Marshal(bar)
		if err != nil {
			return err
		}
		start := len(*arena)
		*arena = be8(*arena, uint64(k.t))
		if err := tt.bars[k.interval].Put((*arena)[start:len(*arena):len(*arena)], v); err != nil {
			return err
		}
	}
	for i, b := range tt.bars {
		n := &tt.state.bars[i]
		if over := *n - s.candleDepth; over > 0 {
			left := over
			d, err := pruneWhile(b, func(_, _ []byte) bool { left--; return left >= 0 })
			if err != nil {
				return err
			}
			*n -= d
		}
	}
	return nil
}

// pruneWhile deletes the first keys of b while keep says so, and returns
// how many it deleted.
func pruneWhile(b *bolt.Bucket, del func(k, v []byte) bool) (int, error) {
	n := 0
	c := b.Cursor()
	for k, v := c.First(); k != nil && del(k, v); k, v = c.First() {
		if err := c.Delete(); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

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

// maintainEvery is how often age and size bounds are enforced.
const maintainEvery = time.Second

// maintain prunes ticks past the retention age, then the oldest ticks of
// every topic while the pages in use pass MaxBytes, and updates the size
// metrics.
func (s *Store) maintain(force bool) {
	now := s.opts.Now()
	if !force && now.Sub(s.lastMaint) < maintainEvery {
		return
	}
	s.lastMaint = now
	if age := s.opts.RetentionAge; age > 0 {
		cut := now.Add(-age).UnixNano()
		if n, err := s.pruneBefore(cut); err != nil {
			s.log.Error("store: pruning by age", "err", err)
		} else if n > 0 {
			s.m.pruned.WithLabelValues("age").Add(float64(n))
		}
	}
	s.updateSize()
	for round := 0; s.opts.MaxBytes > 0 && round < 16; round++ {
		if used, _ := s.Bytes(); used <= s.opts.MaxBytes {
			break
		}
		// Prune the oldest eighth of the time the ticks span, across every
		// topic, until the pages in use fit.
		oldest, ok := s.oldestAccepted()
		if !ok {
			break
		}
		cut := oldest + max(1, (now.UnixNano()-oldest)/8)
		n, err := s.pruneBefore(cut)
		if err != nil {
			s.log.Error("store: pruning by size", "err", err)
			break
		}
		s.m.pruned.WithLabelValues("size").Add(float64(n))
		s.updateSize()
	}
}

func (s *Store) oldestAccepted() (int64, bool) {
	oldest, ok := int64(0), false
	_ = s.db.View(func(tx *bolt.Tx) error {
		root := tx.Bucket(bTopics)
		return root.ForEachBucket(func(name []byte) error {
			tb := root.Bucket(name).Bucket(bTicks)
			if tb == nil {
				return nil
			}
			if k, v := tb.Cursor().First(); k != nil && len(v) >= 8 {
				if acc := int64(binary.BigEndian.Uint64(v)); !ok || acc < oldest {
					oldest, ok = acc, true
				}
			}
			return nil
		})
	})
	return oldest, ok
}

// pruneBefore deletes every tick accepted before cut (Unix ns).
func (s *Store) pruneBefore(cut int64) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		root := tx.Bucket(bTopics)
		return root.ForEachBucket(func(name []byte) error {
			tb := root.Bucket(name).Bucket(bTicks)
			if tb == nil {
				return nil
			}
			d, err := pruneWhile(tb, func(_, v []byte) bool { return len(v) >= 8 && int64(binary.BigEndian.Uint64(v)) < cut })
			n += d
			return err
		})
	})
	return n, err
}

// History implements stream.Store.
func (s *Store) History(topic string, afterSeq uint64, limit int) (uint64, []stream.HistoryTick, error) {
	var oldest uint64
	var out []stream.HistoryTick
	err := s.db.View(func(tx *bolt.Tx) error {
		root := tx.Bucket(bTopics)
		if root == nil {
			return nil
		}
		b := root.Bucket([]byte(topic))
		if b == nil {
			return nil
		}
		tb := b.Bucket(bTicks)
		if tb == nil {
			return nil
		}
		c := tb.Cursor()
		k, _ := c.First()
		if k == nil {
			return nil
		}
		oldest = binary.BigEndian.Uint64(k)
		for k, v := c.Seek(be8(nil, afterSeq+1)); k != nil && len(out) < limit; k, v = c.Next() {
			t, err := decodeTick(binary.BigEndian.Uint64(k), v)
			if err != nil {
				return err
			}
			out = append(out, stream.HistoryTick{Seq: t.Seq, TS: t.TS, Data: t.Fields})
		}
		return nil
	})
	return oldest, out, err
}

// Close commits what is queued, marks the store closed cleanly and closes
// the file. Appends after Close are dropped.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	started := s.started
	s.cond.Broadcast()
	s.mu.Unlock()
	var errs []error
	if started {
		close(s.quit)
		<-s.done
		errs = append(errs, s.db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bMeta).Put(kState, vClean)
		}))
	}
	errs = append(errs, s.db.Close())
	return errors.Join(errs...)
}

var _ stream.Store = (*Store)(nil)
