package feeds_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/feedtest"
)

// TestMain checks that no test leaves a feed goroutine behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// behaviour drives a fake feed from the test: each Run asks it what to do.
type behaviour struct {
	broken atomic.Bool  // Run fails at once while set
	panics atomic.Bool  // Run panics at once while set
	finish atomic.Bool  // Run publishes one tick and returns nil
	runs   atomic.Int64 // Run calls so far
	topic  string
}

type fakeSource struct {
	name string
	b    *behaviour
}

func (f *fakeSource) Name() string { return f.name }

func (f *fakeSource) Run(ctx context.Context, out feeds.Sink) error {
	f.b.runs.Add(1)
	switch {
	case f.b.panics.Load():
		panic("boom")
	case f.b.broken.Load():
		return errors.New("connection refused")
	case f.b.finish.Load():
		return out.Publish(feeds.Tick{Topic: f.b.topic, TS: 1, Fields: []feeds.Field{feeds.F("price", 1)}})
	}
	tk := time.NewTicker(2 * time.Millisecond)
	defer tk.Stop()
	for i := 1; ; i++ {
		select {
		case <-ctx.Done():
			return nil
		case <-tk.C:
			if f.b.broken.Load() || f.b.panics.Load() {
				return errors.New("lost connection")
			}
			if err := out.Publish(feeds.Tick{Topic: f.b.topic, Fields: []feeds.Field{feeds.F("price", float64(i))}}); err != nil {
				return err
			}
		}
	}
}

type fakeOptions struct {
	Topic string `yaml:"topic"`
}

// fakeRegistry is a private registry with a "fake" type whose feeds are
// driven by behaviours, keyed by feed name.
func fakeRegistry(bs map[string]*behaviour) *feeds.Registry {
	r := &feeds.Registry{}
	r.Register("fake", func(cfg feeds.Config) (feeds.Source, error) {
		var o fakeOptions
		if err := cfg.DecodeOptions(&o); err != nil {
			return nil, err
		}
		b := bs[cfg.Name]
		if b == nil {
			return nil, fmt.Errorf("feed %q: no behaviour", cfg.Name)
		}
		b.topic = cfg.Name
		if o.Topic != "" {
			b.topic = o.Topic
		}
		return &fakeSource{name: cfg.Name, b: b}, nil
	})
	return r
}

func fakeConfig(name, backup string) feeds.Config {
	return feeds.Config{Name: name, Type: "fake", Backup: backup}
}

func newTestSupervisor(t *testing.T, reg *feeds.Registry, sink feeds.Sink, promReg prometheus.Registerer, cfgs ...feeds.Config) *feeds.Supervisor {
	t.Helper()
	s, err := feeds.NewSupervisor(feeds.SupervisorConfig{
		Registry:     reg,
		Feeds:        cfgs,
		Sink:         func(string) feeds.Sink { return sink },
		Registerer:   promReg,
		MinBackoff:   time.Millisecond,
		MaxBackoff:   5 * time.Millisecond,
		HealthyAfter: 50 * time.Millisecond,
		FailAfter:    3,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestSupervisorRestartsFailingFeeds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		spoil func(*behaviour)
		err   string
	}{
		{"error", func(b *behaviour) { b.broken.Store(true) }, "connection refused"},
		{"panic", func(b *behaviour) { b.panics.Store(true) }, "panic: boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			bad, good := &behaviour{}, &behaviour{}
			tt.spoil(bad)
			reg := prometheus.NewPedanticRegistry()
			sink := &feedtest.Sink{}
			s := newTestSupervisor(t, fakeRegistry(map[string]*behaviour{"bad": bad, "good": good}), sink, reg,
				fakeConfig("bad", ""), fakeConfig("good", ""))
			s.Start()

			// FailAfter is 3: the feed restarts, then shows as failed, and
			// keeps being retried.
			feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
				st := feedtest.FeedStatus(s, "bad")
				if st.State != feeds.StateFailed || st.Restarts < 4 || !strings.Contains(st.LastError, tt.err) {
					return fmt.Errorf("bad: %+v", st)
				}
				return nil
			})
			if s.Ready() {
				t.Error("Ready with a failed feed")
			}
			// The other feed never noticed.
			feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
				if st := feedtest.FeedStatus(s, "good"); st.State != feeds.StateRunning || st.Ticks < 10 || st.Restarts != 0 {
					return fmt.Errorf("good: %+v", st)
				}
				return nil
			})
			if got := metricValue(t, reg, "tickstream_feed_restarts_total", "bad"); got < 4 {
				t.Errorf("restarts_total{bad} = %v, want >= 4", got)
			}

			// Repaired: it is up again at its first tick.
			bad.broken.Store(false)
			bad.panics.Store(false)
			feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
				if st := feedtest.FeedStatus(s, "bad"); st.State != feeds.StateRunning || st.Failures != 0 || st.Ticks == 0 {
					return fmt.Errorf("bad: %+v", st)
				}
				if !s.Ready() {
					return errors.New("not ready")
				}
				return nil
			})
			if got := metricValue(t, reg, "tickstream_feed_up", "bad"); got != 1 {
				t.Errorf("feed_up{bad} = %v, want 1", got)
			}
		})
	}
}

