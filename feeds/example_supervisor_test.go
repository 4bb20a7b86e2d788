package feeds_test

import (
	"context"
	"fmt"
	"time"

	"github.com/tickstream/tickstream/feeds"
)

// countdown publishes n ticks and finishes.
type countdown struct{ n int }

func (c countdown) Name() string { return "countdown" }

func (c countdown) Run(ctx context.Context, out feeds.Sink) error {
	for i := c.n; i > 0; i-- {
		if err := out.Publish(feeds.Tick{Topic: "T-MINUS", TS: int64(1000 * i), Fields: []feeds.Field{feeds.F("price", float64(i))}}); err != nil {
			return err
		}
	}
	return nil // done: shown as stopped, not restarted
}

func ExampleNewSupervisor() {
	reg := &feeds.Registry{} // tests and examples use a private registry
	reg.Register("countdown", func(cfg feeds.Config) (feeds.Source, error) { return countdown{n: 3}, nil })

	sup, err := feeds.NewSupervisor(feeds.SupervisorConfig{
		Registry: reg,
		Feeds:    []feeds.Config{{Name: "launch", Type: "countdown"}},
		Sink: func(feed string) feeds.Sink {
			return feeds.SinkFunc(func(t feeds.Tick) error {
				fmt.Println(feed, string(t.AppendJSON(nil)))
				return nil
			})
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	sup.Start()
	defer sup.Close(context.Background())
	for sup.Statuses()[0].State != feeds.StateStopped {
		time.Sleep(time.Millisecond)
	}
	st := sup.Statuses()[0]
	fmt.Println(st.Name, st.State, st.Ticks, st.Restarts)
	// Output:
	// launch {"topic":"T-MINUS","ts":3000,"price":3}
	// launch {"topic":"T-MINUS","ts":2000,"price":2}
	// launch {"topic":"T-MINUS","ts":1000,"price":1}
	// launch stopped 3 0
}
