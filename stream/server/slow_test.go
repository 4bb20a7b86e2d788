package server_test

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/protocol"
	"github.com/tickstream/tickstream/stream/server"
)

// bigTick is a tick of about 500 bytes on the wire.
func bigTick(topic string, i int) feeds.Tick {
	tk := feeds.Tick{Topic: topic, TS: int64(1_000_000 + i)}
	tk.Set("price", 100+float64(i%1000)/10)
	tk.Set("size", float64(i%10+1))
	for j := range 28 {
		tk.Set(fmt.Sprintf("f%02d", j), float64(i)+float64(j)/1000)
	}
	return tk
}

// publisher publishes big ticks round-robin on topics, in bursts, until
// stop is closed or max ticks are out. It returns the last seq per topic.
type publisher struct {
	stop chan struct{}
	done chan struct{}
	n    atomic.Int64
	mu   sync.Mutex
	last map[string]uint64
}

func startPublisher(t testing.TB, bus *stream.Bus, topics []string, burst int, pause time.Duration, max int) *publisher {
	p := &publisher{stop: make(chan struct{}), done: make(chan struct{}), last: make(map[string]uint64)}
	go func() {
		defer close(p.done)
		for i := 0; i < max; i++ {
			if i%burst == 0 && i > 0 {
				select {
				case <-p.stop:
					return
				case <-time.After(pause):
				}
			}
			topic := topics[i%len(topics)]
			seq, err := bus.Publish("test", bigTick(topic, i))
			if err != nil {
				t.Error(err)
				return
			}
			p.mu.Lock()
			p.last[topic] = seq
			p.mu.Unlock()
			p.n.Add(1)
		}
	}()
	return p
}

func (p *publisher) finish() map[string]uint64 {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// subscribeAll subscribes c at throttle 0 and starts tr at the snapshots.
func subscribeAll(t testing.TB, c *wsClient, topics []string, tr *seqTracker) {
	t.Helper()
	c.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: topics, ThrottleMS: ms(0)})
	c.expect(protocol.TypeAck)
	for range topics {
		s := c.expect(protocol.TypeSnapshot)
		tr.start(s.Topic, s.Seq)
	}
}

// readUntil reads c's updates into tr until every topic reaches last.
// Status messages are passed to onStatus.
func readUntil(t testing.TB, c *wsClient, tr *seqTracker, last map[string]uint64, timeout time.Duration, onStatus func(msg)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	behind := func() bool {
		for topic, seq := range last {
			if tr.last[topic] < seq {
				return true
			}
		}
		return false
	}
	for behind() {
		m := c.next(time.Until(deadline))
		switch m.Type {
		case protocol.TypeUpdate:
			tr.update(t, m)
		case protocol.TypeStatus:
			if onStatus == nil {
				t.Fatalf("unexpected %s", m)
			}
			onStatus(m)
		default:
			t.Fatalf("unexpected %s", m)
		}
	}
}

