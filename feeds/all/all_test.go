package all_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"

	"github.com/tickstream/tickstream/feeds"
	_ "github.com/tickstream/tickstream/feeds/all"
	"github.com/tickstream/tickstream/feeds/feedtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestTypesRegistered(t *testing.T) {
	got := fmt.Sprint(feeds.DefaultRegistry.Types())
	if got != "[nats replay sim websocket]" {
		t.Errorf("types %s", got)
	}
}

// TestReplayExample runs examples/replay.yaml's feeds from the repository
// root, as the example says to, and checks that each topic ticks and the
// backup stays in standby.
func TestReplayExample(t *testing.T) {
	t.Chdir("../..")
	data, err := os.ReadFile("examples/replay.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Feeds []feeds.Config `yaml:"feeds"`
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	// Play at full speed: the example's pacing is for people.
	for i := range cfg.Feeds {
		if cfg.Feeds[i].Type == "replay" {
			speed := &cfg.Feeds[i].Options
			for j := 0; j+1 < len(speed.Content); j += 2 {
				if speed.Content[j].Value == "speed" {
					speed.Content[j+1].Value = "max"
				}
			}
		}
	}
	sink := &feedtest.Sink{}
	sup, err := feeds.NewSupervisor(feeds.SupervisorConfig{Feeds: cfg.Feeds, Sink: func(string) feeds.Sink { return sink }})
	if err != nil {
		t.Fatal(err)
	}
	sup.Start()
	defer sup.Close(context.Background())
	feedtest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		seen := map[string]bool{}
		for _, tk := range sink.Ticks() {
			seen[tk.Topic] = true
		}
		for _, topic := range []string{"BTC-USD", "ETH-USD", "IBM", "AIG", "BAC"} {
			if !seen[topic] {
				return fmt.Errorf("no %s tick yet (seen %v)", topic, seen)
			}
		}
		return nil
	})
	for _, st := range sup.Statuses() {
		if st.Name == "sim-backup" && st.State != feeds.StateStandby {
			t.Errorf("backup %+v", st)
		}
	}
}

// TestBadConfig checks that start-up refuses bad feed configs with an error
// naming the feed and the setting, through the real registry.
func TestBadConfig(t *testing.T) {
	t.Chdir("../..")
	tests := []struct{ name, yaml, want string }{
		{"unknown type", `[{name: a, type: kafka}]`, `feed "a": feeds: unknown source "kafka" (known: nats, replay, sim, websocket)`},
		{"missing file", `[{name: r, type: replay, options: {file: testdata/nope.csv}}]`, `feed "r": options.file: open testdata/nope.csv: no such file or directory`},
		{"bad mapping", `[{name: r, type: replay, options: {file: testdata/ticks/binance_spot_trades_btcusdt_ethusdt_2024-08-08_head2000.csv, fields: {price: last_price}}}]`,
			`feed "r": options.fields: price: no column "last_price"`},
		{"bad ws url", `[{name: w, type: websocket, options: {url: "https://x", format: binance}}]`, `feed "w": options.url: "https://x": want ws:// or wss://`},
		{"bad subject", `[{name: n, type: nats, options: {subjects: ["a b"]}}]`, `feed "n": options.subjects[0]: "a b"`},
		{"typo in option", `[{name: s, type: sim, options: {rat: 3}}]`, `feed "s": options: yaml: unmarshal errors:`},
		{"unknown backup", `[{name: s, type: sim, backup: b}]`, `feed "s": backup: no feed named "b"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cfgs []feeds.Config
			if err := yaml.Unmarshal([]byte(tt.yaml), &cfgs); err != nil {
				t.Fatal(err)
			}
			_, err := feeds.NewSupervisor(feeds.SupervisorConfig{Feeds: cfgs, Sink: func(string) feeds.Sink { return &feedtest.Sink{} }})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v\nwant it to contain %s", err, tt.want)
			}
		})
	}
}
