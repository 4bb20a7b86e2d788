package feeds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// SupervisorConfig configures a Supervisor. Every zero value means the
// documented default.
type SupervisorConfig struct {
	// Registry builds the sources. Zero value means DefaultRegistry.
	Registry *Registry
	// Feeds are the configured feeds, in config-file order.
	Feeds []Config
	// Sink returns where feed publishes (the bus: bus.Sink). Required.
	Sink func(feed string) Sink
	// Registerer receives the feed metrics. Zero value means the metrics
	// are kept but not registered anywhere.
	Registerer prometheus.Registerer
	// Logger logs feed failures and restarts. Zero value means
	// slog.Default().
	Logger *slog.Logger
	// Now is the clock used for last-tick times and lag. Zero value means
	// time.Now.
	Now func() time.Time
	// MinBackoff and MaxBackoff bound the delay before a failed feed is
	// restarted: the n-th consecutive failure waits a random time in
	// [0, min(MaxBackoff, MinBackoff·2ⁿ⁻¹)] ("full jitter", so that many
	// feeds failing together do not retry together). Zero values mean
	// 500 ms and 30 s.
	MinBackoff, MaxBackoff time.Duration
	// HealthyAfter is how long a (re)started feed must run without error
	// to count as up when it has not published yet; a published tick
	// counts as up at once. Up resets the failure count and hands a
	// backup back. Zero value means 2 s.
	HealthyAfter time.Duration
	// FailAfter is the number of consecutive failed runs without a tick
	// after which a feed shows as failed instead of restarting. A failed
	// feed keeps being retried at up to MaxBackoff, because the far end
	// (an exchange, a NATS server) may come back. Zero value means 5.
	FailAfter int
	// DegradedWindow and DegradedMin define StateDegraded: a running feed
	// is degraded while, within the last DegradedWindow, it dropped at
	// least DegradedMin messages and had no tick accepted. Zero values
	// mean 10 s and 10.
	DegradedWindow time.Duration
	DegradedMin    int
	// Lease, if set, makes each feed run once per cluster: the supervisor
	// runs a feed only while it holds the feed's lease, and waits for it
	// (the feed shows as standby, and counts as ready: another node runs
	// it) otherwise. Zero value means every feed runs here.
	Lease Lease
}

// Lease is a cluster-wide lock per feed (see SupervisorConfig.Lease;
// stream/cluster implements it in a NATS KV bucket).
type Lease interface {
	// Acquire blocks until this process holds feed's lease, or returns
	// ctx's error when ctx ends first. held ends when the lease is lost
	// (or ctx ends); release gives the lease up and must be called once
	// the feed has stopped.
	Acquire(ctx context.Context, feed string) (held context.Context, release func(), err error)
}

// Supervisor runs feeds: one goroutine per running feed, each restarted
// with capped exponential backoff and full jitter when its Run fails or
// panics, so that one broken feed never stops the others.
//
// A Run that returns nil before its context ends has finished (a replay
// without loop): the feed shows as stopped and is not restarted.
//
// A Run that returns an error wrapping ErrClosed (the bus is closed) has
// also finished; it is not a failure and is not restarted.
//
// Every tick a feed publishes goes through a counting sink: accepted ticks
// count in Status.Ticks, refused ones (a *TickError from the bus) and the
// messages the adapter reports through Drop count in Status.Dropped, by
// reason in tickstream_feed_dropped_total{feed,reason} (reason is one of
// DropReasons, so the label stays bounded), and a running feed that drops
// everything shows as StateDegraded (see SupervisorConfig.DegradedWindow).
//
// A feed may name a backup. The backup stays in standby until its primary
// fails, runs while the primary is restarting or failed, and is stopped
// and handed back when the primary is up again (its first tick, or
// HealthyAfter of running without error). A backup may cover several
// primaries; it runs while any of them is down. A backup cannot have a
// backup of its own.
//
// Concurrency: Start, Close, Statuses, Ready and ExternalSink are safe for
// concurrent use. The supervisor owns one goroutine per running feed (plus
// one for the Run call it watches); Close cancels them and waits.
type Supervisor struct {
	cfg     SupervisorConfig
	log     *slog.Logger
	metrics supervisorMetrics

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// sources maps a topic to the feed that last published it (SourceOf).
	srcMu   sync.RWMutex
	sources map[string]*feedRun

	mu      sync.Mutex
	feeds   map[string]*feedRun
	order   []*feedRun // configured feeds, in config order
	started bool
	closed  bool
}

