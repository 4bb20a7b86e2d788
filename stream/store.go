package stream

import (
	"time"

	"github.com/tickstream/tickstream/feeds/tick"
)

// Store keeps what a bus must find again after a restart: its epoch and,
// per topic, the seq, the latest fields, the raw ticks and the candle
// bars. The bus loads it once in NewBus and then appends every accepted
// tick; stream/store is the embedded (bbolt) implementation. A nil Store
// (BusConfig.Store) means memory only.
//
// Sequencing stays with the bus (see Sequencer): the store only records
// the (epoch, seq) the bus assigned, in order per topic.
type Store interface {
	// Load returns the stored state. newEpoch is the epoch to keep when
	// the store has none (a new store); a store that was not closed
	// cleanly also starts newEpoch, naming in each topic's Lineage the
	// last seq of the old epoch that it kept (see StoredTopic.Lineage).
	Load(newEpoch string, historyDepth, candleDepth int) (*StoreState, error)
	// Append queues one accepted tick. The bus calls it under the topic's
	// lock, in seq order per topic, so it must not wait for the disk; it
	// waits only while its bounded queue is full (back-pressure). It
	// returns a ticket for Settle. rec is copied.
	Append(rec *StoreRecord) uint64
	// Settle returns once the append with ticket is as durable as the
	// store's sync policy promises before a publish returns (at once for
	// a policy that syncs in the background). The bus calls it after
	// releasing the topic's lock.
	Settle(ticket uint64)
	// History returns up to limit stored ticks of topic after afterSeq,
	// oldest first, and the oldest seq stored (0 when none). Ticks still
	// queued are not included.
	History(topic string, afterSeq uint64, limit int) (oldest uint64, ticks []HistoryTick, err error)
}

// StoreState is what a Store holds at start.
type StoreState struct {
	Epoch  string
	Topics []StoredTopic
}

// StoredTopic is one topic's stored state.
type StoredTopic struct {
	Name     string
	Seq      uint64
	TS       int64
	Accepted time.Time
	Latest   []tick.Field
	// Ticks are the newest ticks (at most the history depth), oldest
	// first, with consecutive seqs ending at Seq.
	Ticks []StoredTick
	// Candles are the newest bars of each of CandleIntervals, oldest
	// first (at most the candle depth each).
	Candles [][]Candle
	// Lineage lists earlier epochs of this topic's history: a cursor of
	// such an epoch whose seq is at most its Seq names a tick that is
	// still this topic's tick of that seq, so it resumes in the current
	// epoch (the seqs went on). Past it, the ticks were lost in a crash.
	Lineage []EpochSeq
}

// EpochSeq is a position in an earlier epoch.
type EpochSeq struct {
	Epoch string `json:"epoch"`
	Seq   uint64 `json:"seq"`
}

// StoredTick is one stored raw tick.
type StoredTick struct {
	Seq      uint64
	TS       int64
	Accepted time.Time
	Fields   []tick.Field
}

// StoreRecord is one accepted tick as the bus appends it: its place, its
// fields (shared with the bus's history: never modified) and the candle
// bars it changed.
type StoreRecord struct {
	Topic    string
	Seq      uint64
	TS       int64
	Accepted time.Time
	Fields   []tick.Field
	// Bars are the bars this tick changed, NBars of them: their state
	// after the tick.
	Bars  [maxCandleIntervals]StoreBar
	NBars int
}

// StoreBar is one candle bar after a tick changed it. New means the tick
// opened it (the ring then dropped its oldest bar if full).
type StoreBar struct {
	Interval int // index in CandleIntervals
	New      bool
	Bar      Candle
}

// maxCandleIntervals bounds CandleIntervals, so that a StoreRecord needs
// no allocation.
const maxCandleIntervals = 4

// Sequencer places accepted ticks in their topics' sequences. The bus's
// own (LocalSequencer, used when BusConfig.Sequencer is nil) numbers a
// topic's ticks 1, 2, 3… in the order Publish accepts them, under the
// topic's lock, and its epoch is the store's (kept across restarts) or a
// random one. A cluster sequencer would take the epoch from shared state
// and order ticks outside the process.
type Sequencer interface {
	// Epoch is the epoch of every seq this sequencer assigns.
	Epoch() string
	// Next returns the seq of topic's next tick, given its last one. The
	// bus calls it under the topic's lock; the result must be last+1.
	Next(topic string, last uint64) uint64
}

// LocalSequencer is the in-process Sequencer.
type LocalSequencer struct{ epoch string }

// NewLocalSequencer returns a sequencer of epoch.
func NewLocalSequencer(epoch string) *LocalSequencer { return &LocalSequencer{epoch: epoch} }

// Epoch implements Sequencer.
func (s *LocalSequencer) Epoch() string { return s.epoch }

// Next implements Sequencer.
func (s *LocalSequencer) Next(_ string, last uint64) uint64 { return last + 1 }
