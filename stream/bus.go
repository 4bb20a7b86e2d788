package stream

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream/protocol"
)

// BusConfig configures a Bus. Every zero value means the documented default.
type BusConfig struct {
	// HistoryDepth is how many raw ticks each topic keeps for resume and
	// /api/history. Zero value means 1000.
	HistoryDepth int
	// CandleDepth is how many bars each topic keeps per candle interval.
	// Zero value means 500.
	CandleDepth int
	// MaxTopics bounds the number of topics; publishing a new topic past
	// it is refused. Zero value means 100000.
	MaxTopics int
	// DefaultThrottle is the throttle of a subscribe without throttle_ms.
	// Zero value means 100 ms; a negative value means 0 (every tick).
	DefaultThrottle time.Duration
	// MaxThrottle is the largest throttle_ms a client may ask for. Zero
	// value means 60 s.
	MaxThrottle time.Duration
	// MaxTopicsPerSubscriber bounds what one connection holds: every topic
	// delivered (named or through a pattern), every named topic waiting
	// for its first tick, and every pattern. Zero value means 1000.
	MaxTopicsPerSubscriber int
	// MaxPendingBytes is the outbound queue size past which a subscriber
	// steps down; four times it closes the subscriber. The queue and the
	// batch being written count each message's encoded bytes plus a fixed
	// overhead for its slots (see Subscriber.PendingBytes). One MiB holds
	// several seconds of a busy dashboard, so a client that is only
	// briefly slow is never stepped down. Zero value means 1 MiB.
	MaxPendingBytes int
	// LagThrottle is a stepped-down subscriber's effective throttle.
	// Zero value means 2 s.
	LagThrottle time.Duration
	// Heartbeat is the interval of transport keep-alives. Zero value
	// means 15 s.
	Heartbeat time.Duration
	// Epoch names this run's history. Zero value means a random string.
	// With a Store, the store's epoch wins (this one names a new store's
	// history), so a restart keeps it.
	Epoch string
	// Store keeps history, candles, seqs and the epoch across restarts
	// (see Store). NewBus loads it; the caller closes it after Close.
	// Zero value means memory only: a restart starts a new epoch.
	Store Store
	// Forward, if set, makes the bus one node of a cluster: Publish
	// hands each validated tick to it instead of folding it, and the
	// cluster folds every node's ticks through Apply (see Forwarder).
	// Epoch must then be the cluster's. Zero value means in-process
	// sequencing (Sequencer).
	Forward Forwarder
	// Now is the clock. Zero value means time.Now.
	Now func() time.Time
	// Metrics receives the bus's metrics. Zero value means unregistered
	// metrics.
	Metrics *Metrics
	// Logger logs bus events. Zero value means slog.Default().
	Logger *slog.Logger
	// MaxFutureSkew is how far into the future (by the bus's clock) a
	// tick's ts may be. Zero value means no limit, for embedding and tests
	// with fixed timestamps; the tickstream command's setting
	// max_future_skew_ms defaults to 5 s.
	MaxFutureSkew time.Duration
	// MaxTickAge is how far into the past a tick's ts may be. Zero value
	// means no limit; the setting max_tick_age_ms defaults to 24 h.
	MaxTickAge time.Duration
	// TSPolicy says what happens to a tick whose ts is out of those
	// bounds: TSRefuse (the zero value) refuses it with a *tick.Error
	// wrapping tick.ErrOverLimit that gives the reason; TSStamp accepts
	// it with ts replaced by the time the bus accepts it.
	TSPolicy TSPolicy
	// MaxTopicsPerFeed bounds the topics one feed (one Sink name) may
	// create, so that one publisher cannot fill MaxTopics and starve the
	// others. Zero value means MaxTopics (no bound of its own).
	MaxTopicsPerFeed int
	// TopicIdleEvict is how long a topic with no subscriber and no tick
	// stays before it is evicted (its history and candles are dropped;
	// pending interests in its name survive, and a tick brings it back
	// with the seq after its last). Zero value means 24 h; negative means
	// never.
	TopicIdleEvict time.Duration
	// FlusherIdle is how long a throttle interval's flusher goroutine runs
	// with nothing to flush before it ends (it also lasts at least two
	// intervals). Zero value means 5 s.
	FlusherIdle time.Duration
}

// TSPolicy is what the bus does with a tick whose ts is too far from now.
type TSPolicy string

