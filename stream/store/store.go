// Package store is tickstream's embedded store: a stream.Store kept in
// one bbolt file (go.etcd.io/bbolt) under a data directory.
//
// Layout: bucket "meta" holds the epoch and whether the last run closed
// cleanly; bucket "topics" holds one bucket per topic with its state
// ("m", JSON: seq, source time, accept time, latest fields, epoch lineage,
// the open bar of each candle interval), its raw ticks ("t": runs of
// consecutive ticks as a commit writes them, first and last seq → per
// tick its accept time and its JSON form, as tick.AppendJSON writes it,
// so a change of the tick's encoding passes through; a lone tick as seq →
// accept time + JSON; see ticks.go) and its closed candles (one bucket per
// interval: bar start → bar as JSON). The open bar, which every tick
// changes, rides in "m", rewritten by each commit anyway, and moves to its
// bucket when a newer bar opens. So a commit dirties a topic's state and
// ticks pages, not a page of each interval's bucket too, and inserts one
// key per run of ticks, not one per tick. Stores written with the open bar
// in its bucket and one record per tick load the same.
//
// Writes: Append puts the tick on a bounded queue (no I/O on the
// publisher's goroutine); one writer goroutine commits the queue in
// batches, one bbolt transaction each (one fsync of the pages and one of
// the meta page; bbolt's free-page list is not written, Open rebuilds it
// from the tree). The sync policy says when: every Options.SyncInterval
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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

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
	scratch     []byte
	touched     []*topicState // by the commit under way
	lastMaint   time.Time
}

type topicState struct {
	name    string
	seq     uint64
	ts      int64
	acc     int64 // Unix ns
	latest  []tick.Field
	lineage []stream.EpochSeq
	linJSON []byte // lineage as JSON, for putMeta
	// bars counts the distinct bars stored per interval: in its bucket
	// and its open bar.
	bars []int
	// open is the newest bar of each interval (N 0: none). It is stored in
	// the meta record, rewritten by every commit anyway, and goes to its
	// interval's bucket once a newer bar opens: a commit rewrites one
	// record per topic rather than a page of each interval's bucket.
	open []stream.Candle

	// The commit under way (touched set): its buckets, and the last state
	// of each bar it changed that goes to a bucket (a bar is written once
	// per batch however many ticks it took).
	touched bool
	b       *bolt.Bucket
	ticks   *bolt.Bucket
	recs    []int // the batch's records of the topic
	changed map[barKey]stream.Candle
}

func newTopicState(name string) *topicState {
	return &topicState{name: name, bars: make([]int, len(stream.CandleIntervals)), open: make([]stream.Candle, len(stream.CandleIntervals))}
}