func TestWSStuckClientDoesNotSlowOthers(t *testing.T) {
	t.Parallel()
	const maxPending = 64 << 10
	e := startServer(t, func(bc *stream.BusConfig, sc *server.Config) {
		bc.MaxPendingBytes = maxPending
		bc.LagThrottle = 200 * time.Millisecond
		sc.WriteTimeout = time.Second
	})
	topics := []string{"S0", "S1", "S2", "S3"}
	for _, tp := range topics {
		e.publish(tp, 1, f("price", 1))
	}

	stuck := e.dialWS(t, wsOpts{noReader: true, rcvBuf: 4096})
	stuck.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: topics, ThrottleMS: ms(0)})
	normal, _ := e.welcomeWS(t, wsOpts{})
	tr := newSeqTracker()
	subscribeAll(t, normal, topics, tr)
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := e.bus.Subscribers(); n != 2 {
			return fmt.Errorf("%d subscribers", n)
		}
		return nil
	})

	pub := startPublisher(t, e.bus, topics, 40, 2*time.Millisecond, 200_000)
	var maxSeen atomic.Int64
	start := time.Now()
	// The normal client reads as the ticks come, while the pending bytes
	// are sampled.
	readErr := make(chan struct{})
	go func() {
		defer close(readErr)
		for {
			select {
			case <-pub.done:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if v := int64(e.metric("tickstream_pending_bytes")); v > maxSeen.Load() {
				maxSeen.Store(v)
			}
		}
	}()
	var sawClose time.Duration
	deadline := time.Now().Add(15 * time.Second)
	for e.metric("tickstream_slow_closes_total") < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the stuck client was not closed after %v (%d ticks)", time.Since(start), pub.n.Load())
		}
		select {
		case m, ok := <-normal.msgs:
			if !ok {
				t.Fatalf("normal client closed: %v", normal.err)
			}
			switch m.Type {
			case protocol.TypeUpdate:
				tr.update(t, m)
			case protocol.TypeStatus:
				// Under -race on 2 cores the normal client may briefly
				// fall behind too; its updates must stay exact anyway.
				t.Logf("normal client: %s", m)
			default:
				t.Fatalf("normal client got %s", m)
			}
		case <-time.After(10 * time.Millisecond):
		}
	}
	sawClose = time.Since(start)
	last := pub.finish()
	<-readErr
	t.Logf("stuck client closed after %v and %d ticks; max pending %d bytes", sawClose, pub.n.Load(), maxSeen.Load())
	readUntil(t, normal, tr, last, 10*time.Second, func(m msg) { t.Logf("normal client: %s", m) })
	if lim := int64(4*maxPending + 64<<10); maxSeen.Load() > lim {
		t.Errorf("pending bytes reached %d, over %d", maxSeen.Load(), lim)
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := e.bus.Subscribers(); n != 1 {
			return fmt.Errorf("%d subscribers, want only the normal one", n)
		}
		return nil
	})
	normal.send([]byte(`{"op":"ping","id":1}`))
	for m := normal.next(5 * time.Second); m.Type != protocol.TypePong; m = normal.next(5 * time.Second) {
		if m.Type != protocol.TypeStatus {
			t.Fatalf("got %s, want a pong", m)
		}
	}
}

// slowConn reads at most 1 KiB per 2 ms while slow is set.
type slowConn struct {
	net.Conn
	slow *atomic.Bool
}

func (c slowConn) Read(p []byte) (int, error) {
	if c.slow.Load() {
		time.Sleep(2 * time.Millisecond)
		if len(p) > 1024 {
			p = p[:1024]
		}
	}
	return c.Conn.Read(p)
}

func TestWSSlowReaderStepsDownAndRecovers(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		fast time.Duration // how long ticks keep coming once the client reads fast again
	}{
		{"ticks keep coming", 500 * time.Millisecond},
		{"ticks stop", 0}, // it must still be told it caught up
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			testSlowReader(t, tt.fast)
		})
	}
}

func testSlowReader(t *testing.T, fastFor time.Duration) {
	const maxPending = 64 << 10
	const lag = 100 * time.Millisecond
	e := startServer(t, func(bc *stream.BusConfig, sc *server.Config) {
		bc.MaxPendingBytes = maxPending
		bc.LagThrottle = lag
		sc.WriteTimeout = 5 * time.Second
		sc.SendBufferBytes = 32 << 10 // the backlog stays where the bus sees it
	})
	topics := []string{"L0", "L1", "L2", "L3"}
	for _, tp := range topics {
		e.publish(tp, 1, f("price", 1))
	}
	var slow atomic.Bool
	slow.Store(true)
	c := e.dialSlowWS(t, &slow)
	c.expect(protocol.TypeWelcome)
	tr := newSeqTracker()
	subscribeAll(t, c, topics, tr)
	first := make(map[string]uint64)
	for k, v := range tr.last {
		first[k] = v
	}

	pub := startPublisher(t, e.bus, topics, 40, time.Millisecond, 1_000_000)
	start := time.Now()
	var statuses []msg
	deadline := time.Now().Add(20 * time.Second)
	read := func() {
		m := c.next(time.Until(deadline))
		switch m.Type {
		case protocol.TypeUpdate:
			tr.update(t, m)
		case protocol.TypeStatus:
			statuses = append(statuses, m)
		default:
			t.Fatalf("unexpected %s", m)
		}
	}
	for len(statuses) == 0 { // slow until told it is lagging
		read()
	}
	t.Logf("told lagging after %v, %d ticks", time.Since(start), pub.n.Load())
	slow.Store(false) // then it reads at full speed again
	fast := time.Now()
	for time.Since(fast) < fastFor {
		read()
	}
	last := pub.finish()
	// Read everything; then, with no more ticks, the client must be told
	// that it caught up.
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
	// A step-down may still be queued behind the last updates: wait until
	// the stream is quiet and its last status says lagging false.
	for settled := false; !settled; {
		select {
		case m, ok := <-c.msgs:
			if !ok || m.Type != protocol.TypeStatus {
				t.Fatalf("got %s (%v), want only statuses", m, c.err)
			}
			statuses = append(statuses, m)
		case <-time.After(5 * lag):
			settled = !*statuses[len(statuses)-1].Lagging
			if time.Now().After(deadline) {
				t.Fatalf("still lagging with nothing to send; statuses %v", statuses)
			}
		}
	}
	t.Logf("%d statuses, %d ticks", len(statuses), pub.n.Load())
	// Statuses alternate: lagging true (with the lag throttle), false, …,
	// and end with false.
	for i, s := range statuses {
		wantLag := i%2 == 0
		if s.Lagging == nil || *s.Lagging != wantLag || s.ThrottleMS == nil || (wantLag && *s.ThrottleMS != lag.Milliseconds()) {
			t.Errorf("status %d %s: want lagging %v (throttle_ms %d while lagging)", i, s, wantLag, lag.Milliseconds())
		}
	}
	var published, received int64
	for _, tp := range topics {
		published += int64(last[tp] - first[tp])
		received += tr.n[tp]
	}
	if received != published {
		t.Errorf("sum of agg.n %d, want the %d ticks published after the snapshots", received, published)
	}
	if n := e.metric("tickstream_lagging_clients"); n != 0 {
		t.Errorf("tickstream_lagging_clients %v after catching up", n)
	}
	c.quiet(300 * time.Millisecond)
}