// The ts policies.
const (
	TSRefuse TSPolicy = "refuse" // refuse the tick (the default)
	TSStamp  TSPolicy = "stamp"  // replace its ts with the accept time
)

func (c *BusConfig) setDefaults() error {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.HistoryDepth, 1000)
	def(&c.CandleDepth, 500)
	def(&c.MaxTopics, 100_000)
	def(&c.MaxTopicsPerFeed, c.MaxTopics)
	def(&c.MaxTopicsPerSubscriber, 1000)
	def(&c.MaxPendingBytes, 1<<20)
	defDur(&c.DefaultThrottle, 100*time.Millisecond)
	if c.DefaultThrottle < 0 {
		c.DefaultThrottle = 0
	}
	defDur(&c.MaxThrottle, time.Minute)
	defDur(&c.LagThrottle, 2*time.Second)
	defDur(&c.Heartbeat, 15*time.Second)
	defDur(&c.FlusherIdle, 5*time.Second)
	if c.TSPolicy == "" {
		c.TSPolicy = TSRefuse
	}
	if c.TSPolicy != TSRefuse && c.TSPolicy != TSStamp {
		return fmt.Errorf("stream: TSPolicy %q: want %q or %q", c.TSPolicy, TSRefuse, TSStamp)
	}
	defDur(&c.TopicIdleEvict, 24*time.Hour)
	if c.Epoch == "" {
		c.Epoch = NewID(8)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics(nil)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	switch {
	case c.HistoryDepth < 0:
		return fmt.Errorf("stream: HistoryDepth %d is negative", c.HistoryDepth)
	case c.CandleDepth < 0:
		return fmt.Errorf("stream: CandleDepth %d is negative", c.CandleDepth)
	case c.MaxPendingBytes < 1024:
		return fmt.Errorf("stream: MaxPendingBytes %d is under 1024", c.MaxPendingBytes)
	case c.DefaultThrottle < 0 || c.DefaultThrottle > c.MaxThrottle:
		return fmt.Errorf("stream: DefaultThrottle %v is outside 0..%v", c.DefaultThrottle, c.MaxThrottle)
	case c.MaxFutureSkew < 0 || c.MaxTickAge < 0:
		return errors.New("stream: MaxFutureSkew and MaxTickAge must not be negative")
	case c.LagThrottle < 0 || c.Heartbeat < 0:
		return errors.New("stream: LagThrottle and Heartbeat must not be negative")
	}
	for _, r := range c.Epoch {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("stream: Epoch %q: want [A-Za-z0-9_-]", c.Epoch)
		}
	}
	return nil
}

// NewID returns a random id of n bytes as lower-case base32.
func NewID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

// Bus is the in-process topic bus. See the package documentation.
type Bus struct {
	cfg     BusConfig
	metrics *Metrics
	seqr    Sequencer

	// mu guards the maps below. It is held only for lookups, updates and
	// copies, never across a scan of the topics or a join, so a publish
	// never waits for a subscribe.
	mu     sync.RWMutex
	topics map[string]*topic
	// all is every topic in order of creation; it only grows, so a
	// subscribe copies its header under mu and scans the copy outside.
	all []*topic
	// patterns and byPrefix are the pattern subscriptions, by subscriber
	// and by prefix (a new topic looks up each prefix of its name).
	patterns map[*Subscriber]map[string]time.Duration
	byPrefix map[string]map[*Subscriber]time.Duration
	// pending is the interest in topics that have no tick yet: named
	// subscriptions that join the topic when it is created. It is bounded
	// by the per-connection limit and is not a topic.
	pending map[string]map[*Subscriber]*joinReq
	subs    map[*Subscriber]struct{}
	closed  bool
	// created counts the topics ever created: a topic's idx is its number.
	created uint64
	// perFeed is how many live topics each feed created (MaxTopicsPerFeed).
	perFeed map[string]int
	// tombs keeps the last seq of evicted topics (at most MaxTopics, the
	// oldest dropped first), so that a topic that comes back continues
	// its seq and no cursor of it is ever answered with other ticks.
	tombs     map[string]uint64
	tombOrder []string
	// onEvict are called, outside mu, with the name of each evicted topic.
	onEvict   []func(name string)
	evictQuit chan struct{}

	// testHookJoin, if set (by tests, before use), is called at the start
	// of every join, with the topic's lock held.
	testHookJoin func(topic string, s *Subscriber)
	// testHookScanned, if set, is called by a pattern subscribe between
	// its scan of the topics and its registration with the bus.
	testHookScanned func(s *Subscriber)
	// testHookAcked, if set, is called by a subscribe after its ack is
	// queued, before its pending names are registered.
	testHookAcked func(s *Subscriber)

	flMu      sync.Mutex
	flushers  map[time.Duration]*flusher // by interval, but 0
	instant   []atomic.Pointer[flusher]  // the instant flushers (interval 0), by shard; started on first use
	nextShard atomic.Uint32              // round-robin shard of the next topic
	flClosed  bool
	wg        sync.WaitGroup
}

