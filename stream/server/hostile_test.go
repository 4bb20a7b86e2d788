package server_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/protocol"
	"github.com/tickstream/tickstream/stream/server"
)

// hostileHeapBound is the most the live heap may grow, over the server's
// baseline, after any attack of the hostile suite has ended (README,
// Deploying). It bounds what attackers leave behind: open attack
// connections are each bounded by the per-connection bound, and closed
// ones must leave nothing.
const hostileHeapBound = 64 << 20

// goodClient is a well-behaved WebSocket client subscribed to one topic
// at throttle 0: it must get every tick, in order, whatever else happens.
type goodClient struct {
	conn *websocket.Conn
	done chan struct{}

	mu        sync.Mutex
	last      uint64
	n         int64
	problem   string
	latencies []time.Duration
}

func newGoodClient(t *testing.T, e *env, topic string) *goodClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws://"+e.addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadLimit(64 << 20)
	g := &goodClient{conn: conn, done: make(chan struct{})}
	b, _ := json.Marshal(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{topic}, ThrottleMS: ms(0)})
	if err := conn.Write(ctx, websocket.MessageText, b); err != nil {
		t.Fatal(err)
	}
	go g.read()
	t.Cleanup(func() { _ = conn.CloseNow(); <-g.done })
	return g
}

func (g *goodClient) read() {
	defer close(g.done)
	for {
		_, frame, err := g.conn.Read(context.Background())
		if err != nil {
			g.fail("connection ended: %v", err) // at cleanup, harmless
			return
		}
		now := time.Now().UnixMicro()
		for _, line := range bytes.Split(frame, []byte{'\n'}) {
			var m protocol.WireMessage
			if err := json.Unmarshal(line, &m); err != nil {
				g.fail("bad message %q", line)
				continue
			}
			g.mu.Lock()
			switch m.Type {
			case protocol.TypeSnapshot:
				g.last = m.Seq
			case protocol.TypeUpdate:
				if m.Agg == nil || m.Seq-uint64(m.Agg.N) != g.last {
					g.problem = fmt.Sprintf("update %s does not follow seq %d", line, g.last)
				}
				g.last = m.Seq
				g.n += m.Agg.N
				g.latencies = append(g.latencies, time.Duration(now-int64(m.Data["sent_us"].Float()))*time.Microsecond)
			case protocol.TypeStatus, protocol.TypeError:
				g.problem = fmt.Sprintf("the good client got %s", line)
			}
			g.mu.Unlock()
		}
	}
}

func (g *goodClient) fail(format string, args ...any) {
	g.mu.Lock()
	if g.problem == "" { // keep the first
		g.problem = fmt.Sprintf(format, args...)
	}
	g.mu.Unlock()
}

func (g *goodClient) state() (last uint64, problem string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.last, g.problem
}

// fromAddr is a dialer bound to one loopback source address, so that each
// attack has its own client address (per-address limits) and the good
// client keeps 127.0.0.1.
func fromAddr(ip string) *net.Dialer {
	return &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
}

func httpFrom(ip string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: fromAddr(ip).DialContext}, Timeout: 30 * time.Second}
}

// rawWS opens a WebSocket from ip at the TCP level (see rawWSHandshake).
func rawWS(t testing.TB, addr, ip string) net.Conn {
	t.Helper()
	conn, err := fromAddr(ip).Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return upgradeRaw(t, conn, addr)
}

// frame is one masked client frame of any size.
func frame(opcode byte, payload []byte) []byte {
	f := []byte{0x80 | opcode}
	switch n := len(payload); {
	case n < 126:
		f = append(f, 0x80|byte(n))
	case n < 1<<16:
		f = append(f, 0x80|126, byte(n>>8), byte(n))
	default:
		f = append(f, 0x80|127)
		f = binary.BigEndian.AppendUint64(f, uint64(n))
	}
	key := [4]byte{9, 8, 7, 6}
	f = append(f, key[:]...)
	for i, c := range payload {
		f = append(f, c^key[i%4])
	}
	return f
}