var (
	_ StatusReporter = (*Supervisor)(nil)
	_ SourceReporter = (*Supervisor)(nil)
)

// feedRun is one supervised (or external) feed.
type feedRun struct {
	name, typ string
	src       Source // nil for an external feed
	sink      Sink   // the counting sink handed to Run
	external  bool

	backup    *feedRun   // this primary's backup, if any
	primaries []*feedRun // for a backup: the feeds it covers

	ticks       atomic.Uint64
	lastTick    atomic.Int64 // Unix nanoseconds of the last accepted tick
	lagMS       atomic.Int64
	waitingTick atomic.Bool // a run has started and not yet published

	dropped  atomic.Uint64
	dropMu   sync.Mutex
	dropRing []int64 // Unix ns of the last DegradedMin drops, a ring
	dropNext int     // next slot of dropRing
	lastDrop struct {
		reason DropReason
		detail string
		at     int64 // Unix ns
	}

	ticksC    prometheus.Counter
	restartsC prometheus.Counter
	upG       prometheus.Gauge
	lagG      prometheus.Gauge
	backupG   prometheus.Gauge

	// Guarded by Supervisor.mu.
	state    State
	lastErr  string
	restarts int
	failures int
	covering map[*feedRun]bool // for a backup: primaries now down
	active   bool              // for a primary: its backup is covering it
	leaseOut bool              // waiting for the lease: another node runs it
	cancel   context.CancelFunc
	done     chan struct{} // closed when the feed's loop has returned
}

type supervisorMetrics struct {
	up, lag, backup          *prometheus.GaugeVec
	ticks, restarts, dropped *prometheus.CounterVec
	degraded                 *prometheus.Desc
	all                      []prometheus.Collector
}

func newSupervisorMetrics() supervisorMetrics {
	m := supervisorMetrics{
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tickstream_feed_up",
			Help: "1 while the feed is running (a running backup counts), 0 otherwise.",
		}, []string{"feed"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tickstream_feed_lag_seconds",
			Help: "Accept time minus source time of the feed's last tick.",
		}, []string{"feed"}),
		backup: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tickstream_feed_backup_active",
			Help: "1 while the feed's backup is standing in for it.",
		}, []string{"feed"}),
		ticks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tickstream_feed_ticks_total",
			Help: "Ticks the feed published that the bus accepted.",
		}, []string{"feed"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tickstream_feed_restarts_total",
			Help: "Times the feed failed or panicked and was scheduled for restart.",
		}, []string{"feed"}),
	}
	m.dropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tickstream_feed_dropped_total",
		Help: "Messages the feed received that never became an accepted tick, by reason (unmapped, bad_topic, bad_field, non_finite, too_many_fields, bad_json, over_limit, refused).",
	}, []string{"feed", "reason"})
	m.degraded = prometheus.NewDesc("tickstream_feed_degraded",
		"1 while the feed is degraded: running, but every message of the last window was dropped.", []string{"feed"}, nil)
	m.all = []prometheus.Collector{m.up, m.lag, m.backup, m.ticks, m.restarts, m.dropped}
	return m
}