// NewBus returns a running bus.
func NewBus(cfg BusConfig) (*Bus, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	b := &Bus{
		cfg:      cfg,
		metrics:  cfg.Metrics,
		topics:   make(map[string]*topic),
		patterns: make(map[*Subscriber]map[string]time.Duration),
		byPrefix: make(map[string]map[*Subscriber]time.Duration),
		pending:  make(map[string]map[*Subscriber]*joinReq),
		subs:     make(map[*Subscriber]struct{}),
		flushers: make(map[time.Duration]*flusher),
		perFeed:  make(map[string]int),
		tombs:    make(map[string]uint64),
		instant:  make([]atomic.Pointer[flusher], max(1, runtime.GOMAXPROCS(0))),
	}
	pending := b.pendingBytes
	b.metrics.pending.Store(&pending)
	if cfg.Store != nil {
		if err := b.restore(); err != nil {
			return nil, err
		}
	}
	b.seqr = NewLocalSequencer(b.cfg.Epoch)
	if cfg.TopicIdleEvict > 0 {
		b.evictQuit = make(chan struct{})
		b.wg.Add(1)
		go b.evictLoop(b.evictQuit)
	}
	return b, nil
}

// restore loads the store: its epoch becomes the bus's, and each stored
// topic comes back with its seq, latest fields, history ring and candles.
func (b *Bus) restore() error {
	st, err := b.cfg.Store.Load(b.cfg.Epoch, b.cfg.HistoryDepth, b.cfg.CandleDepth)
	if err != nil {
		return fmt.Errorf("stream: loading the store: %w", err)
	}
	b.cfg.Epoch = st.Epoch
	for i := range st.Topics {
		s := &st.Topics[i]
		if b.topics[s.Name] != nil || !tick.ValidTopic(s.Name) {
			continue
		}
		t := newTopic(b, s.Name)
		t.seq, t.ts, t.accepted, t.latest, t.lineage = s.Seq, s.TS, s.Accepted, s.Latest, s.Lineage
		ticks := s.Ticks
		if n := len(ticks); n > b.cfg.HistoryDepth {
			ticks = ticks[n-b.cfg.HistoryDepth:]
		}
		if n := len(ticks); n > 0 && ticks[n-1].Seq != s.Seq {
			ticks = nil // not the newest: not a ring the bus can serve
		}
		t.hist = make([]histEntry, 0, len(ticks))
		for _, k := range ticks {
			t.hist = append(t.hist, histEntry{seq: k.Seq, ts: k.TS, fields: k.Fields, accepted: k.Accepted})
		}
		for iv := range t.candles {
			if iv < len(s.Candles) {
				bars := s.Candles[iv]
				if n := len(bars); n > b.cfg.CandleDepth {
					bars = bars[n-b.cfg.CandleDepth:]
				}
				t.candles[iv].bars = append([]Candle(nil), bars...)
			}
		}
		b.topics[s.Name] = t
		b.all = append(b.all, t)
		b.metrics.topics.Add(1)
	}
	return nil
}

// Epoch is the bus's epoch.
func (b *Bus) Epoch() string { return b.cfg.Epoch }

// Config returns the bus configuration with defaults filled in.
func (b *Bus) Config() BusConfig { return b.cfg }

// Metrics returns the bus metrics.
func (b *Bus) Metrics() *Metrics { return b.metrics }

// Publish validates and accepts one tick from feed. It returns the tick's
// seq, or a *tick.Error, ErrTooManyTopic or ErrClosed.
func (b *Bus) Publish(feed string, tk tick.Tick) (uint64, error) {
	return b.publish(feed, tk, b.metrics.ticksIn.WithLabelValues(feed), b.metrics.ticksRefused.WithLabelValues(feed))
}