// metricValue returns the value of name{feed=feed} in reg.
func metricValue(t *testing.T, reg *prometheus.Registry, name, feed string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "feed" && l.GetValue() == feed {
					return m.GetCounter().GetValue() + m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no metric %s{feed=%q}", name, feed)
	return 0
}

func TestSupervisorFinishedFeedIsNotRestarted(t *testing.T) {
	t.Parallel()
	b := &behaviour{}
	b.finish.Store(true)
	s := newTestSupervisor(t, fakeRegistry(map[string]*behaviour{"once": b}), &feedtest.Sink{}, nil, fakeConfig("once", ""))
	s.Start()
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if st := feedtest.FeedStatus(s, "once"); st.State != feeds.StateStopped || st.Ticks != 1 {
			return fmt.Errorf("once: %+v", st)
		}
		return nil
	})
	time.Sleep(20 * time.Millisecond) // long enough for a wrong restart to show
	if st := feedtest.FeedStatus(s, "once"); st.Restarts != 0 || b.runs.Load() != 1 || st.LastError != "" {
		t.Errorf("finished feed was restarted: %+v, runs %d", st, b.runs.Load())
	}
	if !s.Ready() {
		t.Error("a finished feed makes the server unready")
	}
}

func TestSupervisorBackupTakesOverAndHandsBack(t *testing.T) {
	t.Parallel()
	primary, backup := &behaviour{}, &behaviour{}
	sink := &feedtest.Sink{}
	s := newTestSupervisor(t, fakeRegistry(map[string]*behaviour{"primary": primary, "backup": backup}), sink, nil,
		fakeConfig("primary", "backup"), fakeConfig("backup", ""))
	if st := feedtest.FeedStatus(s, "backup"); st.State != feeds.StateStandby {
		t.Fatalf("backup before start: %+v", st)
	}
	s.Start()
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if st := feedtest.FeedStatus(s, "primary"); st.State != feeds.StateRunning || st.Backup != "backup" {
			return fmt.Errorf("primary: %+v", st)
		}
		return nil
	})
	if backup.runs.Load() != 0 {
		t.Fatal("backup ran while the primary was up")
	}

	for round := range 2 { // take over and hand back twice
		start := feedtest.FeedStatus(s, "backup").Ticks
		primary.broken.Store(true)
		feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
			p, b := feedtest.FeedStatus(s, "primary"), feedtest.FeedStatus(s, "backup")
			if p.State == feeds.StateRunning || !p.ActiveBackup {
				return fmt.Errorf("round %d: primary: %+v", round, p)
			}
			if b.State != feeds.StateRunning || len(b.StandsInFor) != 1 || b.StandsInFor[0] != "primary" || b.Ticks <= start {
				return fmt.Errorf("round %d: backup: %+v", round, b)
			}
			if !s.Ready() {
				return errors.New("not ready although the backup is running")
			}
			return nil
		})
		primary.broken.Store(false)
		feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
			p, b := feedtest.FeedStatus(s, "primary"), feedtest.FeedStatus(s, "backup")
			if p.State != feeds.StateRunning || p.ActiveBackup {
				return fmt.Errorf("round %d: primary: %+v", round, p)
			}
			if b.State != feeds.StateStandby || len(b.StandsInFor) != 0 {
				return fmt.Errorf("round %d: backup: %+v", round, b)
			}
			return nil
		})
	}
	// In standby, the backup publishes nothing.
	n := feedtest.FeedStatus(s, "backup").Ticks
	time.Sleep(20 * time.Millisecond)
	if m := feedtest.FeedStatus(s, "backup").Ticks; m != n {
		t.Errorf("standby backup published %d ticks", m-n)
	}
}