// register registers the metrics, and the degraded gauge that s computes
// when scraped.
func (m supervisorMetrics) register(reg prometheus.Registerer, s *Supervisor) error {
	if reg != nil {
		for _, c := range append(m.all, degradedCollector{s}) {
			if err := reg.Register(c); err != nil {
				return fmt.Errorf("feeds: register supervisor metrics: %w", err)
			}
		}
	}
	return nil
}

// degradedCollector reports tickstream_feed_degraded, which depends on
// the clock, at scrape time.
type degradedCollector struct{ s *Supervisor }

func (c degradedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.s.metrics.degraded }

func (c degradedCollector) Collect(ch chan<- prometheus.Metric) {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	now := c.s.cfg.Now()
	for _, f := range c.s.feeds {
		v := 0.0
		if c.s.stateLocked(f, now) == StateDegraded {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.s.metrics.degraded, prometheus.GaugeValue, v, f.name)
	}
}

// ErrNoSink is returned by NewSupervisor when SupervisorConfig.Sink is nil.
var ErrNoSink = errors.New("feeds: SupervisorConfig.Sink is nil")

// NewSupervisor builds every configured source through the registry and
// checks the feed list: unique valid names and backups that exist. The
// error names the feed and the setting. It does no network I/O and starts
// nothing; call Start.
func NewSupervisor(cfg SupervisorConfig) (*Supervisor, error) {
	if cfg.Registry == nil {
		cfg.Registry = DefaultRegistry
	}
	if cfg.Sink == nil {
		return nil, ErrNoSink
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.HealthyAfter == 0 {
		cfg.HealthyAfter = 2 * time.Second
	}
	if cfg.FailAfter == 0 {
		cfg.FailAfter = 5
	}
	if cfg.DegradedWindow == 0 {
		cfg.DegradedWindow = 10 * time.Second
	}
	if cfg.DegradedMin == 0 {
		cfg.DegradedMin = 10
	}
	switch {
	case cfg.MinBackoff < 0 || cfg.MaxBackoff < cfg.MinBackoff:
		return nil, fmt.Errorf("feeds: backoff %v..%v: want 0 < MinBackoff <= MaxBackoff", cfg.MinBackoff, cfg.MaxBackoff)
	case cfg.HealthyAfter < 0 || cfg.FailAfter < 0:
		return nil, errors.New("feeds: HealthyAfter and FailAfter must not be negative")
	case cfg.DegradedWindow < 0 || cfg.DegradedMin < 0:
		return nil, errors.New("feeds: DegradedWindow and DegradedMin must not be negative")
	}
	m := newSupervisorMetrics()
	s := &Supervisor{cfg: cfg, log: cfg.Logger, metrics: m, feeds: make(map[string]*feedRun), sources: make(map[string]*feedRun)}
	if err := m.register(cfg.Registerer, s); err != nil {
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())

	index := make(map[string]int)
	for i, fc := range cfg.Feeds {
		if fc.Name == "" {
			fc.Name = fc.Type
			cfg.Feeds[i].Name = fc.Type
		}
		if fc.Type == "" {
			return nil, fmt.Errorf("feeds[%d] %q: type: missing (known: %v)", i, fc.Name, cfg.Registry.Types())
		}
		if !ValidTopic(fc.Name) {
			return nil, fmt.Errorf("feeds[%d]: name %q: want 1-%d characters of [A-Za-z0-9._:/-]", i, fc.Name, MaxTopicLen)
		}
		if j, dup := index[fc.Name]; dup {
			return nil, fmt.Errorf("feed %q: name: used by feeds[%d] and feeds[%d]; names must be unique", fc.Name, j, i)
		}
		index[fc.Name] = i
	}
	for _, fc := range cfg.Feeds {
		if fc.Backup == "" {
			continue
		}
		j, ok := index[fc.Backup]
		switch {
		case !ok:
			return nil, fmt.Errorf("feed %q: backup: no feed named %q", fc.Name, fc.Backup)
		case fc.Backup == fc.Name:
			return nil, fmt.Errorf("feed %q: backup: a feed cannot back itself up", fc.Name)
		case cfg.Feeds[j].Backup != "":
			return nil, fmt.Errorf("feed %q: backup: %q has a backup of its own (%q); backups do not chain", fc.Name, fc.Backup, cfg.Feeds[j].Backup)
		}
	}
	for _, fc := range cfg.Feeds {
		src, err := cfg.Registry.New(fc)
		if err != nil {
			return nil, err
		}
		f := s.newFeedRun(fc.Name, fc.Type)
		f.src = src
		s.feeds[f.name] = f
		s.order = append(s.order, f)
	}
	for _, fc := range cfg.Feeds {
		if fc.Backup != "" {
			p, b := s.feeds[fc.Name], s.feeds[fc.Backup]
			p.backup = b
			b.primaries = append(b.primaries, p)
			b.state = StateStandby
		}
	}
	return s, nil
}

func (s *Supervisor) newFeedRun(name, typ string) *feedRun {
	f := &feedRun{
		name: name, typ: typ, state: StateStarting,
		ticksC:    s.metrics.ticks.WithLabelValues(name),
		restartsC: s.metrics.restarts.WithLabelValues(name),
		upG:       s.metrics.up.WithLabelValues(name),
		lagG:      s.metrics.lag.WithLabelValues(name),
		backupG:   s.metrics.backup.WithLabelValues(name),
		covering:  make(map[*feedRun]bool),
		dropRing:  make([]int64, s.cfg.DegradedMin),
	}
	f.sink = &countingSink{s: s, f: f, next: s.cfg.Sink(name)}
	return f
}

// Start starts one goroutine per feed that is not a standby backup. It
// does nothing if called again or after Close.
func (s *Supervisor) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.closed {
		return
	}
	s.started = true
	for _, f := range s.order {
		if len(f.primaries) == 0 {
			s.startLocked(f)
		}
	}
}