func (b *Bus) publish(feed string, tk tick.Tick, in, refused prometheus.Counter) (uint64, error) {
	if err := tk.Validate(); err != nil {
		refused.Inc()
		return 0, err
	}
	now := b.cfg.Now()
	if err := b.checkTS(&tk, now.UnixMilli()); err != nil {
		refused.Inc()
		return 0, err
	}
	if b.cfg.Forward != nil {
		return b.forward(&tk, now, in, refused)
	}
	for {
		t, err := b.topicFor(feed, tk.Topic)
		if err != nil {
			refused.Inc()
			return 0, err
		}
		if seq, ok := t.publish(&tk, now); ok {
			in.Inc()
			return seq, nil
		}
		// t was evicted between the lookup and the tick: look again.
	}
}

// checkTS applies the ts policy: a zero ts is now; a ts more than
// MaxFutureSkew ahead of now or MaxTickAge behind it is refused or
// stamped with now (TSPolicy).
func (b *Bus) checkTS(tk *tick.Tick, now int64) error {
	if tk.TS == 0 {
		tk.TS = now
		return nil
	}
	var why string
	switch skew, age := b.cfg.MaxFutureSkew, b.cfg.MaxTickAge; {
	case skew > 0 && tk.TS > now+skew.Milliseconds():
		why = fmt.Sprintf("ts %d is %d ms in the future, at most %d (max_future_skew_ms)", tk.TS, tk.TS-now, skew.Milliseconds())
	case age > 0 && tk.TS < now-age.Milliseconds():
		why = fmt.Sprintf("ts %d is %d ms old, at most %d (max_tick_age_ms)", tk.TS, now-tk.TS, age.Milliseconds())
	default:
		return nil
	}
	if b.cfg.TSPolicy == TSStamp {
		tk.TS = now
		return nil
	}
	return &tick.Error{Err: tick.ErrOverLimit, Detail: why}
}

// Sink returns the sink a feed publishes into (it satisfies feeds.Sink).
func (b *Bus) Sink(feed string) *FeedSink {
	return &FeedSink{bus: b, feed: feed, in: b.metrics.ticksIn.WithLabelValues(feed), refused: b.metrics.ticksRefused.WithLabelValues(feed)}
}

// FeedSink publishes one feed's ticks, counted under its name.
type FeedSink struct {
	bus         *Bus
	feed        string
	in, refused prometheus.Counter
}

// Publish validates and accepts t; see Bus.Publish.
func (s *FeedSink) Publish(t tick.Tick) error {
	_, err := s.bus.publish(s.feed, t, s.in, s.refused)
	return err
}

// PublishSeq is Publish that also returns the tick's seq (for publish
// acks).
func (s *FeedSink) PublishSeq(t tick.Tick) (uint64, error) {
	return s.bus.publish(s.feed, t, s.in, s.refused)
}

func (b *Bus) lookup(name string) *topic {
	b.mu.RLock()
	t := b.topics[name]
	b.mu.RUnlock()
	return t
}

// topicFor finds or creates a topic, created for feed and counted against
// its quota ("" for ticks the cluster sequenced: the node that accepted
// them counted them). A new topic is joined by every pattern subscription
// it matches and every subscription that named it before its first tick:
// that tick waits for those joins (they hold the topic's lock), but Bus.mu
// is released before them.
func (b *Bus) topicFor(feed, name string) (*topic, error) {
	if t := b.lookup(name); t != nil {
		return t, nil
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, ErrClosed
	}
	if t := b.topics[name]; t != nil {
		b.mu.Unlock()
		return t, nil
	}
	if len(b.topics) >= b.cfg.MaxTopics {
		n := len(b.topics)
		b.mu.Unlock()
		b.metrics.Limited("max_topics")
		return nil, &tick.Error{Err: ErrTooManyTopic, Detail: fmt.Sprintf("%d topics already, at most %d", n, b.cfg.MaxTopics)}
	}
	if n := b.perFeed[feed]; feed != "" && n >= b.cfg.MaxTopicsPerFeed {
		b.mu.Unlock()
		b.metrics.Limited("topic_quota")
		return nil, &tick.Error{Err: ErrTopicQuota, Detail: fmt.Sprintf("feed %s created %d topics already, at most %d per publisher", feed, n, b.cfg.MaxTopicsPerFeed)}
	}
	t := newTopic(b, name)
	t.feed = feed
	b.perFeed[feed]++
	if seq, ok := b.tombs[name]; ok {
		t.seq = seq // continue where the evicted topic stopped
		delete(b.tombs, name)
	}
	b.addLocked(t)
	joins := b.interestLocked(name)
	if len(joins) == 0 {
		b.mu.Unlock()
		return t, nil
	}
	// Nobody can reach t before b.mu is released: lock it first, so that
	// its first tick waits for the joins.
	t.mu.Lock()
	b.mu.Unlock()
	for _, j := range joins {
		j.sub.joinCreated(t, j)
	}
	t.mu.Unlock()
	return t, nil
}