// dialSlowWS dials /ws over a connection that reads slowly while slow is set.
func (e *env) dialSlowWS(t testing.TB, slow *atomic.Bool) *wsClient {
	t.Helper()
	return e.dialWS(t, wsOpts{rcvBuf: 4096, wrap: func(c net.Conn) net.Conn { return slowConn{Conn: c, slow: slow} }})
}

func TestSSEStuckClientIsClosed(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(bc *stream.BusConfig, sc *server.Config) {
		bc.MaxPendingBytes = 64 << 10
		bc.LagThrottle = 100 * time.Millisecond
		sc.WriteTimeout = time.Second
	})
	topics := []string{"Q0", "Q1"}
	for _, tp := range topics {
		e.publish(tp, 1, f("price", 1))
	}
	// A raw client that sends the request and never reads the stream.
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /sse?topics=Q0,Q1&throttle_ms=0 HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := e.bus.Subscribers(); n != 1 {
			return fmt.Errorf("%d subscribers", n)
		}
		return nil
	})
	// A normal SSE client on the same topics.
	c := e.openSSE(t, "/sse?topics=Q0,Q1&throttle_ms=0", nil)
	tr := newSeqTracker()
	pub := startPublisher(t, e.bus, topics, 40, 2*time.Millisecond, 200_000)
	deadline := time.Now().Add(15 * time.Second)
	for e.metric("tickstream_slow_closes_total") < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the stuck SSE client was not closed (%d ticks, %d subscribers, lagging %v, pending %v)", pub.n.Load(), e.bus.Subscribers(), e.metric("tickstream_lagging_clients"), e.metric("tickstream_pending_bytes"))
		}
		select {
		case ev, ok := <-c.events:
			if !ok {
				t.Fatalf("normal SSE client ended: %v", c.err)
			}
			if ev.Event == "" {
				continue
			}
			m := parseMsg(t, []byte(ev.Data))
			switch m.Type {
			case protocol.TypeSnapshot:
				tr.start(m.Topic, m.Seq)
			case protocol.TypeUpdate:
				tr.update(t, m)
			}
		case <-time.After(10 * time.Millisecond):
		}
	}
	last := pub.finish()
	t.Logf("stuck SSE client closed after %d ticks", pub.n.Load())
	for {
		behind := false
		for tp, seq := range last {
			behind = behind || tr.last[tp] < seq
		}
		if !behind {
			break
		}
		_, m := c.nextEvent(time.Until(deadline))
		if m.Type == protocol.TypeUpdate {
			tr.update(t, m)
		}
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := e.bus.Subscribers(); n != 1 {
			return fmt.Errorf("%d subscribers, want only the normal one", n)
		}
		return nil
	})
}
