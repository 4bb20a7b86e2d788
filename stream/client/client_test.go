package client_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/client"
	"github.com/tickstream/tickstream/stream/protocol"
	"github.com/tickstream/tickstream/stream/server"
)

// TestMain checks for leaks, except fasthttp's process-wide date updater
// and its worker pool's cleaner, which sleeps out its interval after the
// server stops.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
	)
}

// env is a real tickstream server on a loopback port.
type env struct {
	t   testing.TB
	bus *stream.Bus
	url string // ws://127.0.0.1:port/ws
}

func startServer(t testing.TB, mod func(*stream.BusConfig)) *env {
	t.Helper()
	bc := stream.BusConfig{Heartbeat: 5 * time.Second, HistoryDepth: 5000}
	if mod != nil {
		mod(&bc)
	}
	bus, err := stream.NewBus(bc)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Bus: bus})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		<-done
		if err := bus.Close(ctx); err != nil {
			t.Errorf("bus.Close: %v", err)
		}
	})
	return &env{t: t, bus: bus, url: "ws://" + ln.Addr().String() + "/ws"}
}

func (e *env) publish(topic string, price float64) uint64 {
	e.t.Helper()
	tk := feeds.Tick{Topic: topic, TS: 1_700_000_000_000}
	tk.Set("price", price)
	seq, err := e.bus.Publish("test", tk)
	if err != nil {
		e.t.Fatal(err)
	}
	return seq
}

func dial(t testing.TB, url string, opts *client.Options) *client.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// next returns the next message within a generous deadline.
func next(t testing.TB, c *client.Conn) protocol.WireMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := c.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return m
}

func expect(t testing.TB, c *client.Conn, typ string) protocol.WireMessage {
	t.Helper()
	m := next(t, c)
	if m.Type != typ {
		t.Fatalf("got %+v, want a %s", m, typ)
	}
	return m
}

func subscribe(t testing.TB, c *client.Conn, topics []string, throttle time.Duration, resume map[string]protocol.Cursor) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	acked, err := c.Subscribe(ctx, topics, throttle, resume)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	return acked
}

func TestSubscribeNextCursors(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(bc *stream.BusConfig) { bc.Heartbeat = 3 * time.Second })
	e.publish("A", 1)
	e.publish("B", 2)

	c := dial(t, e.url, nil)
	if c.Session() == "" || c.Heartbeat() != 3*time.Second {
		t.Errorf("session %q, heartbeat %v: want a session and 3s", c.Session(), c.Heartbeat())
	}
	if got := subscribe(t, c, []string{"A", "B"}, 0, nil); !slices.Equal(got, []string{"A", "B"}) {
		t.Errorf("acked %v", got)
	}
	// The snapshots came in the ack's frame: Next splits it.
	snaps := map[string]protocol.WireMessage{}
	for range 2 {
		s := expect(t, c, protocol.TypeSnapshot)
		snaps[s.Topic] = s
	}
	if snaps["A"].Seq != 1 || snaps["A"].Data["price"].Float() != 1 || snaps["B"].Data["price"].Float() != 2 || snaps["A"].Epoch != e.bus.Epoch() {
		t.Errorf("snapshots %+v", snaps)
	}
	for i := range 50 {
		e.publish("A", 10+float64(i))
	}
	for i := range 50 {
		u := expect(t, c, protocol.TypeUpdate)
		if u.Topic != "A" || u.Seq != uint64(i+2) || u.Agg == nil || u.Agg.N != 1 || u.Data["price"].Float() != 10+float64(i) {
			t.Fatalf("update %d: %+v", i, u)
		}
	}
	want := map[string]protocol.Cursor{"A": {Epoch: e.bus.Epoch(), Seq: 51}, "B": {Epoch: e.bus.Epoch(), Seq: 1}}
	if got := c.Cursors(); !mapsEqual(got, want) {
		t.Errorf("Cursors = %v, want %v", got, want)
	}
}

func mapsEqual(a, b map[string]protocol.Cursor) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestResumeFromCursors(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	e.publish("A", 1)
	c := dial(t, e.url, nil)
	subscribe(t, c, []string{"A"}, 0, nil)
	expect(t, c, protocol.TypeSnapshot)
	for i := range 5 {
		e.publish("A", 100+float64(i))
	}
	for range 5 {
		expect(t, c, protocol.TypeUpdate)
	}
	cur := c.Cursors()
	c.Close()

	for i := range 20 {
		e.publish("A", 200+float64(i)) // missed while away
	}
	c2 := dial(t, e.url, nil)
	subscribe(t, c2, []string{"A"}, 0, cur)
	// A quiet resumed topic keeps its cursor.
	if got := c2.Cursors(); !mapsEqual(got, cur) {
		t.Errorf("Cursors right after resume = %v, want %v", got, cur)
	}
	for i := range 20 {
		u := expect(t, c2, protocol.TypeUpdate)
		if u.Seq != uint64(7+i) || u.Data["price"].Float() != 200+float64(i) {
			t.Fatalf("replayed update %d: %+v", i, u)
		}
	}
}