// newJoin is a subscriber that asked for a topic before it existed.
type newJoin struct {
	sub      *Subscriber
	req      *joinReq // the pending named subscription, or nil
	prefix   string   // else the pattern that matched
	interval time.Duration
}

// interestLocked takes the pending subscriptions of a new topic and copies
// the pattern subscriptions that match it, one per subscriber. Called with
// b.mu held; its cost is the length of the name plus the subscribers
// found, not the number of patterns.
func (b *Bus) interestLocked(name string) []newJoin {
	var out []newJoin
	for s, req := range b.pending[name] {
		out = append(out, newJoin{sub: s, req: req, interval: req.interval})
	}
	delete(b.pending, name)
	if len(b.byPrefix) == 0 {
		return out
	}
	var seen map[*Subscriber]bool
	for i := 0; i <= len(name); i++ {
		for s, interval := range b.byPrefix[name[:i]] {
			if seen == nil {
				seen = make(map[*Subscriber]bool, len(out)+1)
				for _, j := range out {
					seen[j.sub] = true
				}
			}
			if !seen[s] {
				seen[s] = true
				out = append(out, newJoin{sub: s, prefix: name[:i], interval: interval})
			}
		}
	}
	return out
}

// addLocked makes t a live topic, numbered after every topic so far.
// Called with b.mu held.
func (b *Bus) addLocked(t *topic) {
	t.idx = b.created
	b.created++
	b.topics[t.name] = t
	b.all = append(b.all, t)
	b.metrics.topics.Add(1)
}

// topicList is every live topic, in order of creation. The slice is
// shared: do not modify it.
func (b *Bus) topicList() []*topic {
	all, _ := b.topicListGen()
	return all
}

// topicListGen is topicList and the number of the next topic to be
// created (or revived), for register.
func (b *Bus) topicListGen() ([]*topic, uint64) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.all[:len(b.all):len(b.all)], b.created
}

// register records s's patterns and named topics that have no tick yet,
// so that topics created from now on join s at creation. It returns the
// topics created (or revived) since gen, from topicListGen (those a
// subscribe's scan did not see and no creation joined) and the pending requests whose
// topic was created in the meantime (to join now). Cursors for topics that
// stay pending are answered here, under b.mu, so that the reset goes out
// before any update of the topic.
func (b *Bus) register(s *Subscriber, gen uint64, patterns []string, interval time.Duration, pending []*joinReq, resume map[string]protocol.Cursor, named map[string]bool) (tail []*topic, late []*joinReq) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, open := b.subs[s]; !open { // released: it must not join new topics
		return nil, nil
	}
	if len(patterns) > 0 {
		ps := b.patterns[s]
		if ps == nil {
			ps = make(map[string]time.Duration)
			b.patterns[s] = ps
		}
		for _, p := range patterns {
			ps[p] = interval
			bp := b.byPrefix[p]
			if bp == nil {
				bp = make(map[*Subscriber]time.Duration)
				b.byPrefix[p] = bp
			}
			bp[s] = interval
		}
	}
	for _, req := range pending {
		if t := b.topics[req.name]; t != nil {
			req.t = t
			late = append(late, req)
			continue
		}
		m := b.pending[req.name]
		if m == nil {
			m = make(map[*Subscriber]*joinReq)
			b.pending[req.name] = m
		}
		m[s] = req
		if req.cur != nil {
			s.pushStaleCursor(req.name, *req.cur)
		}
	}
	if len(patterns) > 0 && len(resume) > 0 {
		names := make([]string, 0, len(resume))
		for name := range resume {
			if !named[name] && b.topics[name] == nil && matchesAny(name, patterns) {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		for _, name := range names {
			s.pushStaleCursor(name, resume[name])
		}
	}
	// Evictions since the scan shift positions in b.all: the tail is
	// found by number (b.all is in order of number).
	n := sort.Search(len(b.all), func(i int) bool { return b.all[i].idx >= gen })
	return b.all[n:len(b.all):len(b.all)], late
}

// unregisterPending forgets a pending request.
func (b *Bus) unregisterPending(s *Subscriber, req *joinReq) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.unregisterPendingLocked(s, req)
}

