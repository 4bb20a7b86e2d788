package feeds_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/feedtest"
)

// switchSource publishes a tick every millisecond: an invalid one (the
// bus refuses it) while bad is set, a valid one otherwise. With
// unmapped set it reports a message it could not map instead.
type switchSource struct {
	name                 string
	bad, unmapped, quiet atomic.Bool
}

func (s *switchSource) Name() string { return s.name }

func (s *switchSource) Run(ctx context.Context, out feeds.Sink) error {
	tk := time.NewTicker(time.Millisecond)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tk.C:
			if s.quiet.Load() {
				continue
			}
			if s.unmapped.Load() {
				feeds.Drop(out, feeds.DropUnmapped, errors.New("price: \"x\" is not a number"))
				continue
			}
			topic := "X"
			if s.bad.Load() {
				topic = "bad topic"
			}
			if err := feeds.Deliver(out, feeds.Tick{Topic: topic, Fields: []feeds.Field{feeds.F("price", 1)}}); err != nil {
				return feeds.Stopped(err)
			}
		}
	}
}

// clock is a settable clock for the supervisor.
type clock struct{ ns atomic.Int64 }

func (c *clock) now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *clock) add(d time.Duration) { c.ns.Add(int64(d)) }

// TestSupervisorDropAccountingAndDegraded: a feed whose every tick is
// refused keeps running (it is not restarted), counts its drops with the
// last reason, shows as degraded (not ready), and is running again as soon
// as a tick is accepted, or once a whole window passes without drops.
func TestSupervisorDropAccountingAndDegraded(t *testing.T) {
	t.Parallel()
	src := &switchSource{name: "ex"}
	src.bad.Store(true)
	reg := &feeds.Registry{}
	reg.Register("switch", func(feeds.Config) (feeds.Source, error) { return src, nil })
	clk := &clock{}
	clk.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	prom := prometheus.NewRegistry()
	s, err := feeds.NewSupervisor(feeds.SupervisorConfig{
		Registry: reg, Feeds: []feeds.Config{{Name: "ex", Type: "switch"}},
		Sink:       func(string) feeds.Sink { return &feedtest.Sink{} },
		Registerer: prom, Now: clk.now, HealthyAfter: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	s.Start()
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if st := feedtest.FeedStatus(s, "ex"); st.State != feeds.StateDegraded || st.Dropped < 10 {
			return fmt.Errorf("status %+v, want degraded", st)
		}
		return nil
	})
	st := feedtest.FeedStatus(s, "ex")
	if st.Restarts != 0 || st.Ticks != 0 || st.LastDropReason != feeds.DropBadTopic || st.LastDropError == "" || !st.LastDrop.Equal(clk.now()) {
		t.Errorf("status %+v", st)
	}
	if s.Ready() {
		t.Error("ready while the only feed drops everything")
	}
	if v := metricValue(t, prom, "tickstream_feed_degraded", "ex"); v != 1 {
		t.Errorf("tickstream_feed_degraded = %v", v)
	}
	if v := droppedMetric(t, prom, "ex", "bad_topic"); v < 10 {
		t.Errorf("tickstream_feed_dropped_total{reason=bad_topic} = %v", v)
	}

	// One accepted tick: running again.
	src.bad.Store(false)
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if st := feedtest.FeedStatus(s, "ex"); st.State != feeds.StateRunning || st.Ticks == 0 {
			return fmt.Errorf("status %+v, want running", st)
		}
		return nil
	})
	if !s.Ready() {
		t.Error("not ready once ticks flow again")
	}

	// Messages the adapter cannot map count too, with their own reason;
	// within the window of the last accepted tick the feed is not
	// degraded, past it it is.
	src.unmapped.Store(true)
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if v := droppedMetric(t, prom, "ex", "unmapped"); v < 10 {
			return fmt.Errorf("unmapped drops %v", v)
		}
		return nil
	})
	if st := feedtest.FeedStatus(s, "ex"); st.State != feeds.StateRunning || st.LastDropReason != feeds.DropUnmapped {
		t.Errorf("status %+v, want running (a tick was accepted within the window)", st)
	}
	clk.add(11 * time.Second)
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if st := feedtest.FeedStatus(s, "ex"); st.State != feeds.StateDegraded {
			return fmt.Errorf("status %+v, want degraded", st)
		}
		return nil
	})
	// The drops stop (a quiet feed): after a window, running again.
	src.quiet.Store(true)
	time.Sleep(5 * time.Millisecond)
	clk.add(11 * time.Second)
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if st := feedtest.FeedStatus(s, "ex"); st.State != feeds.StateRunning {
			return fmt.Errorf("status %+v, want running", st)
		}
		return nil
	})
}