// startLocked starts f's loop. A backup being stopped may still be
// returning from Run; the new loop waits for it so that two instances of
// one source never run at once.
func (s *Supervisor) startLocked(f *feedRun) {
	ctx, cancel := context.WithCancel(s.ctx)
	prev := f.done
	f.cancel, f.done = cancel, make(chan struct{})
	s.wg.Add(1)
	go s.loop(ctx, f, prev, f.done)
}

// Close stops every feed and waits for their goroutines to return, or
// returns ctx.Err() if ctx ends first.
func (s *Supervisor) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Supervisor) loop(ctx context.Context, f *feedRun, prev <-chan struct{}, done chan struct{}) {
	defer s.wg.Done()
	defer close(done)
	if prev != nil {
		select {
		case <-prev:
		case <-ctx.Done():
			s.exit(f)
			return
		}
	}
	for {
		runCtx, release := ctx, func() {}
		if s.cfg.Lease != nil {
			s.setState(f, func() { f.state, f.leaseOut = StateStandby, true })
			held, rel, err := s.cfg.Lease.Acquire(ctx, f.name)
			s.setState(f, func() { f.leaseOut = false })
			if err != nil {
				s.exit(f)
				return
			}
			s.log.Info("feed lease acquired", "feed", f.name)
			runCtx, release = held, rel
		}
		s.setState(f, func() {
			// A failed feed stays failed until it is up again.
			switch {
			case f.state == StateFailed:
			case f.failures > 0:
				f.state = StateRestarting
			default:
				f.state = StateStarting
			}
		})
		f.waitingTick.Store(true)
		errc := make(chan error, 1)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			errc <- s.runOnce(runCtx, f)
		}()
		healthy := time.NewTimer(s.cfg.HealthyAfter)
		var err error
	wait:
		for {
			select {
			case err = <-errc:
				break wait
			case <-healthy.C:
				if f.waitingTick.CompareAndSwap(true, false) {
					s.markUp(f)
				}
			}
		}
		healthy.Stop()
		f.waitingTick.Store(false)
		release()
		if ctx.Err() != nil {
			s.exit(f)
			return
		}
		if runCtx.Err() != nil {
			// The lease was lost (another node runs the feed now): wait
			// for it again, without counting a failure.
			s.log.Warn("feed lease lost", "feed", f.name)
			continue
		}
		if err == nil || errors.Is(err, ErrClosed) {
			// Finished, or the bus is closed: either way the feed ends.
			s.finished(f)
			return
		}
		wait := s.failed(f, err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			s.exit(f)
			return
		}
	}
}