// topicMeta is the meta record ("m") of a topic as JSON; putMeta writes
// it by hand, in the same form.
type topicMeta struct {
	Seq     uint64            `json:"seq"`
	TS      int64             `json:"ts"`
	Acc     int64             `json:"acc"`
	Latest  string            `json:"latest"` // tick JSON lines of at most tick.MaxFields fields each
	Lineage []stream.EpochSeq `json:"lineage,omitempty"`
	// Open holds the open (newest) bar of each interval, by name; stores
	// written before it was added hold every bar in its bucket.
	Open map[string]stream.Candle `json:"open,omitempty"`
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
		Timeout:        time.Second,
		FreelistType:   bolt.FreelistMapType,
		NoFreelistSync: true,
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
				lineage := append(state.lineage, stream.EpochSeq{Epoch: old, Seq: state.seq})
				if n := len(lineage); n > maxLineage {
					lineage = lineage[n-maxLineage:]
				}
				if err := state.setLineage(lineage); err != nil {
					return err
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
	state := newTopicState(name)
	var m topicMeta
	if v := b.Get(kMeta); v != nil {
		if err := json.Unmarshal(v, &m); err != nil {
			return nil, err
		}
		latest, err := decodeLatest(m.Latest)
		if err != nil {
			return nil, err
		}
		state.seq, state.ts, state.acc, state.latest = m.Seq, m.TS, m.Acc, latest
		if err := state.setLineage(m.Lineage); err != nil {
			return nil, err
		}
	}
	s.topics[name] = state
	ts := &stream.StoredTopic{Name: name, Seq: state.seq, TS: state.ts, Accepted: time.Unix(0, state.acc),
		Latest: append([]tick.Field(nil), state.latest...), Lineage: state.lineage}
	if tb := b.Bucket(bTicks); tb != nil && historyDepth > 0 {
		var err error
		if ts.Ticks, err = loadTicks(tb, state.seq, historyDepth); err != nil {
			return nil, err
		}
	}
	ts.Candles = make([][]stream.Candle, len(stream.CandleIntervals))
	for i, iv := range stream.CandleIntervals {
		open, hasOpen := m.Open[iv.Name]
		hasOpen = hasOpen && open.N > 0
		var bars []stream.Candle
		if cb := b.Bucket([]byte(iv.Name)); cb != nil {
			state.bars[i] = cb.Stats().KeyN
			c := cb.Cursor()
			for k, v := c.Last(); k != nil && len(bars) < candleDepth; k, v = c.Prev() {
				var bar stream.Candle
				if err := json.Unmarshal(v, &bar); err != nil {
					return nil, err
				}
				if hasOpen && bar.T == open.T {
					state.bars[i]-- // counted as the open bar below
					continue
				}
				bars = append(bars, bar)
			}
		}
		for l, r := 0, len(bars)-1; l < r; l, r = l+1, r-1 {
			bars[l], bars[r] = bars[r], bars[l]
		}
		switch {
		case hasOpen:
			state.open[i] = open
			state.bars[i]++
			bars = append(bars, open)
		case len(bars) > 0:
			// Written before open bars were kept apart: the newest bar
			// is in the bucket (and counted); it is the open one.
			state.open[i] = bars[len(bars)-1]
		}
		if n := len(bars); n > candleDepth {
			bars = bars[n-candleDepth:]
		}
		ts.Candles[i] = bars
	}
	return ts, nil
}

func (st *topicState) setLineage(l []stream.EpochSeq) error {
	st.lineage, st.linJSON = l, nil
	if len(l) == 0 {
		return nil
	}
	v, err := json.Marshal(l)
	st.linJSON = v
	return err
}

// placeholderTopic stands for the topic in stored ticks: the bucket
// names it, so each tick does not repeat it.
const placeholderTopic = "."

func appendLatest(b []byte, fields []tick.Field) []byte {
	for len(fields) > 0 {
		n := min(len(fields), tick.MaxFields)
		b = tick.Tick{Topic: placeholderTopic, Fields: fields[:n]}.AppendJSON(b)
		b = append(b, '\n')
		fields = fields[n:]
	}
	return b
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

// putMeta writes st's meta record. Its value is in s.arena, which the
// caller keeps until the commit.
func (s *Store) putMeta(b *bolt.Bucket, st *topicState) error {
	s.scratch = appendLatest(s.scratch[:0], st.latest)
	start := len(s.arena)
	s.arena = appendMeta(s.arena, st, s.scratch)
	return b.Put(kMeta, s.arena[start:len(s.arena):len(s.arena)])
}

// appendMeta appends st's meta record as json.Marshal writes its
// topicMeta, latest being its latest fields as appendLatest writes them.
func appendMeta(b []byte, st *topicState, latest []byte) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, st.seq, 10)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, st.ts, 10)
	b = append(b, `,"acc":`...)
	b = strconv.AppendInt(b, st.acc, 10)
	b = append(b, `,"latest":`...)
	b = appendJSONString(b, latest)
	if len(st.linJSON) > 0 {
		b = append(b, `,"lineage":`...)
		b = append(b, st.linJSON...)
	}
	sep := byte('{')
	for i, bar := range st.open {
		if bar.N <= 0 {
			continue
		}
		if sep == '{' {
			b = append(b, `,"open":`...)
		}
		b = append(b, sep, '"')
		b = append(b, stream.CandleIntervals[i].Name...) // no character to escape
		b = append(b, '"', ':')
		b = appendBar(b, bar)
		sep = ','
	}
	if sep == ',' {
		b = append(b, '}')
	}
	return append(b, '}')
}

// appendBar appends bar as json.Marshal writes it.
func appendBar(b []byte, bar stream.Candle) []byte {
	b = append(b, `{"t":`...)
	b = strconv.AppendInt(b, bar.T, 10)
	b = append(b, `,"o":`...)
	b = bar.O.Append(b)
	b = append(b, `,"h":`...)
	b = bar.H.Append(b)
	b = append(b, `,"l":`...)
	b = bar.L.Append(b)
	b = append(b, `,"c":`...)
	b = bar.C.Append(b)
	b = append(b, `,"v":`...)
	b = bar.V.Append(b)
	b = append(b, `,"n":`...)
	b = strconv.AppendInt(b, bar.N, 10)
	return append(b, '}')
}

// appendJSONString appends s as a JSON string, escaped as json.Marshal
// does (HTML characters included; invalid UTF-8 becomes U+FFFD).
func appendJSONString(b, s []byte) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
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

// maxIntervals bounds stream.CandleIntervals.
const maxIntervals = len(stream.StoreRecord{}.Bars)

type barKey struct {
	interval int
	t        int64
}

