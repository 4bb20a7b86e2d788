package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/feedtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func options(t *testing.T, s string) feeds.Config {
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(s), &n); err != nil {
		t.Fatal(err)
	}
	return feeds.Config{Name: "w", Type: "wave", Options: *n.Content[0]}
}

func TestWave(t *testing.T) {
	src, err := newWave(options(t, `{topics: [a, b], rate: 200, period: 2s}`))
	if err != nil {
		t.Fatal(err)
	}
	sink := &feedtest.Sink{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- src.Run(ctx, sink) }()
	feedtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if sink.Len() < 10 {
			return context.DeadlineExceeded
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, tk := range sink.Ticks() {
		if p, _ := tk.Get(feeds.FieldPrice); p < 90 || p > 110 {
			t.Errorf("price %v outside mid ± amplitude", p)
		}
	}
}

func TestWaveBadOptions(t *testing.T) {
	for opts, want := range map[string]string{
		`{rate: -1}`:        `feed "w": options.rate -1`,
		`{period: 10ms}`:    `feed "w": options.period 10ms`,
		`{topics: ["a b"]}`: `feed "w": options.topics: "a b"`,
		`{rat: 3}`:          `feed "w": options: yaml: unmarshal errors`,
	} {
		if _, err := newWave(options(t, opts)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %s", opts, err, want)
		}
	}
}