func TestSupervisorExternalSink(t *testing.T) {
	t.Parallel()
	b := &behaviour{}
	s := newTestSupervisor(t, fakeRegistry(map[string]*behaviour{"http": b}), &feedtest.Sink{}, nil, fakeConfig("http", ""))
	sink := s.ExternalSink("publish", "http")
	if s.ExternalSink("publish", "http") != sink {
		t.Error("second ExternalSink returned another sink")
	}
	for i := range 3 {
		if err := sink.Publish(feeds.Tick{Topic: "X", TS: 1, Fields: []feeds.Field{feeds.F("price", float64(i))}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := sink.Publish(feeds.Tick{Topic: "bad topic"}); err == nil {
		t.Error("invalid tick accepted")
	}
	st := feedtest.FeedStatus(s, "publish")
	if st.State != feeds.StateRunning || st.Ticks != 3 || !st.External || st.Type != "http" || st.LastTick.IsZero() {
		t.Errorf("external: %+v", st)
	}
	if s.ExternalSink("http", "http") == nil || feedtest.FeedStatus(s, "http-external").Name == "" {
		t.Error("a name clash with a configured feed is not renamed")
	}
}

func TestSupervisorCloseTimesOut(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var once sync.Once
	r := &feeds.Registry{}
	r.Register("stuck", func(cfg feeds.Config) (feeds.Source, error) { return stuckSource{release}, nil })
	s, err := feeds.NewSupervisor(feeds.SupervisorConfig{
		Registry: r, Feeds: []feeds.Config{{Type: "stuck"}},
		Sink: func(string) feeds.Sink { return &feedtest.Sink{} },
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close = %v, want deadline exceeded", err)
	}
	once.Do(func() { close(release) })
	if err := s.Close(context.Background()); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// stuckSource ignores its context until released, like a buggy adapter.
type stuckSource struct{ release chan struct{} }

func (stuckSource) Name() string { return "stuck" }
func (s stuckSource) Run(ctx context.Context, out feeds.Sink) error {
	<-s.release
	return nil
}

func TestNewSupervisorBadConfig(t *testing.T) {
	t.Parallel()
	var opts yaml.Node
	if err := yaml.Unmarshal([]byte("{topci: X}"), &opts); err != nil {
		t.Fatal(err)
	}
	bs := map[string]*behaviour{"a": {}, "b": {}, "c": {}}
	tests := []struct {
		name  string
		feeds []feeds.Config
		want  string
	}{
		{"unknown type", []feeds.Config{{Name: "a", Type: "kafka"}}, `feed "a": feeds: unknown source "kafka" (known: fake)`},
		{"missing type", []feeds.Config{{Name: "a"}}, `feeds[0] "a": type: missing`},
		{"duplicate name", []feeds.Config{fakeConfig("a", ""), fakeConfig("a", "")}, `feed "a": name: used by feeds[0] and feeds[1]`},
		{"bad name", []feeds.Config{fakeConfig("a b", "")}, `feeds[0]: name "a b"`},
		{"unknown backup", []feeds.Config{fakeConfig("a", "zz")}, `feed "a": backup: no feed named "zz"`},
		{"self backup", []feeds.Config{fakeConfig("a", "a")}, `feed "a": backup: a feed cannot back itself up`},
		{"chained backup", []feeds.Config{fakeConfig("a", "b"), fakeConfig("b", "c"), fakeConfig("c", "")}, `feed "a": backup: "b" has a backup of its own`},
		{"unknown option", []feeds.Config{{Name: "a", Type: "fake", Options: *opts.Content[0]}}, `feed "a": options: yaml: unmarshal errors:`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := feeds.NewSupervisor(feeds.SupervisorConfig{
				Registry: fakeRegistry(bs), Feeds: tt.feeds,
				Sink: func(string) feeds.Sink { return &feedtest.Sink{} },
			})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
	if _, err := feeds.NewSupervisor(feeds.SupervisorConfig{}); !errors.Is(err, feeds.ErrNoSink) {
		t.Errorf("no sink: err = %v", err)
	}
}

func TestSupervisorMetricsRegistered(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	b := &behaviour{}
	b.finish.Store(true)
	s := newTestSupervisor(t, fakeRegistry(map[string]*behaviour{"m": b}), &feedtest.Sink{}, reg, fakeConfig("m", ""))
	s.Start()
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if st := feedtest.FeedStatus(s, "m"); st.State != feeds.StateStopped {
			return fmt.Errorf("m: %+v", st)
		}
		return nil
	})
	want := `
# HELP tickstream_feed_ticks_total Ticks the feed published that the bus accepted.
# TYPE tickstream_feed_ticks_total counter
tickstream_feed_ticks_total{feed="m"} 1
# HELP tickstream_feed_restarts_total Times the feed failed or panicked and was scheduled for restart.
# TYPE tickstream_feed_restarts_total counter
tickstream_feed_restarts_total{feed="m"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tickstream_feed_ticks_total", "tickstream_feed_restarts_total"); err != nil {
		t.Error(err)
	}
	// A second supervisor on the same registry is a wiring bug, reported.
	if _, err := feeds.NewSupervisor(feeds.SupervisorConfig{Sink: func(string) feeds.Sink { return &feedtest.Sink{} }, Registerer: reg}); err == nil {
		t.Error("double registration not reported")
	}
}

func TestSupervisorSharedBackup(t *testing.T) {
	t.Parallel()
	a, b, spare := &behaviour{}, &behaviour{}, &behaviour{}
	s := newTestSupervisor(t, fakeRegistry(map[string]*behaviour{"a": a, "b": b, "spare": spare}), &feedtest.Sink{}, nil,
		fakeConfig("a", "spare"), fakeConfig("b", "spare"), fakeConfig("spare", ""))
	s.Start()
	want := func(state feeds.State, covering ...string) func() error {
		return func() error {
			st := feedtest.FeedStatus(s, "spare")
			if st.State != state || fmt.Sprint(st.StandsInFor) != fmt.Sprint(covering) && len(covering)+len(st.StandsInFor) > 0 {
				return fmt.Errorf("spare: %+v, want %s covering %v", st, state, covering)
			}
			return nil
		}
	}
	a.broken.Store(true)
	b.broken.Store(true)
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, want(feeds.StateRunning, "a", "b"))
	a.broken.Store(false) // b still down: the spare keeps running
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, want(feeds.StateRunning, "b"))
	b.broken.Store(false)
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, want(feeds.StateStandby))
	if spare.runs.Load() != 1 {
		t.Errorf("spare ran %d times, want once for the whole outage", spare.runs.Load())
	}
}