func (b *Bus) unregisterPendingLocked(s *Subscriber, req *joinReq) {
	if m := b.pending[req.name]; m[s] == req {
		delete(m, s)
		if len(m) == 0 {
			delete(b.pending, req.name)
		}
	}
}

// unregisterPattern forgets a pattern subscription.
func (b *Bus) unregisterPattern(s *Subscriber, prefix string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.unregisterPatternLocked(s, prefix)
	if len(b.patterns[s]) == 0 {
		delete(b.patterns, s)
	}
}

func (b *Bus) unregisterPatternLocked(s *Subscriber, prefix string) {
	delete(b.patterns[s], prefix)
	if bp := b.byPrefix[prefix]; bp != nil {
		delete(bp, s)
		if len(bp) == 0 {
			delete(b.byPrefix, prefix)
		}
	}
}

// NewSubscriber registers a subscriber for one connection of transport
// ("ws", "sse"). The caller must Close it.
func (b *Bus) NewSubscriber(transport string) (*Subscriber, error) {
	s := &Subscriber{
		bus:       b,
		session:   NewID(16),
		transport: transport,
		sentMsgs:  b.metrics.sentMsgs.WithLabelValues(transport),
		sentBytes: b.metrics.sentBytes.WithLabelValues(transport),
		ready:     make(chan struct{}, 1),
		done:      make(chan struct{}),
		members:   make(map[string]*membership),
		patterns:  make(map[string]time.Duration),
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	b.subs[s] = struct{}{}
	b.metrics.conns.WithLabelValues(transport).Inc()
	return s, nil
}

// release drops every subscription of a closed subscriber.
func (b *Bus) release(s *Subscriber) {
	b.mu.Lock()
	_, ok := b.subs[s]
	delete(b.subs, s)
	for p := range b.patterns[s] {
		b.unregisterPatternLocked(s, p)
	}
	delete(b.patterns, s)
	b.mu.Unlock()
	if ok {
		b.metrics.conns.WithLabelValues(s.transport).Dec()
	}
	s.subMu.Lock()
	s.released = true
	members := s.members
	s.members = make(map[string]*membership)
	clear(s.patterns)
	pending := s.subs.pending
	s.subs = subState{}
	s.subMu.Unlock()
	if len(pending) > 0 {
		b.mu.Lock()
		for _, req := range pending {
			b.unregisterPendingLocked(s, req)
		}
		b.mu.Unlock()
	}
	for _, m := range members {
		m.topic.mu.Lock()
		m.topic.remove(m)
		m.topic.mu.Unlock()
	}
}

func (b *Bus) pendingBytes() float64 {
	b.mu.RLock()
	defer b.mu.RUnlock()
	n := 0
	for s := range b.subs {
		n += s.PendingBytes()
	}
	return float64(n)
}

// Subscribers is the number of open subscribers.
func (b *Bus) Subscribers() int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return len(b.subs)
}

// Topics lists every topic, sorted by name.
func (b *Bus) Topics() []TopicInfo {
	b.mu.RLock()
	ts := make([]*topic, 0, len(b.topics))
	for _, t := range b.topics {
		ts = append(ts, t)
	}
	b.mu.RUnlock()
	sort.Slice(ts, func(i, j int) bool { return ts[i].name < ts[j].name })
	now := b.cfg.Now()
	out := make([]TopicInfo, len(ts))
	for i, t := range ts {
		out[i] = t.info(now)
	}
	return out
}

// HasTopic says whether the topic exists (has had a tick and was not
// evicted).
func (b *Bus) HasTopic(name string) bool { return b.lookup(name) != nil }

