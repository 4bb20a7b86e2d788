package server_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/server"
)

// flakyFeed publishes a price on its topic every 2 ms, and fails at once
// (and on every restart) while broken is set.
type flakyFeed struct {
	name, topic string
	broken      *atomic.Bool
}

func (ff *flakyFeed) Name() string { return ff.name }

func (ff *flakyFeed) Run(ctx context.Context, out feeds.Sink) error {
	if ff.broken.Load() {
		return errors.New("connection refused")
	}
	tk := time.NewTicker(2 * time.Millisecond)
	defer tk.Stop()
	for i := 1; ; i++ {
		select {
		case <-ctx.Done():
			return nil
		case <-tk.C:
			if ff.broken.Load() {
				return errors.New("lost connection")
			}
			if err := feeds.Deliver(out, feeds.Tick{Topic: ff.topic, TS: time.Now().UnixMilli(), Fields: []feeds.Field{f("price", float64(i))}}); err != nil {
				return feeds.Stopped(err)
			}
		}
	}
}

// busSink publishes into a bus set after the supervisor is built (the
// server needs the supervisor before the bus exists).
type busSink struct {
	bus  **stream.Bus
	feed string
}

func (s busSink) Publish(t feeds.Tick) error { return (*s.bus).Sink(s.feed).Publish(t) }

// PublishSeq passes the bus's seq on, as stream.FeedSink does.
func (s busSink) PublishSeq(t feeds.Tick) (uint64, error) { return (*s.bus).Sink(s.feed).PublishSeq(t) }

// TestTopicsSayTheirFeed: /api/topics names the feed that last published
// each topic, and while a backup feed stands in for a failed primary, the
// primaries it covers (backup_for), from a real feeds.Supervisor.
func TestTopicsSayTheirFeed(t *testing.T) {
	t.Parallel()
	broken := map[string]*atomic.Bool{"exchange": {}, "sim": {}, "steady": {}}
	topicOf := map[string]string{"exchange": "BTC-USD", "sim": "BTC-USD", "steady": "AAA"}
	reg := &feeds.Registry{}
	reg.Register("flaky", func(cfg feeds.Config) (feeds.Source, error) {
		return &flakyFeed{name: cfg.Name, topic: topicOf[cfg.Name], broken: broken[cfg.Name]}, nil
	})
	var bus *stream.Bus
	sup, err := feeds.NewSupervisor(feeds.SupervisorConfig{
		Registry: reg,
		Feeds: []feeds.Config{
			{Name: "exchange", Type: "flaky", Backup: "sim"},
			{Name: "sim", Type: "flaky"},
			{Name: "steady", Type: "flaky"},
		},
		Sink:       func(name string) feeds.Sink { return busSink{bus: &bus, feed: name} },
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, HealthyAfter: 50 * time.Millisecond, FailAfter: 3,
	})
	if err != nil {
		t.Fatal(err)
	}
	e := startServer(t, func(_ *stream.BusConfig, sc *server.Config) { sc.Feeds = sup })
	bus = e.bus // before Start: no feed runs yet
	sup.Start()
	t.Cleanup(func() { // before the bus closes (cleanups run last first)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := sup.Close(ctx); err != nil {
			t.Error(err)
		}
	})

	type entry struct {
		Topic     string   `json:"topic"`
		Feed      *string  `json:"feed"`
		BackupFor []string `json:"backup_for"`
	}
	want := func(btcFeed string, backupFor ...string) func() error {
		return func() error {
			var topics []entry
			if status, raw := e.get("/api/topics", &topics); status != 200 {
				return fmt.Errorf("/api/topics: %d %s", status, raw)
			}
			got := map[string]string{}
			for _, ti := range topics {
				feed := "<none>"
				if ti.Feed != nil {
					feed = *ti.Feed
				}
				got[ti.Topic] = fmt.Sprintf("feed=%s backup_for=%v", feed, ti.BackupFor)
			}
			exp := map[string]string{
				"AAA":     "feed=steady backup_for=[]",
				"BTC-USD": fmt.Sprintf("feed=%s backup_for=%v", btcFeed, append([]string{}, backupFor...)),
			}
			if fmt.Sprint(got) != fmt.Sprint(exp) {
				return fmt.Errorf("/api/topics\n got %v\nwant %v", got, exp)
			}
			return nil
		}
	}
	checkFor(t, 10*time.Second, 5*time.Millisecond, want("exchange"))

	broken["exchange"].Store(true) // the exchange feed fails; the simulator stands in
	checkFor(t, 10*time.Second, 5*time.Millisecond, want("sim", "exchange"))

	broken["exchange"].Store(false) // back: the simulator goes to standby
	checkFor(t, 10*time.Second, 5*time.Millisecond, want("exchange"))
}

// TestHTTPPublishThroughSupervisorReportsSeqs: as the command wires it,
// POST /api/publish goes through the supervisor's external "http" sink,
// which passes the bus's seqs on, so the answer's seqs are filled in.
func TestHTTPPublishThroughSupervisorReportsSeqs(t *testing.T) {
	t.Parallel()
	var bus *stream.Bus
	sup, err := feeds.NewSupervisor(feeds.SupervisorConfig{
		Registry: &feeds.Registry{},
		Sink:     func(name string) feeds.Sink { return busSink{bus: &bus, feed: name} },
	})
	if err != nil {
		t.Fatal(err)
	}
	e := startServer(t, func(_ *stream.BusConfig, sc *server.Config) {
		sc.Feeds = sup
		sc.PublishSink = sup.ExternalSink("http", "http")
	})
	bus = e.bus
	var res struct {
		Accepted int               `json:"accepted"`
		Seqs     map[string]uint64 `json:"seqs"`
	}
	status, raw := e.post("/api/publish", "application/json", []byte(`[{"topic":"SQ","price":1},{"topic":"SQ","price":2}]`), &res)
	if status != 200 || res.Accepted != 2 || res.Seqs["SQ"] != 2 {
		t.Fatalf("got %d %s: want 2 accepted and seqs SQ=2", status, raw)
	}
}