// runOnce runs the source once, turning a panic into an error so that a
// buggy adapter is restarted like a failing one.
func (s *Supervisor) runOnce(ctx context.Context, f *feedRun) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("feed panicked", "feed", f.name, "panic", r, "stack", string(debug.Stack()))
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return f.src.Run(ctx, f.sink)
}

func (s *Supervisor) setState(f *feedRun, change func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	change()
	s.syncGaugesLocked(f)
}

func (s *Supervisor) syncGaugesLocked(f *feedRun) {
	up := 0.0
	if f.state == StateRunning {
		up = 1
	}
	f.upG.Set(up)
	active := 0.0
	if f.active {
		active = 1
	}
	f.backupG.Set(active)
}

// markUp records that f's current run is healthy: it published, or ran
// HealthyAfter without error. Its backup, if covering it, is handed back.
func (s *Supervisor) markUp(f *feedRun) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f.state != StateRunning {
		s.log.Info("feed up", "feed", f.name, "restarts", f.restarts)
	}
	f.state, f.failures = StateRunning, 0
	s.syncGaugesLocked(f)
	s.releaseBackupLocked(f)
}

// failed records a failed run and returns how long to wait before the
// next one.
func (s *Supervisor) failed(f *feedRun, err error) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	f.failures++
	f.restarts++
	f.restartsC.Inc()
	f.lastErr = err.Error()
	f.state = StateRestarting
	if f.failures >= s.cfg.FailAfter {
		f.state = StateFailed
	}
	s.syncGaugesLocked(f)
	d := s.backoff(f.failures)
	s.log.Warn("feed failed", "feed", f.name, "err", err, "state", f.state, "failures", f.failures, "retry_in", d)
	if f.backup != nil && !s.closed {
		s.coverLocked(f)
	}
	return d
}

// backoff is full jitter over a capped exponential: n is the number of
// consecutive failures, 1 or more.
func (s *Supervisor) backoff(n int) time.Duration {
	ceil := s.cfg.MaxBackoff
	if n < 32 {
		if d := s.cfg.MinBackoff << (n - 1); d > 0 && d < ceil {
			ceil = d
		}
	}
	return rand.N(ceil + 1)
}

func (s *Supervisor) finished(f *feedRun) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log.Info("feed finished", "feed", f.name, "ticks", f.ticks.Load())
	f.state = StateStopped
	f.cancel = nil
	s.syncGaugesLocked(f)
	s.releaseBackupLocked(f)
}

// exit records that f's loop ended because its context did: the
// supervisor closed, or a backup was handed back.
func (s *Supervisor) exit(f *feedRun) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(f.primaries) > 0 && !s.closed {
		// Handed back; a newer loop may already own f, and sets the state
		// itself once this one has returned.
		if f.cancel == nil {
			f.state = StateStandby
		}
	} else {
		f.state = StateStopped
	}
	s.syncGaugesLocked(f)
}

// coverLocked starts p's backup on p's behalf.
func (s *Supervisor) coverLocked(p *feedRun) {
	b := p.backup
	if p.active {
		return
	}
	p.active = true
	s.syncGaugesLocked(p)
	b.covering[p] = true
	if b.cancel == nil && b.state != StateStopped {
		s.log.Info("backup taking over", "feed", p.name, "backup", b.name)
		s.startLocked(b)
	}
}