// TopicsAfter lists up to limit topics whose names sort after after,
// sorted by name, and the name to pass as after for the next page ("" when
// this page is the last).
func (b *Bus) TopicsAfter(after string, limit int) ([]TopicInfo, string) {
	b.mu.RLock()
	ts := make([]*topic, 0, min(len(b.topics), limit+1))
	for name, t := range b.topics {
		if name > after {
			ts = append(ts, t)
		}
	}
	b.mu.RUnlock()
	sort.Slice(ts, func(i, j int) bool { return ts[i].name < ts[j].name })
	next := ""
	if len(ts) > limit {
		ts = ts[:limit]
		next = ts[limit-1].name
	}
	now := b.cfg.Now()
	out := make([]TopicInfo, len(ts))
	for i, t := range ts {
		out[i] = t.info(now)
	}
	return out, next
}

// CountMatching is how many topics match one of the patterns (prefixes,
// see protocol.Pattern) and are not in except: what a subscribe to those
// patterns would deliver besides the named topics.
func (b *Bus) CountMatching(patterns []string, except map[string]bool) int {
	if len(patterns) == 0 {
		return 0
	}
	n := 0
	for _, t := range b.topicList() {
		if !except[t.name] && matchesAny(t.name, patterns) {
			n++
		}
	}
	return n
}

// History returns up to limit raw ticks of topic after seq afterSeq. The
// newest come from the memory ring; with a store, older ones are read
// from it when the ring does not reach back to afterSeq.
func (b *Bus) History(name string, afterSeq uint64, limit int) (History, error) {
	t := b.lookup(name)
	if t == nil {
		return History{}, fmt.Errorf("%w %q", ErrUnknownTopic, name)
	}
	h := t.history(afterSeq, limit)
	if b.cfg.Store == nil || afterSeq+1 >= h.Oldest || limit <= 0 {
		return h, nil
	}
	// The ring starts after afterSeq: read the ticks before it from the
	// store (outside the topic's lock), and keep them only if they join
	// the ring's without a gap.
	want := min(uint64(limit), h.Oldest-1-afterSeq)
	oldest, older, err := b.cfg.Store.History(name, afterSeq, int(want))
	if err != nil {
		b.cfg.Logger.Warn("store: reading history", "topic", name, "err", err)
		return h, nil
	}
	for len(older) > 0 && older[len(older)-1].Seq >= h.Oldest {
		older = older[:len(older)-1] // the ring has it (committed meanwhile)
	}
	n := len(older)
	switch {
	case n > 0 && older[n-1].Seq+1 == h.Oldest:
		h.Ticks = append(older, h.Ticks...)[:min(limit, n+len(h.Ticks))]
	case n > 0 && n == limit: // the page ends before the ring
		h.Ticks = older
	default: // the store does not reach the ring (ticks still queued)
		return h, nil
	}
	h.Oldest = oldest
	return h, nil
}

// Candles returns up to limit newest bars of topic at interval ("1s",
// "1m", "5m", "1h"), oldest first.
func (b *Bus) Candles(name, interval string, limit int) ([]Candle, error) {
	bars, _, err := b.CandlesSeq(name, interval, limit)
	return bars, err
}

// CandlesSeq is Candles plus the topic's seq read under the same lock: the
// bars include exactly the ticks up to that seq, so a chart can fold in
// just the live updates after it.
func (b *Bus) CandlesSeq(name, interval string, limit int) ([]Candle, uint64, error) {
	i := intervalIndex(interval)
	if i < 0 {
		return nil, 0, fmt.Errorf("%w: %q", ErrBadInterval, interval)
	}
	t := b.lookup(name)
	if t == nil {
		return nil, 0, fmt.Errorf("%w %q", ErrUnknownTopic, name)
	}
	bars, seq := t.candleBars(i, limit)
	return bars, seq, nil
}

// Close disconnects every subscriber with protocol.DisconnectShutdown, stops the
// flushers and waits for them, or returns ctx.Err() if ctx ends first.
// Publishing to a closed bus of a new topic fails with ErrClosed.
func (b *Bus) Close(ctx context.Context) error {
	b.mu.Lock()
	b.closed = true
	if b.evictQuit != nil {
		close(b.evictQuit)
		b.evictQuit = nil
	}
	subs := make([]*Subscriber, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()
	for _, s := range subs {
		s.Close(protocol.DisconnectShutdown)
	}
	b.flMu.Lock()
	b.flClosed = true
	for d, f := range b.flushers {
		close(f.quit)
		delete(b.flushers, d)
	}
	for i := range b.instant {
		if f := b.instant[i].Swap(nil); f != nil {
			close(f.quit)
		}
	}
	b.flMu.Unlock()
	done := make(chan struct{})
	go func() { b.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
