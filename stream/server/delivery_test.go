package server_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/protocol"
	"github.com/tickstream/tickstream/stream/server"
)

// TestWSLaggingClearsWhenTopicGoesQuiet: a client stepped down by a burst
// of 20,000 ticks is told "lagging":false within one lag_throttle_ms of
// catching up, although no tick comes after the burst.
func TestWSLaggingClearsWhenTopicGoesQuiet(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name    string
		slow    bool // the client reads slowly during the burst
		sendBuf int
	}{
		{"slow reader", true, 32 << 10},
		{"fast reader", false, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			testLaggingClears(t, tt.slow, tt.sendBuf)
		})
	}
}

func testLaggingClears(t *testing.T, slowReader bool, sendBuf int) {
	// The rule promises the status one pace after the last write; the
	// check allows half a pace more for a loaded machine. The old rule
	// (three quick writes or empty paces) took two paces or more.
	const lag = 2 * time.Second
	const bound = lag + lag/2
	e := startServer(t, func(bc *stream.BusConfig, sc *server.Config) {
		bc.MaxPendingBytes = 64 << 10
		bc.LagThrottle = lag
		bc.Heartbeat = time.Minute
		sc.WriteTimeout = 30 * time.Second
		sc.SendBufferBytes = sendBuf
	})
	topics := []string{"B0", "B1", "B2", "B3"}
	for _, tp := range topics {
		e.publish(tp, 1, f("price", 1))
	}
	var slow atomic.Bool
	slow.Store(slowReader)
	c := e.dialSlowWS(t, &slow)
	c.expect(protocol.TypeWelcome)
	tr := newSeqTracker()
	subscribeAll(t, c, topics, tr)

	// A burst of 20,000 ticks, as fast as they come, then nothing; the
	// client reads slowly during the burst and at full speed after it.
	pub := startPublisher(t, e.bus, topics, 20_000, 0, 20_000)
	<-pub.done
	last := pub.finish()
	slow.Store(false)

	var statuses []msg
	var lastAt time.Time // when the message before the newest arrived
	deadline := time.Now().Add(60 * time.Second)
	var gap time.Duration
	read := func() {
		m := c.next(time.Until(deadline))
		now := time.Now()
		gap, lastAt = now.Sub(lastAt), now
		switch m.Type {
		case protocol.TypeUpdate:
			tr.update(t, m)
		case protocol.TypeStatus:
			statuses = append(statuses, m)
		default:
			t.Fatalf("unexpected %s", m)
		}
	}
	for {
		behind := false
		for tp, seq := range last {
			behind = behind || tr.last[tp] < seq
		}
		if !behind {
			break
		}
		read()
	}
	if len(statuses) == 0 {
		t.Fatalf("the burst never stepped the client down")
	}
	// The topic is quiet now. A step-down may still be queued behind the
	// last updates: the client must be told lagging false within a pace
	// of the last message, and then nothing more may come.
	for {
		select {
		case m, ok := <-c.msgs:
			if !ok || m.Type != protocol.TypeStatus {
				t.Fatalf("got %s (%v), want only statuses", m, c.err)
			}
			now := time.Now()
			gap, lastAt = now.Sub(lastAt), now
			statuses = append(statuses, m)
			t.Logf("status after %v: %s", gap, m)
			if !*m.Lagging && gap > bound {
				t.Errorf("lagging:false came %v after the message before it, want within lag_throttle_ms (%v; checked at %v)", gap, lag, bound)
			}
			continue
		case <-time.After(2 * lag):
		}
		if *statuses[len(statuses)-1].Lagging {
			t.Fatalf("still lagging %v after the last message, with nothing to send; statuses %v", time.Since(lastAt), statuses)
		}
		break
	}
	t.Logf("statuses %v", statuses)
	if n := e.metric("tickstream_lagging_clients"); n != 0 {
		t.Errorf("tickstream_lagging_clients %v after catching up", n)
	}
}
