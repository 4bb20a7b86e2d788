// Package client is a small Go client of a tickstream server's WebSocket
// endpoint (/ws) and history API (/api/history), for tools (tickstream
// record), tests and examples.
//
// Dial connects and reads the welcome; Subscribe sends a subscribe and
// returns once the server has acknowledged it; Next returns the server's
// messages one at a time, decoded as protocol.WireMessage (a frame may
// carry several, separated by "\n"). The connection answers the server's
// heartbeat pings while Next waits, and gives up on a server from which
// nothing, not even a ping, has come for three heartbeats
// (Options.IdleTimeout).
//
// Conn.Cursors keeps every topic's (epoch, seq) as of the last snapshot or
// update Next returned. To reconnect without loss or duplicates, Dial
// again and pass them to Subscribe as resume: the server replays what was
// missed, or, when it no longer can, sends a reset and a snapshot.
// Conn.History and Conn.Backfill fetch raw ticks from /api/history (the
// HTTP URL is derived from the WebSocket one), for instance to fill in the
// ticks that an update with agg.n > 1 folded together.
//
// Bars keeps a topic's candles of one interval exact from its updates
// (agg.b, see docs/protocol.md "Candles from updates"), at any throttle
// and however far the ticks' ts lags: seed it with /api/candles and Fold
// every later update.
//
// Usage:
//
//	c, err := client.Dial(ctx, "ws://localhost:8080/ws", nil)
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//	if _, err := c.Subscribe(ctx, []string{"BTC-USD"}, 250*time.Millisecond, nil); err != nil {
//		return err
//	}
//	for {
//		m, err := c.Next(ctx)
//		if err != nil {
//			return err // reconnect with c.Cursors() as resume
//		}
//		if m.Type == protocol.TypeUpdate {
//			fmt.Println(m.Topic, m.Seq, m.Data["price"], m.Agg.N)
//		}
//	}
//
// Publishing: Conn.Publish sends one publish op and waits for its ack. A
// Producer keeps its own connection: Producer.Publish queues a batch under
// a fresh message id (at most ProducerOptions.MaxQueue wait; one more fails
// with ErrQueueFull), sends the queue in order, and after a dropped
// connection redials and sends what was not acknowledged again with the
// same ids, which the server answers from its idempotency window instead
// of publishing twice.
//
// Concurrency: Next, Subscribe, Unsubscribe, Ping and Publish read the connection,
// so they are called from one goroutine; the other methods may be called
// from any.
package client
