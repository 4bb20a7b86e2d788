package client_test

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/client"
	"github.com/tickstream/tickstream/stream/protocol"
	"github.com/tickstream/tickstream/stream/server"
)

func Example() {
	// A tickstream server on a loopback port, with one tick of BTC-USD.
	bus, _ := stream.NewBus(stream.BusConfig{})
	srv, _ := server.New(server.Config{Bus: bus})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		bus.Close(ctx)
	}()
	publish := func(price float64) {
		tk := feeds.Tick{Topic: "BTC-USD", TS: 1_700_000_000_000}
		tk.Set(feeds.FieldPrice, price)
		bus.Publish("example", tk)
	}
	publish(61837.63)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "ws://"+ln.Addr().String()+"/ws", nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	topics, err := c.Subscribe(ctx, []string{"BTC-USD"}, 0, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("subscribed to", topics)
	for range 2 {
		m, err := c.Next(ctx)
		if err != nil {
			fmt.Println(err)
			return
		}
		switch m.Type {
		case protocol.TypeSnapshot:
			fmt.Println("snapshot", m.Topic, m.Seq, m.Data["price"])
			publish(61840.1) // after the snapshot: it comes as an update
		case protocol.TypeUpdate:
			fmt.Println("update", m.Topic, m.Seq, m.Data["price"], "n", m.Agg.N)
		}
	}
	fmt.Println("resume from", c.Cursors()["BTC-USD"].Seq)
	// Output:
	// subscribed to [BTC-USD]
	// snapshot BTC-USD 1 61837.63
	// update BTC-USD 2 61840.1 n 1
	// resume from 2
}