func (s *Store) commit(batch []stream.StoreRecord) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		root := tx.Bucket(bTopics)
		s.arena = s.arena[:0]
		var st *topicState
		for i := range batch {
			r := &batch[i]
			if st == nil || st.name != r.Topic {
				var err error
				if st, err = s.openTopic(root, r.Topic); err != nil {
					return err
				}
			}
			st.recs = append(st.recs, i)
			for _, bar := range r.Bars[:r.NBars] {
				if bar.Interval < 0 || bar.Interval >= len(st.open) || bar.Bar.T < 0 {
					continue
				}
				if bar.New {
					st.bars[bar.Interval]++
				}
				st.foldBar(bar.Interval, bar.Bar)
			}
			st.seq, st.ts, st.acc = r.Seq, r.TS, r.Accepted.UnixNano()
			st.latest = mergeFields(st.latest, r.Fields)
		}
		for _, st := range s.touched {
			if err := s.putTicks(st, batch); err != nil {
				return err
			}
			if err := s.putBars(st); err != nil {
				return err
			}
			if err := s.putMeta(st.b, st); err != nil {
				return err
			}
			if n := uint64(s.opts.RetentionTicks); n > 0 && st.seq > n {
				cut := st.seq - n + 1 // keep seqs from cut on
				pruned, err := pruneTicks(st.ticks, func(seq uint64, _ int64) bool { return seq < cut })
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
	for _, st := range s.touched {
		st.touched, st.b, st.ticks, st.recs = false, nil, nil, st.recs[:0]
		if err == nil {
			// Kept on failure: the next commit of the topic writes them.
			clear(st.changed)
		}
	}
	clear(s.touched)
	s.touched = s.touched[:0]
	return err
}

// openTopic returns the state of topic name in the commit under way, its
// buckets looked up (created if missing) the first time.
func (s *Store) openTopic(root *bolt.Bucket, name string) (*topicState, error) {
	st := s.topics[name]
	if st != nil && st.touched {
		return st, nil
	}
	if st == nil {
		st = newTopicState(name)
		s.topics[name] = st
	}
	var err error
	if st.b, err = bucket(root, []byte(name)); err != nil {
		return nil, err
	}
	if st.ticks, err = bucket(st.b, bTicks); err != nil {
		return nil, err
	}
	st.ticks.FillPercent = 1 // appended in key order: fill pages
	if st.changed == nil {
		st.changed = make(map[barKey]stream.Candle)
	}
	st.touched = true
	s.touched = append(s.touched, st)
	return st, nil
}

// bucket returns parent's bucket name, created if missing (a lookup
// costs less than CreateBucketIfNotExists).
func bucket(parent *bolt.Bucket, name []byte) (*bolt.Bucket, error) {
	if b := parent.Bucket(name); b != nil {
		return b, nil
	}
	return parent.CreateBucket(name)
}

// foldBar takes the state of bar i after a tick: the open bar of its
// interval, or an older one (a late tick) to write to the bucket. An open
// bar a newer one closes goes to the bucket.
func (st *topicState) foldBar(i int, bar stream.Candle) {
	o := &st.open[i]
	switch {
	case o.N <= 0 || bar.T == o.T:
		*o = bar
	case bar.T > o.T:
		st.changed[barKey{i, o.T}] = *o
		*o = bar
	default:
		st.changed[barKey{i, bar.T}] = bar
	}
}

// putBars writes the bars the batch closed or changed to their buckets,
// then drops the oldest bars of each interval past the candle depth, as
// the bus's rings do (the open bar is never dropped).
func (s *Store) putBars(st *topicState) error {
	var bs [maxIntervals]*bolt.Bucket
	intervalBucket := func(i int, create bool) (*bolt.Bucket, error) {
		if bs[i] != nil {
			return bs[i], nil
		}
		name := []byte(stream.CandleIntervals[i].Name)
		if create {
			b, err := bucket(st.b, name)
			if err != nil {
				return nil, err
			}
			bs[i] = b
		} else {
			bs[i] = st.b.Bucket(name)
		}
		if bs[i] != nil {
			bs[i].FillPercent = 1
		}
		return bs[i], nil
	}
	for k, bar := range st.changed {
		b, err := intervalBucket(k.interval, true)
		if err != nil {
			return err
		}
		start := len(s.arena)
		s.arena = be8(s.arena, uint64(k.t))
		key := s.arena[start:len(s.arena):len(s.arena)]
		start = len(s.arena)
		s.arena = appendBar(s.arena, bar)
		if err := b.Put(key, s.arena[start:len(s.arena):len(s.arena)]); err != nil {
			return err
		}
	}
	for i := range st.bars {
		n := &st.bars[i]
		over := *n - s.candleDepth
		if over <= 0 {
			continue
		}
		b, err := intervalBucket(i, false)
		if err != nil || b == nil {
			continue
		}
		open := st.open[i]
		d, err := pruneWhile(b, func(k, _ []byte) bool {
			over--
			return over >= 0 && (open.N <= 0 || int64(binary.BigEndian.Uint64(k)) < open.T)
		})
		if err != nil {
			return err
		}
		*n -= d
	}
	return nil
}

// pruneWhile deletes the first keys of b while del says so, and returns
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
		// A write transaction costs two fsyncs even when it changes
		// nothing: look first.
		if oldest, ok := s.oldestAccepted(); ok && oldest < cut {
			if n, err := s.pruneBefore(cut); err != nil {
				s.log.Error("store: pruning by age", "err", err)
			} else if n > 0 {
				s.m.pruned.WithLabelValues("age").Add(float64(n))
			}
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
			d, err := pruneTicks(tb, func(_ uint64, acc int64) bool { return acc < cut })
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
		var err error
		oldest, out, err = readTicks(tb, afterSeq, limit)
		return err
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
