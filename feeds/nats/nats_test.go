package nats

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	natsgo "github.com/nats-io/nats.go"
	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/feedtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const binanceCSV = "../../testdata/ticks/binance_spot_trades_btcusdt_ethusdt_2024-08-08_head2000.csv"

// runServer starts an in-process NATS server on a random 127.0.0.1 port.
func runServer(t *testing.T) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(5 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

// start runs a source until the test ends and waits for its subscription.
func start(t *testing.T, ns *server.Server, o Options) *feedtest.Sink {
	t.Helper()
	o.URL = ns.ClientURL()
	s, err := NewSource("n", o)
	if err != nil {
		t.Fatal(err)
	}
	sink := &feedtest.Sink{}
	before := ns.NumSubscriptions()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, sink) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil on cancel", err)
		}
	})
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if ns.NumSubscriptions() < before+uint32(len(o.Subjects)) {
			return fmt.Errorf("not subscribed yet")
		}
		return nil
	})
	return sink
}

func publisher(t *testing.T, ns *server.Server) *natsgo.Conn {
	nc, err := natsgo.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func TestRecordedTicksOverNATS(t *testing.T) {
	t.Parallel()
	want := feedtest.BinanceTrades(t, binanceCSV)
	tests := []struct {
		name    string
		opts    Options
		subject func(feeds.Tick) string
		body    func(feeds.Tick) []byte
	}{
		{"topic in json", Options{Subjects: []string{"ticks.>"}},
			func(tk feeds.Tick) string { return "ticks.binance." + tk.Topic },
			func(tk feeds.Tick) []byte { return tk.AppendJSON(nil) }},
		{"topic from subject", Options{Subjects: []string{"md.*"}, SubjectTopic: true, StripPrefix: "md."},
			func(tk feeds.Tick) string { return "md." + tk.Topic },
			func(tk feeds.Tick) []byte {
				// Drop "topic" from the JSON: {"topic":"X","ts":…} → {"ts":…}
				b := tk.AppendJSON(nil)
				i := strings.Index(string(b), `"ts"`)
				return append([]byte("{"), b[i:]...)
			}},
		{"renamed, exchange style", Options{Subjects: []string{"binance.trade.*"}, Rename: map[string]string{"BTC-USD": "crypto.BTC", "ETH-USD": "crypto.ETH"}},
			func(tk feeds.Tick) string { return "binance.trade.x" },
			func(tk feeds.Tick) []byte { return tk.AppendJSON(nil) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ns := runServer(t)
			sink := start(t, ns, tt.opts)
			pub := publisher(t, ns)
			for _, tk := range want {
				if err := pub.Publish(tt.subject(tk), tt.body(tk)); err != nil {
					t.Fatal(err)
				}
			}
			// Noise that must be skipped without stopping the feed.
			pub.Publish(tt.subject(want[0]), []byte("not json"))
			pub.Publish(tt.subject(want[0]), []byte(`{"topic":"X","ts":1,"price":"NaN"}`))
			pub.Flush()
			exp := want
			if len(tt.opts.Rename) > 0 {
				exp = nil
				for _, tk := range want {
					tk.Topic = tt.opts.Rename[tk.Topic]
					exp = append(exp, tk)
				}
			}
			feedtest.CheckFor(t, 10*time.Second, 2*time.Millisecond, func() error {
				if n := sink.Len(); n < len(exp) {
					return fmt.Errorf("%d of %d ticks", n, len(exp))
				}
				return nil
			})
			if diff := feedtest.Equal(sink.Ticks(), exp); diff != "" {
				t.Error(diff)
			}
		})
	}
}

func TestServerGoneRestarts(t *testing.T) {
	t.Parallel()
	ns := runServer(t)
	reg := &feeds.Registry{}
	reg.Register("nats", New)
	var opts yaml.Node
	yaml.Unmarshal([]byte(`{url: "`+ns.ClientURL()+`", subjects: [ticks.>]}`), &opts)
	sink := &feedtest.Sink{}
	sup, err := feeds.NewSupervisor(feeds.SupervisorConfig{
		Registry: reg, Feeds: []feeds.Config{{Name: "bus", Type: "nats", Options: *opts.Content[0]}},
		Sink:       func(string) feeds.Sink { return sink },
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond, HealthyAfter: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sup.Close(context.Background())
	sup.Start()
	status := func() feeds.Status { return sup.Statuses()[0] }
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if st := status(); st.State != feeds.StateRunning {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	ns.Shutdown()
	ns.WaitForShutdown()
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		st := status()
		if st.State == feeds.StateRunning || st.Restarts == 0 || !strings.Contains(st.LastError, `feed "bus": options.url nats://127.0.0.1:`) {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
}

func TestUnreachable(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s, err := NewSource("n", Options{URL: "nats://" + addr, Subjects: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Run(context.Background(), &feedtest.Sink{})
	if err == nil || !strings.Contains(err.Error(), `feed "n": options.url nats://`+addr) {
		t.Errorf("Run = %v", err)
	}
}

func TestNewBadOptions(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, yaml, want string }{
		{"no subjects", `{url: "nats://x:1"}`, `options.subjects: missing`},
		{"bad subject", `{subjects: ["a..b"]}`, `options.subjects[0]: "a..b"`},
		{"bad wildcard", `{subjects: ["a.>.b"]}`, `options.subjects[0]: "a.>.b"`},
		{"bad url", `{url: "localhost", subjects: [a]}`, `options.url: "localhost"`},
		{"strip without subject_topic", `{subjects: [a], strip_prefix: "a."}`, `options.strip_prefix: set, but subject_topic is false`},
		{"unknown key", `{subject: [a]}`, `options: yaml: unmarshal errors`},
		{"bad rename", `{subjects: [a], rename: {A: "B C"}}`, `options.rename: A: "B C"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var n yaml.Node
			if err := yaml.Unmarshal([]byte(tt.yaml), &n); err != nil {
				t.Fatal(err)
			}
			_, err := New(feeds.Config{Name: "n", Options: *n.Content[0]})
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), `feed "n"`) {
				t.Errorf("err = %v\nwant it to contain %s", err, tt.want)
			}
		})
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	if got := redact("nats://u:secret@h:4222"); strings.Contains(got, "secret") {
		t.Error(got)
	}
}

// FuzzDecode runs arbitrary subjects and payloads through decode: no
// panic, and what it accepts is a valid tick.
func FuzzDecode(f *testing.F) {
	f.Add("ticks.BTC-USD", `{"topic":"BTC-USD","ts":1723161255342,"price":61837.63,"size":0.02,"fields":{"trade_id":3735683259}}`)
	f.Add("ticks.ETH-USD", `{"ts":1723161255611,"price":"2683.8"}`)
	f.Add("ticks.X", `{}`)
	f.Add("ticks.X", `{ }`)
	f.Add("a b", `{"price":1}`)
	f.Add("x", `{"topic":"Y","topic":"Z","price":1}`)
	s := &Source{opts: Options{SubjectTopic: true, StripPrefix: "ticks."}}
	plain := &Source{}
	f.Fuzz(func(t *testing.T, subject, data string) {
		for _, src := range []*Source{s, plain} {
			tk, err := src.decode(subject, []byte(data))
			if err != nil {
				continue
			}
			if err := tk.Validate(); err != nil {
				t.Fatalf("accepted invalid tick %+v: %v", tk, err)
			}
		}
	})
}

// TestBadMessagesDroppedBusClosedStops: a message that is not a tick is
// reported as dropped, and a closed bus ends Run with nil.
func TestBadMessagesDroppedBusClosedStops(t *testing.T) {
	t.Parallel()
	ns := runServer(t)
	s, err := NewSource("n", Options{URL: ns.ClientURL(), Subjects: []string{"ticks.>"}})
	if err != nil {
		t.Fatal(err)
	}
	sink := &feedtest.Sink{}
	before := ns.NumSubscriptions()
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background(), sink) }()
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if ns.NumSubscriptions() < before+1 {
			return fmt.Errorf("not subscribed yet")
		}
		return nil
	})
	pub := publisher(t, ns)
	pub.Publish("ticks.x", []byte("not json"))
	pub.Publish("ticks.x", []byte(`{"topic":"X","ts":1,"price":1}`))
	pub.Flush()
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if sink.Len() < 1 {
			return fmt.Errorf("no tick yet")
		}
		return nil
	})
	if d := sink.Drops(); len(d) != 1 || d[0] != feeds.DropUnmapped {
		t.Errorf("drops %v, want [unmapped]", d)
	}
	sink.FailWith(fmt.Errorf("stream: %w", feeds.ErrClosed))
	pub.Publish("ticks.x", []byte(`{"topic":"X","ts":2,"price":2}`))
	pub.Flush()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil on a closed bus", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop on a closed bus")
	}
}