func droppedMetric(t *testing.T, reg *prometheus.Registry, feed, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "tickstream_feed_dropped_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["feed"] == feed && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestSupervisorClosedBusStopsFeed: a feed that gets ErrClosed from the
// bus ends; it is not restarted (which would replay its data again).
func TestSupervisorClosedBusStopsFeed(t *testing.T) {
	t.Parallel()
	b := &behaviour{}
	sink := &feedtest.Sink{}
	sink.FailWith(fmt.Errorf("stream: %w", feeds.ErrClosed))
	s := newTestSupervisor(t, fakeRegistry(map[string]*behaviour{"ex": b}), sink, nil, fakeConfig("ex", ""))
	s.Start()
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if st := feedtest.FeedStatus(s, "ex"); st.State != feeds.StateStopped {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	time.Sleep(20 * time.Millisecond)
	if st := feedtest.FeedStatus(s, "ex"); st.Restarts != 0 || b.runs.Load() != 1 {
		t.Errorf("restarted after the bus closed: %+v, runs %d", st, b.runs.Load())
	}
}

// TestSupervisorSourceOf: while a backup stands in, SourceOf names it and
// the primary it covers for the topic it publishes; once the primary
// publishes again, the topic's source is the primary.
func TestSupervisorSourceOf(t *testing.T) {
	t.Parallel()
	primary, backup := &behaviour{}, &behaviour{}
	primary.broken.Store(true)
	cfg := func(name, bk string) feeds.Config {
		c := fakeConfig(name, bk)
		c.Options = yamlNode(t, `{topic: BTC-USD}`)
		return c
	}
	s := newTestSupervisor(t, fakeRegistry(map[string]*behaviour{"exchange": primary, "sim": backup}), &feedtest.Sink{}, nil,
		cfg("exchange", "sim"), cfg("sim", ""))
	if feed, _ := s.SourceOf("BTC-USD"); feed != "" {
		t.Errorf("SourceOf before any tick = %q", feed)
	}
	s.Start()
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		feed, standsIn := s.SourceOf("BTC-USD")
		if feed != "sim" || len(standsIn) != 1 || standsIn[0] != "exchange" {
			return fmt.Errorf("SourceOf = %q, %q", feed, standsIn)
		}
		if st := feedtest.FeedStatus(s, "sim"); len(st.StandsInFor) != 1 || st.StandsInFor[0] != "exchange" {
			return fmt.Errorf("sim status %+v", st)
		}
		return nil
	})
	primary.broken.Store(false)
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if feed, standsIn := s.SourceOf("BTC-USD"); feed != "exchange" || standsIn != nil {
			return fmt.Errorf("SourceOf = %q, %q", feed, standsIn)
		}
		return nil
	})
}

func yamlNode(t *testing.T, s string) yaml.Node {
	t.Helper()
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(s), &n); err != nil {
		t.Fatal(err)
	}
	return *n.Content[0]
}

func TestParseUnixMilliTruncates(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		unit feeds.TimeUnit
		want int64
	}{
		{"1534614057.9996", feeds.Seconds, 1534614057999},
		{"1534614057.321597", feeds.Seconds, 1534614057321},
		{"1534614057.321", feeds.Seconds, 1534614057321}, // 1534614057.321*1000 is 1534614057320.9998 in float64
		{"1534614057", feeds.Seconds, 1534614057000},
		{"1.5346140579996e9", feeds.Seconds, 1534614057999},
		{"1534614057999.9", feeds.Milliseconds, 1534614057999},
		{"1534614057999999", feeds.Microseconds, 1534614057999},
		{"1534614057999999999", feeds.Nanoseconds, 1534614057999},
		{"0.0009", feeds.Seconds, 0},
	} {
		if got, err := feeds.ParseUnixMilli(tt.in, tt.unit); err != nil || got != tt.want {
			t.Errorf("%s %s = %d, %v; want %d", tt.in, tt.unit, got, err, tt.want)
		}
	}
	for _, in := range []string{"", "-1", "x", "1e400", "NaN", "Inf", "0x10", "1.2.3", "1e99999999999", "99999999999999999999"} {
		if got, err := feeds.ParseUnixMilli(in, feeds.Seconds); err == nil {
			t.Errorf("%q = %d, want an error", in, got)
		}
	}
	if got, err := feeds.ParseRFC3339Milli("2013-10-07T13:44:59.9996Z"); err != nil || got != 1381153499999 {
		t.Errorf("rfc3339 = %d, %v", got, err)
	}
}