// drainUntilClosed reads conn until the server closes it, or fails the
// test after timeout.
func drainUntilClosed(t *testing.T, conn net.Conn, timeout time.Duration) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	_, err := io.Copy(io.Discard, conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the server kept the connection open %v", timeout)
	}
}

// writeUntilClosed writes f to conn until a write fails (the server closed
// it) or n frames are out.
func writeUntilClosed(conn net.Conn, f []byte, n int) {
	_ = conn.SetWriteDeadline(time.Now().Add(20 * time.Second))
	for range n {
		if _, err := conn.Write(f); err != nil {
			return
		}
	}
}

// TestHostileClients runs attacks one after another against one server
// while a well-behaved client receives a tick every 2 ms. After each
// attack the server answers /healthz and its live heap is within
// hostileHeapBound of its baseline; at the end the good client has every
// tick, in order. Its latency is reported, not asserted. Not parallel: it
// measures the process heap.
func TestHostileClients(t *testing.T) {
	if testing.Short() {
		t.Skip("the hostile suite takes about 20 s")
	}
	e := startServer(t, func(bc *stream.BusConfig, sc *server.Config) {
		// Short enough for the silent-peer attack, long enough that the
		// good client's pongs arrive in time on a loaded -race run.
		bc.Heartbeat = 2 * time.Second
		sc.ReadTimeout = time.Second
		sc.MaxTopicsPerPublisher = 2000
	})
	good := newGoodClient(t, e, "GOOD")
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if e.bus.Subscribers() != 1 {
			return fmt.Errorf("not subscribed yet")
		}
		return nil
	})
	var published atomic.Uint64
	stop := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		tk := time.NewTicker(2 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				seq, err := e.bus.Publish("good", feeds.Tick{Topic: "GOOD", Fields: []feeds.Field{
					feeds.F("price", 100), feeds.F("sent_us", float64(time.Now().UnixMicro()))}})
				if err != nil {
					good.fail("publish: %v", err)
					return
				}
				published.Store(seq)
			}
		}
	}()
	base := liveHeap()
	healthy := func(t *testing.T) {
		t.Helper()
		if status, raw := e.get("/healthz", nil); status != 200 {
			t.Fatalf("/healthz: %d %s", status, raw)
		}
		if _, problem := good.state(); problem != "" {
			t.Fatalf("good client: %s", problem)
		}
	}

	attacks := []struct {
		name string
		run  func(t *testing.T, ip string)
	}{
		{"garbage, binary and invalid UTF-8 frames", func(t *testing.T, ip string) {
			for _, payload := range [][]byte{
				[]byte("\x00\xff garbage {{{"),
				{0xc3, 0x28, 0xa0, 0xa1}, // invalid UTF-8 in a text frame
				[]byte(`{"op":"subscribe","topics":["\xff\xfe"]}`),
			} {
				conn := rawWS(t, e.addr, ip)
				writeUntilClosed(conn, frame(0x1, payload), 50)
				drainUntilClosed(t, conn, 10*time.Second) // bad_json errors, then 1008 (or 1007)
			}
			conn := rawWS(t, e.addr, ip)
			writeUntilClosed(conn, frame(0x2, []byte{1, 2, 3}), 50) // binary
			drainUntilClosed(t, conn, 10*time.Second)
			conn = rawWS(t, e.addr, ip)
			_, _ = conn.Write([]byte{0x81, 0xff, 0, 0}) // a truncated header, then silence
			drainUntilClosed(t, conn, 10*time.Second)
		}},
		{"half-open and silent peers", func(t *testing.T, ip string) {
			// A WebSocket peer that never answers a ping is dropped
			// within two heartbeats; a TCP connection that never sends
			// a request, or half a request, is dropped by the read
			// timeout.
			conns := []net.Conn{rawWS(t, e.addr, ip)}
			for _, half := range []string{"", "GET /sse?topics=GOOD HTTP/1.1\r\nHo"} {
				c, err := fromAddr(ip).Dial("tcp", e.addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				_, _ = c.Write([]byte(half))
				conns = append(conns, c)
			}
			for _, c := range conns {
				drainUntilClosed(t, c, 10*time.Second)
			}
		}},
		{"slowloris on HTTP and SSE", func(t *testing.T, ip string) {
			var wg sync.WaitGroup
			for i := range 40 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := fromAddr(ip).Dial("tcp", e.addr)
					if err != nil {
						return
					}
					defer c.Close()
					req := "GET /healthz HTTP/1.1\r\nHost: x\r\n"
					if i%2 == 0 {
						req = "GET /sse?topics=GOOD HTTP/1.1\r\nHost: x\r\n"
					}
					_ = c.SetDeadline(time.Now().Add(15 * time.Second))
					if _, err := c.Write([]byte(req)); err != nil {
						return
					}
					for { // a header byte every 200 ms, never the end
						time.Sleep(200 * time.Millisecond)
						if _, err := c.Write([]byte("X")); err != nil {
							return // cut off
						}
					}
				}()
			}
			wg.Wait()
		}},
		{"subscribe/unsubscribe churn", func(t *testing.T, ip string) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			conn, _, err := websocket.Dial(ctx, "ws://"+e.addr+"/ws", &websocket.DialOptions{HTTPClient: httpFrom(ip)})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.CloseNow()
			go func() { // read and drop
				for {
					if _, _, err := conn.Read(ctx); err != nil {
						return
					}
				}
			}()
			deadline := time.Now().Add(2 * time.Second)
			for i := 0; time.Now().Before(deadline); i++ {
				op := "subscribe"
				if i%2 == 1 {
					op = "unsubscribe"
				}
				if conn.Write(ctx, websocket.MessageText, []byte(`{"op":"`+op+`","topics":["GOOD","*","X.`+itoa(i%7)+`"],"throttle_ms":0}`)) != nil {
					return
				}
				time.Sleep(25 * time.Millisecond) // within max_msgs_per_sec
			}
		}},
		{"* from many clients", func(t *testing.T, ip string) {
			for i := range 200 {
				e.publish(fmt.Sprintf("MANY.%03d", i), 1, f("price", float64(i)))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var conns []*websocket.Conn
			for range 60 {
				conn, _, err := websocket.Dial(ctx, "ws://"+e.addr+"/ws", &websocket.DialOptions{HTTPClient: httpFrom(ip)})
				if err != nil {
					t.Fatal(err)
				}
				conn.SetReadLimit(64 << 20)
				defer conn.CloseNow()
				_ = conn.Write(ctx, websocket.MessageText, []byte(`{"op":"subscribe","topics":["*"]}`))
				conns = append(conns, conn)
			}
			// Half read everything for a while, half never read.
			var wg sync.WaitGroup
			for _, c := range conns[:30] {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
					defer rcancel()
					for {
						if _, _, err := c.Read(rctx); err != nil {
							return
						}
					}
				}()
			}
			wg.Wait()
		}},
		{"huge topic lists", func(t *testing.T, ip string) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			conn, _, err := websocket.Dial(ctx, "ws://"+e.addr+"/ws", &websocket.DialOptions{HTTPClient: httpFrom(ip)})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.CloseNow()
			conn.SetReadLimit(64 << 20)
			topics := make([]string, 5000)
			for i := range topics {
				topics[i] = fmt.Sprintf("HUGE.TOPIC.%05d", i)
			}
			for _, n := range []int{1001, 5000} { // over max_topics_per_conn; over max_frame_bytes
				b, _ := json.Marshal(subscribeMsg{Op: "subscribe", ID: n, Topics: topics[:n]})
				_ = conn.Write(ctx, websocket.MessageText, b)
			}
			codes := map[string]bool{}
			for len(codes) < 2 {
				_, fr, err := conn.Read(ctx)
				if err != nil {
					t.Fatalf("read: %v (codes so far %v)", err, codes)
				}
				for _, line := range bytes.Split(fr, []byte{'\n'}) {
					var m protocol.WireMessage
					_ = json.Unmarshal(line, &m)
					if m.Type == protocol.TypeError {
						codes[m.Code] = true
					}
				}
			}
			if !codes[protocol.CodeTooManyTopics] || !codes[protocol.CodeFrameTooLarge] {
				t.Fatalf("errors %v, want too_many_topics and frame_too_large", codes)
			}
			// Over SSE: refused before the stream starts, by the topic
			// limit (400) or, for a URL past the 4 KiB header buffer, by
			// the HTTP layer (431).
			hc := httpFrom(ip)
			for _, q := range []string{"*," + strings.Join(topics[:850], ","), strings.Join(topics[:1001], ",")} {
				resp, err := hc.Get(e.url("/sse?topics=" + q))
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
					t.Fatalf("SSE with a huge topic list: %d, want 400 or 431", resp.StatusCode)
				}
			}
		}},
		{"ping floods", func(t *testing.T, ip string) {
			conn := rawWS(t, e.addr, ip) // control-frame pings
			go func() { _, _ = io.Copy(io.Discard, conn) }()
			writeUntilClosed(conn, frame(0x9, []byte("p")), 100_000)
			conn2 := rawWS(t, e.addr, ip) // {"op":"ping"} messages
			go func() { _, _ = io.Copy(io.Discard, conn2) }()
			writeUntilClosed(conn2, frame(0x1, []byte(`{"op":"ping","id":1}`)), 100_000)
			checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
				if n := e.bus.Subscribers(); n > 1 {
					return fmt.Errorf("%d subscribers: the flooders are still connected", n)
				}
				return nil
			})
		}},
		{"topic floods through publish", func(t *testing.T, ip string) {
			// ~3 MB of unique topics from one loopback address.
			var body bytes.Buffer
			for i := range 100_000 {
				fmt.Fprintf(&body, `{"topic":"FLOOD.%06d","price":1}`+"\n", i)
			}
			hc := httpFrom(ip)
			resp, err := hc.Post(e.url("/api/publish"), "application/x-ndjson", &body)
			if err != nil {
				t.Fatal(err)
			}
			var res publishAnswer
			if err := decodeJSON(resp, &res); err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if res.Accepted != 2000 {
				t.Fatalf("accepted %d new topics, want the quota of 2000", res.Accepted)
			}
			// A feed can still create topics.
			e.publish("REAL.FEED", 1, f("price", 1))
			// A text/plain flood (what a web page could send) lands nothing.
			resp, err = hc.Post(e.url("/api/publish"), "text/plain", strings.NewReader(`{"topic":"XSITE","price":1}`))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnsupportedMediaType || e.bus.HasTopic("XSITE") {
				t.Fatalf("text/plain publish: %d", resp.StatusCode)
			}
		}},
	}
	for i, a := range attacks {
		ip := fmt.Sprintf("127.0.0.%d", i+2)
		if !t.Run(a.name, func(t *testing.T) {
			a.run(t, ip)
			healthy(t)
			grown := int64(liveHeap()) - int64(base)
			t.Logf("live heap %+d KiB over the baseline after the attack", grown>>10)
			if grown > hostileHeapBound {
				t.Fatalf("live heap grew %d MiB, over the %d MiB bound", grown>>20, hostileHeapBound>>20)
			}
		}) {
			break
		}
	}
	close(stop)
	<-pubDone
	want := published.Load()
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if last, problem := good.state(); problem != "" || last != want {
			return fmt.Errorf("good client at seq %d of %d (%s)", last, want, problem)
		}
		return nil
	})
	good.mu.Lock()
	lat := slices.Clone(good.latencies)
	n := good.n
	good.mu.Unlock()
	slices.Sort(lat)
	if len(lat) > 0 {
		t.Logf("good client: %d ticks, none lost; latency p50 %v, p99 %v, max %v", n, lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
	}
}