func TestSubscribeRefusedAndPing(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	e.publish("A", 1)
	c := dial(t, e.url, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Subscribe(ctx, []string{"bad topic!"}, 0, nil)
	var perr *protocol.Error
	if !errors.As(err, &perr) || perr.Code != protocol.CodeBadTopic {
		t.Fatalf("Subscribe(bad topic) = %v, want a bad_topic *protocol.Error", err)
	}
	if _, err := c.Subscribe(ctx, []string{"A"}, -1, nil); err != nil {
		t.Fatal(err)
	}
	// Ping waits for its pong; the snapshot that came before it stays
	// for Next.
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Buffered() == 0 {
		t.Errorf("Buffered = 0, want the snapshot kept")
	}
	expect(t, c, protocol.TypeSnapshot)
	if err := c.Unsubscribe(ctx, []string{"A"}); err != nil {
		t.Fatal(err)
	}
}

// TestKeepAlive checks that a client waiting in Next on a quiet topic
// answers the server's heartbeat pings: the server, which drops a client
// silent for two heartbeats, keeps it.
func TestKeepAlive(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(bc *stream.BusConfig) { bc.Heartbeat = 250 * time.Millisecond })
	e.publish("A", 1)
	c := dial(t, e.url, nil)
	subscribe(t, c, []string{"A"}, 0, nil)
	expect(t, c, protocol.TypeSnapshot)
	got := make(chan protocol.WireMessage, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		m, err := c.Next(ctx)
		if err != nil {
			t.Errorf("Next: %v", err)
		}
		got <- m
	}()
	time.Sleep(8 * 250 * time.Millisecond) // quiet for 8 heartbeats
	e.publish("A", 2)
	if m := <-got; m.Type != protocol.TypeUpdate || m.Data["price"].Float() != 2 {
		t.Errorf("after a quiet spell: %+v, want the update", m)
	}
}

// TestIdleTimeout checks that Next gives up on a server that sends nothing,
// not even pings.
func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	var wg sync.WaitGroup
	release := make(chan struct{})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wg.Add(1)
		defer wg.Done()
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		_ = ws.Write(r.Context(), websocket.MessageText, protocol.EncodeWelcome("s1", 20, 0))
		<-release // silent: no pings, no messages
	}))
	defer func() { close(release); hs.Close(); wg.Wait() }()

	c := dial(t, "ws"+hs.URL[len("http"):]+"/ws", nil) // idle: 3 heartbeats of 20 ms
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Next(ctx); !errors.Is(err, client.ErrIdle) {
		t.Fatalf("Next = %v, want ErrIdle", err)
	}
}

func TestHistoryAndBackfill(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(bc *stream.BusConfig) { bc.HistoryDepth = 3000 })
	const n = 3500 // the first 500 fall out of history
	for i := range n {
		e.publish("A", float64(i+1))
	}
	c := dial(t, e.url, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	h, err := c.History(ctx, "A", 3000, 10)
	if err != nil {
		t.Fatal(err)
	}
	if h.Epoch != e.bus.Epoch() || h.Oldest != 501 || h.Last != n || len(h.Ticks) != 10 || h.Ticks[0].Seq != 3001 || h.Ticks[0].Data["price"].Float() != 3001 {
		t.Errorf("History page: %+v", h)
	}

	var seqs []uint64
	first, err := c.Backfill(ctx, "A", e.bus.Epoch(), 100, 3400, func(tk client.HistoryTick) error {
		if tk.Data["price"].Float() != float64(tk.Seq) {
			t.Errorf("tick %d has price %v", tk.Seq, tk.Data["price"])
		}
		seqs = append(seqs, tk.Seq)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if first.Oldest != 501 || len(seqs) != 2900 || seqs[0] != 501 || seqs[len(seqs)-1] != 3400 {
		t.Errorf("Backfill(100, 3400): oldest %d, %d ticks %d..%d; want 501, 2900 ticks 501..3400", first.Oldest, len(seqs), seqs[0], seqs[len(seqs)-1])
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			t.Fatalf("Backfill: seq %d after %d", seqs[i], seqs[i-1])
		}
	}

	if _, err := c.Backfill(ctx, "A", "other-epoch", 3000, 3001, func(client.HistoryTick) error {
		t.Error("fn called for another epoch")
		return nil
	}); !errors.Is(err, client.ErrEpochChanged) {
		t.Errorf("Backfill in another epoch = %v, want ErrEpochChanged", err)
	}
	var ae *client.APIError
	if _, err := c.History(ctx, "NOPE", 0, 1); !errors.As(err, &ae) || ae.Status != http.StatusNotFound || ae.Code != protocol.CodeUnknownTopic {
		t.Errorf("History(unknown topic) = %v, want a 404 unknown_topic APIError", err)
	}
}

func TestHistoryURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ ws, want string }{
		{"ws://localhost:8080/ws", "http://localhost:8080/api/history"},
		{"wss://example.com/prefix/ws?token=abc", "https://example.com/prefix/api/history?token=abc"},
		{"ws://127.0.0.1:1/ws/", "http://127.0.0.1:1/api/history"},
		{"ws://h", "http://h/api/history"},
	} {
		if got, err := client.HistoryURLOf(tc.ws); err != nil || got != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.ws, got, err, tc.want)
		}
	}
	if _, err := client.HistoryURLOf("ftp://h/ws"); err == nil {
		t.Errorf("ftp:// accepted")
	}
	// Dial keeps the derived URL (and refuses a bad one before dialling).
	e := startServer(t, nil)
	c := dial(t, e.url+"?x=1", nil)
	if want := "http://" + e.url[len("ws://"):len(e.url)-len("/ws")] + "/api/history?x=1"; c.HistoryURL() != want {
		t.Errorf("HistoryURL = %q, want %q", c.HistoryURL(), want)
	}
}