// releaseBackupLocked hands p's backup back; the backup stops once no
// primary needs it.
func (s *Supervisor) releaseBackupLocked(p *feedRun) {
	if !p.active {
		return
	}
	p.active = false
	s.syncGaugesLocked(p)
	b := p.backup
	delete(b.covering, p)
	if len(b.covering) == 0 && b.cancel != nil {
		s.log.Info("backup handed back", "feed", p.name, "backup", b.name)
		b.cancel()
		b.cancel = nil
	}
}

// Statuses returns every feed's status, sorted by name.
func (s *Supervisor) Statuses() []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Status, 0, len(s.feeds))
	now := s.cfg.Now()
	for _, f := range s.feeds {
		st := Status{
			Name: f.name, Type: f.typ, State: s.stateLocked(f, now), LastError: f.lastErr,
			Restarts: f.restarts, Failures: f.failures, Ticks: f.ticks.Load(),
			LagMS: f.lagMS.Load(), ActiveBackup: f.active, External: f.external,
			Dropped: f.dropped.Load(),
		}
		f.dropMu.Lock()
		st.LastDropReason, st.LastDropError = f.lastDrop.reason, f.lastDrop.detail
		if f.lastDrop.at != 0 {
			st.LastDrop = time.Unix(0, f.lastDrop.at)
		}
		f.dropMu.Unlock()
		if n := f.lastTick.Load(); n != 0 {
			st.LastTick = time.Unix(0, n)
		}
		if f.backup != nil {
			st.Backup = f.backup.name
		}
		for _, p := range f.primaries {
			if f.covering[p] {
				st.StandsInFor = append(st.StandsInFor, p.name)
			}
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Ready reports whether ticks flow from every configured feed: each is
// running (not degraded) or has finished, or is down with its backup
// running, or waits for its lease (another node runs it). Standby
// backups and external feeds do not count. It is false before Start.
func (s *Supervisor) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started || s.closed {
		return false
	}
	now := s.cfg.Now()
	for _, f := range s.order {
		if len(f.primaries) > 0 {
			continue
		}
		switch st := s.stateLocked(f, now); {
		case st == StateRunning || st == StateStopped:
		case f.active && s.stateLocked(f.backup, now) == StateRunning:
		case f.leaseOut: // another node holds its lease and runs it
		default:
			return false
		}
	}
	return true
}

// ExternalSink registers a passive feed, one that the supervisor does not
// run, such as HTTP publish, and returns a sink that publishes through
// SupervisorConfig.Sink(name) and counts into the feed's status and
// metrics. Calling it again with the same name returns the same sink. If
// name belongs to a configured feed, the passive feed is registered as
// name+"-external" instead, so that both stay visible.
func (s *Supervisor) ExternalSink(name, typ string) Sink {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f, ok := s.feeds[name]; ok && !f.external {
		s.log.Warn("external feed name taken by a configured feed", "feed", name, "using", name+"-external")
		name += "-external"
	}
	if f, ok := s.feeds[name]; ok {
		return f.sink
	}
	f := s.newFeedRun(name, typ)
	f.external = true
	f.state = StateRunning
	s.syncGaugesLocked(f)
	s.feeds[name] = f
	return f.sink
}

// countingSink is the sink a supervised feed publishes into: it forwards
// to the bus and counts what the bus accepted.
type countingSink struct {
	s    *Supervisor
	f    *feedRun
	next Sink
}

func (c *countingSink) Publish(t Tick) error {
	_, err := c.PublishSeq(t)
	return err
}

// seqSink is a sink that reports the seq each tick got (the bus's).
type seqSink interface {
	PublishSeq(Tick) (uint64, error)
}

// PublishSeq is Publish that also returns the tick's seq when the sink
// behind it reports one (0 otherwise), for publish acks.
func (c *countingSink) PublishSeq(t Tick) (uint64, error) {
	var seq uint64
	var err error
	if ss, ok := c.next.(seqSink); ok {
		seq, err = ss.PublishSeq(t)
	} else {
		err = c.next.Publish(t)
	}
	if err != nil {
		if Refused(err) {
			c.ReportDrop(ReasonOf(err), err.Error())
		}
		return 0, err
	}
	f := c.f
	now := c.s.cfg.Now()
	c.s.noteSource(t.Topic, f)
	f.ticks.Add(1)
	f.ticksC.Inc()
	f.lastTick.Store(now.UnixNano())
	if t.TS != 0 {
		lag := now.UnixMilli() - t.TS
		f.lagMS.Store(lag)
		f.lagG.Set(float64(lag) / 1000)
	}
	// Only the first tick of a run takes the lock.
	if f.waitingTick.Load() && f.waitingTick.CompareAndSwap(true, false) {
		c.s.markUp(f)
	}
	return seq, nil
}

// maxDropDetail bounds Status.LastDropError.
const maxDropDetail = 200

// ReportDrop counts one message of the feed that did not become a tick.
// It implements DropReporter.
func (c *countingSink) ReportDrop(reason DropReason, detail string) {
	f := c.f
	if !slices.Contains(DropReasons, reason) {
		reason = DropRefused // keep the label bounded
	}
	if len(detail) > maxDropDetail {
		detail = detail[:maxDropDetail] + "…"
	}
	now := c.s.cfg.Now().UnixNano()
	f.dropped.Add(1)
	c.s.metrics.dropped.WithLabelValues(f.name, string(reason)).Inc()
	f.dropMu.Lock()
	f.lastDrop.reason, f.lastDrop.detail, f.lastDrop.at = reason, detail, now
	if len(f.dropRing) > 0 {
		f.dropRing[f.dropNext] = now
		f.dropNext = (f.dropNext + 1) % len(f.dropRing)
	}
	f.dropMu.Unlock()
}

// degraded reports whether, within the window before now, f dropped at
// least DegradedMin messages and had no tick accepted.
func (s *Supervisor) degraded(f *feedRun, now time.Time) bool {
	since := now.Add(-s.cfg.DegradedWindow).UnixNano()
	if f.lastTick.Load() > since {
		return false
	}
	f.dropMu.Lock()
	defer f.dropMu.Unlock()
	if len(f.dropRing) == 0 {
		return false
	}
	// dropRing[dropNext] is the oldest of the last DegradedMin drops (0
	// while fewer have happened).
	oldest := f.dropRing[f.dropNext]
	return oldest != 0 && oldest > since
}

// stateLocked is f's state as shown: a running feed that drops everything
// is degraded.
func (s *Supervisor) stateLocked(f *feedRun, now time.Time) State {
	if f.state == StateRunning && s.degraded(f, now) {
		return StateDegraded
	}
	return f.state
}

// noteSource records that f published topic.
func (s *Supervisor) noteSource(topic string, f *feedRun) {
	s.srcMu.RLock()
	cur := s.sources[topic]
	s.srcMu.RUnlock()
	if cur != f {
		s.srcMu.Lock()
		s.sources[topic] = f
		s.srcMu.Unlock()
	}
}

// SourceOf tells where topic's latest tick came from: the feed that last
// published it ("" if none has), and, if that feed is a backup standing
// in for failed primaries right now, their names. A dashboard uses it to
// warn that a topic's prices are a stand-in (for example the simulator
// for a failed exchange feed): Tick itself carries no source.
func (s *Supervisor) SourceOf(topic string) (feed string, standsInFor []string) {
	s.srcMu.RLock()
	f := s.sources[topic]
	s.srcMu.RUnlock()
	if f == nil {
		return "", nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range f.primaries {
		if f.covering[p] {
			standsInFor = append(standsInFor, p.name)
		}
	}
	return f.name, standsInFor
}
