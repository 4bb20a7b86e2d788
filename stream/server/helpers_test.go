package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds/feedtest"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/protocol"
	"github.com/tickstream/tickstream/stream/server"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// fasthttp refreshes its cached Date header from a goroutine it
		// starts once per process and never stops; it is library-owned.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		// fasthttp's worker-pool cleaner sleeps MaxIdleWorkerDuration (10 s)
		// between rounds and only notices Stop when it wakes: it is
		// library-owned and ends on its own.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
	)
}

// checkFor polls fn until it returns nil or total has passed.
var checkFor = feedtest.CheckFor

// env is one real server on a loopback port, with its bus and registry.
type env struct {
	t    testing.TB
	bus  *stream.Bus
	srv  *server.Server
	reg  *prometheus.Registry
	addr string // host:port
	http *http.Client

	shutOnce sync.Once
	serveErr chan error
}

// startServer starts a server on 127.0.0.1:0. mod may change the configs
// before they are used.
func startServer(t testing.TB, mod func(*stream.BusConfig, *server.Config)) *env {
	t.Helper()
	return startServerWrapped(t, mod, nil)
}

// startServerWrapped is startServer with the listener wrapped by wrap
// (nil: none), for tests that watch the server's connections.
func startServerWrapped(t testing.TB, mod func(*stream.BusConfig, *server.Config), wrap func(net.Listener) net.Listener) *env {
	t.Helper()
	reg := prometheus.NewRegistry()
	bc := stream.BusConfig{
		Heartbeat:       5 * time.Second,
		MaxPendingBytes: 1 << 20,
		LagThrottle:     200 * time.Millisecond,
		Metrics:         stream.NewMetrics(reg),
	}
	sc := server.Config{WriteTimeout: 2 * time.Second, Gatherer: reg, RetryBase: 500 * time.Millisecond}
	if mod != nil {
		mod(&bc, &sc)
	}
	bus, err := stream.NewBus(bc)
	if err != nil {
		t.Fatalf("NewBus: %v", err)
	}
	sc.Bus = bus
	srv, err := server.New(sc)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	e := &env{
		t: t, bus: bus, srv: srv, reg: reg, addr: ln.Addr().String(),
		http:     &http.Client{Transport: &http.Transport{}, Timeout: 30 * time.Second},
		serveErr: make(chan error, 1),
	}
	if wrap != nil {
		ln = wrap(ln)
	}
	go func() { e.serveErr <- srv.Serve(ln) }()
	t.Cleanup(func() {
		e.shutdown()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := bus.Close(ctx); err != nil {
			t.Errorf("bus.Close: %v", err)
		}
		e.http.CloseIdleConnections()
	})
	return e
}

// shutdown shuts the server down once and waits for Serve to return.
func (e *env) shutdown() time.Duration { return e.shutdownWithin(10 * time.Second) }

// shutdownWithin is shutdown with the given shutdown timeout: Shutdown must
// succeed within it, and Serve must then return ErrServerClosed. Only the
// first call shuts down; later ones return 0.
func (e *env) shutdownWithin(timeout time.Duration) time.Duration {
	var took time.Duration
	e.shutOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		start := time.Now()
		if err := e.srv.Shutdown(ctx); err != nil {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			e.t.Errorf("Shutdown: %v; goroutines:\n%s", err, buf)
		}
		took = time.Since(start)
		select {
		case err := <-e.serveErr:
			if err != nil && !errors.Is(err, server.ErrServerClosed) {
				e.t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(5 * time.Second):
			e.t.Errorf("Serve did not return after Shutdown")
		}
	})
	return took
}

func (e *env) url(path string) string { return "http://" + e.addr + path }

// publish publishes one tick through the bus and returns its seq.
func (e *env) publish(topic string, ts int64, fields ...feeds.Field) uint64 {
	e.t.Helper()
	seq, err := e.bus.Publish("test", feeds.Tick{Topic: topic, TS: ts, Fields: fields})
	if err != nil {
		e.t.Errorf("Publish %s: %v", topic, err)
	}
	return seq
}

func f(name string, v float64) feeds.Field { return feeds.F(name, v) }

// get does a GET and decodes a JSON body into out (if non-nil). It returns
// the status and the raw body.
func (e *env) get(path string, out any) (int, []byte) {
	e.t.Helper()
	return e.do(http.MethodGet, path, "", nil, out)
}

func (e *env) post(path, contentType string, body []byte, out any) (int, []byte) {
	e.t.Helper()
	return e.do(http.MethodPost, path, contentType, body, out)
}

func (e *env) do(method, path, contentType string, body []byte, out any) (int, []byte) {
	e.t.Helper()
	return e.doT(e.t, method, path, contentType, body, out)
}

func decodeJSON(resp *http.Response, out any) error {
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("body %q: %w", raw, err)
	}
	return nil
}

// doT is do reporting to t, for subtests.
func (e *env) doT(t testing.TB, method, path, contentType string, body []byte, out any) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, e.url(path), bytes.NewReader(body))
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := e.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: status %d, body %q is not the JSON expected: %v", method, path, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode, raw
}

// apiErr is the JSON body of every API error.
type apiErr struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

// expectAPIError checks a 4xx answer with a JSON error body and code.
func (e *env) expectAPIError(t testing.TB, method, path, body string, status int, code string) {
	t.Helper()
	var ae apiErr
	got, raw := e.doT(t, method, path, "application/json", []byte(body), &ae)
	if got != status || ae.Error != code || ae.Message == "" {
		t.Errorf("%s %s: got %d %s, want %d with error %q and a message", method, path, got, raw, status, code)
	}
}

// metric returns the sum of every sample of the named metric family.
func (e *env) metric(name string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Errorf("Gather: %v", err)
		return 0
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			total += metricValue(mf.GetType(), m)
		}
	}
	return total
}

func metricValue(typ dto.MetricType, m *dto.Metric) float64 {
	switch typ {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return m.GetGauge().GetValue()
	case dto.MetricType_HISTOGRAM:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return m.GetUntyped().GetValue()
}

// msg is any server message, with its raw text for failure messages.
type msg struct {
	protocol.WireMessage
	raw string
}

func (m msg) String() string { return m.raw }

func parseMsg(t testing.TB, line []byte) msg {
	t.Helper()
	var m msg
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		t.Errorf("server message %q: %v", line, err)
	}
	m.raw = string(line)
	return m
}

// wsClient is a WebSocket client whose reader goroutine splits frames into
// messages on msgs; msgs is closed when the connection ends, and err then
// says how.
type wsClient struct {
	t     testing.TB
	conn  *websocket.Conn
	msgs  chan msg
	done  chan struct{}
	err   error // set before done is closed
	pings *counter
}

type counter struct {
	mu sync.Mutex
	n  int
}

func (c *counter) inc() { c.mu.Lock(); c.n++; c.mu.Unlock() }
func (c *counter) get() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

type wsOpts struct {
	noReader bool // do not read: the client never drains its socket
	noPong   bool // do not answer pings
	rcvBuf   int  // SO_RCVBUF of the client socket, 0 for the default
	header   http.Header
	// wrap, if set, wraps the client's TCP connection.
	wrap func(net.Conn) net.Conn
}

// wsHTTPClient returns an HTTP client whose connections get SO_RCVBUF
// rcvBuf (before connecting, so that the TCP window stays small) and are
// wrapped by wrap.
func wsHTTPClient(rcvBuf int, wrap func(net.Conn) net.Conn) *http.Client {
	d := &net.Dialer{}
	if rcvBuf > 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvBuf)
			})
			return errors.Join(err, serr)
		}
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil || wrap == nil {
			return conn, err
		}
		return wrap(conn), nil
	}
	return &http.Client{Transport: &http.Transport{DialContext: dial}}
}

func (e *env) dialWS(t testing.TB, o wsOpts) *wsClient {
	t.Helper()
	c := &wsClient{t: t, msgs: make(chan msg, 1<<16), done: make(chan struct{}), pings: &counter{}}
	opts := &websocket.DialOptions{
		HTTPHeader: o.header,
		OnPingReceived: func(context.Context, []byte) bool {
			c.pings.inc()
			return !o.noPong
		},
	}
	if o.rcvBuf > 0 || o.wrap != nil {
		opts.HTTPClient = wsHTTPClient(o.rcvBuf, o.wrap)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, "ws://"+e.addr+"/ws", opts)
	if err != nil {
		t.Fatalf("dial /ws: %v (response %v)", err, resp)
	}
	conn.SetReadLimit(64 << 20)
	c.conn = conn
	t.Cleanup(func() { c.close() })
	if o.noReader {
		close(c.msgs)
		close(c.done)
		return c
	}
	go c.read()
	return c
}

func (c *wsClient) read() {
	defer close(c.done)
	defer close(c.msgs)
	for {
		_, frame, err := c.conn.Read(context.Background())
		if err != nil {
			c.err = err
			return
		}
		for _, line := range bytes.Split(frame, []byte{'\n'}) {
			c.msgs <- parseMsg(c.t, line)
		}
	}
}

// close ends the connection and waits for the reader.
func (c *wsClient) close() {
	_ = c.conn.CloseNow()
	<-c.done
}

// send writes one client message (a value to marshal, or raw bytes).
func (c *wsClient) send(v any) {
	c.t.Helper()
	b, ok := v.([]byte)
	if !ok {
		var err error
		if b, err = json.Marshal(v); err != nil {
			c.t.Fatalf("marshal: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, b); err != nil {
		c.t.Fatalf("write %s: %v", b, err)
	}
}

// next returns the next message, failing the test if none comes within
// timeout or the connection ends.
func (c *wsClient) next(timeout time.Duration) msg {
	c.t.Helper()
	select {
	case m, ok := <-c.msgs:
		if !ok {
			c.t.Fatalf("connection ended while waiting for a message: %v", c.err)
		}
		return m
	case <-time.After(timeout):
		c.t.Fatalf("no message within %v", timeout)
	}
	return msg{}
}

// expect returns the next message and checks its type.
func (c *wsClient) expect(typ string) msg {
	c.t.Helper()
	m := c.next(5 * time.Second)
	if m.Type != typ {
		c.t.Fatalf("got %s, want a %s message", m, typ)
	}
	return m
}

// quiet checks that no message arrives within d.
func (c *wsClient) quiet(d time.Duration) {
	c.t.Helper()
	select {
	case m, ok := <-c.msgs:
		if ok {
			c.t.Fatalf("unexpected message %s", m)
		}
	case <-time.After(d):
	}
}

// closeStatus waits for the connection to end and returns its close error.
func (c *wsClient) closeStatus(timeout time.Duration) websocket.CloseError {
	c.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case _, ok := <-c.msgs:
			if ok {
				continue
			}
			var ce websocket.CloseError
			if !errors.As(c.err, &ce) {
				c.t.Fatalf("connection ended with %v, want a close frame", c.err)
			}
			return ce
		case <-deadline:
			c.t.Fatalf("connection still open after %v", timeout)
		}
	}
}

// subscribeMsg is a subscribe client message.
type subscribeMsg struct {
	Op         string                     `json:"op"`
	ID         int                        `json:"id"`
	Topics     []string                   `json:"topics"`
	ThrottleMS *int                       `json:"throttle_ms,omitempty"`
	Resume     map[string]protocol.Cursor `json:"resume,omitempty"`
}

func ms(n int) *int { return &n }

// welcome dials and reads the welcome message.
func (e *env) welcomeWS(t testing.TB, o wsOpts) (*wsClient, msg) {
	t.Helper()
	c := e.dialWS(t, o)
	w := c.expect(protocol.TypeWelcome)
	return c, w
}

// sseEvent is one block of an SSE stream: an event, a retry: line or a
// comment.
type sseEvent struct {
	Event, ID, Data string
	Retry           string
	Comment         string
}

// sseClient reads an SSE stream in a goroutine.
type sseClient struct {
	t      testing.TB
	resp   *http.Response
	events chan sseEvent
	done   chan struct{}
	err    error
	cancel context.CancelFunc
}

// openSSE opens path (e.g. /sse?topics=A) and checks it answered 200.
func (e *env) openSSE(t testing.TB, path string, header http.Header) *sseClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.url(path), nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := e.http.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	c := &sseClient{t: t, resp: resp, events: make(chan sseEvent, 1<<16), done: make(chan struct{}), cancel: cancel}
	go c.read()
	t.Cleanup(c.close)
	return c
}

func (c *sseClient) read() {
	defer close(c.done)
	defer close(c.events)
	defer c.resp.Body.Close()
	r := bufio.NewReader(c.resp.Body)
	var ev sseEvent
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if line != "" {
				c.err = fmt.Errorf("stream ended in the middle of a line %q", line)
			} else {
				c.err = err
			}
			return
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if ev != (sseEvent{}) {
				c.events <- ev
			}
			ev = sseEvent{}
			continue
		}
		if strings.HasPrefix(line, ":") {
			ev.Comment = strings.TrimSpace(line[1:])
			continue
		}
		name, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch name {
		case "event":
			ev.Event = value
		case "id":
			ev.ID = value
		case "data":
			ev.Data += value
		case "retry":
			ev.Retry = value
		default:
			c.err = fmt.Errorf("unknown SSE field in %q", line)
			return
		}
	}
}

func (c *sseClient) close() {
	c.cancel()
	<-c.done
}

// next returns the next block (event, retry or comment).
func (c *sseClient) next(timeout time.Duration) sseEvent {
	c.t.Helper()
	select {
	case ev, ok := <-c.events:
		if !ok {
			c.t.Fatalf("SSE stream ended while waiting for an event: %v", c.err)
		}
		return ev
	case <-time.After(timeout):
		c.t.Fatalf("no SSE event within %v", timeout)
	}
	return sseEvent{}
}

// nextEvent skips comments and returns the next event with its message.
func (c *sseClient) nextEvent(timeout time.Duration) (sseEvent, msg) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ev := c.next(time.Until(deadline))
		if ev.Event == "" {
			continue
		}
		m := parseMsg(c.t, []byte(ev.Data))
		if m.Type != ev.Event {
			c.t.Fatalf("event: %s carries a %s message %s", ev.Event, m.Type, ev.Data)
		}
		return ev, m
	}
}

func (c *sseClient) expect(typ string) (sseEvent, msg) {
	c.t.Helper()
	ev, m := c.nextEvent(5 * time.Second)
	if m.Type != typ {
		c.t.Fatalf("got event %s %s, want %s", ev.Event, ev.Data, typ)
	}
	return ev, m
}

// seqTracker checks per-topic updates: seqs strictly increase and each
// update covers exactly the ticks after the previous one (seq-n == prev).
type seqTracker struct {
	last map[string]uint64
	n    map[string]int64
}

func newSeqTracker() *seqTracker {
	return &seqTracker{last: make(map[string]uint64), n: make(map[string]int64)}
}

// start sets the position a topic's updates continue from (a snapshot or
// a resume cursor).
func (s *seqTracker) start(topic string, seq uint64) { s.last[topic] = seq }

func (s *seqTracker) update(t testing.TB, m msg) {
	t.Helper()
	if m.Agg == nil || m.Agg.N < 1 {
		t.Fatalf("update without agg.n >= 1: %s", m)
	}
	prev := s.last[m.Topic]
	if m.Seq <= prev {
		t.Fatalf("%s: seq %d after %d (reordered or duplicated): %s", m.Topic, m.Seq, prev, m)
	}
	if m.Seq-uint64(m.Agg.N) != prev {
		t.Fatalf("%s: update seq %d with n %d does not follow seq %d (lost or duplicated ticks): %s", m.Topic, m.Seq, m.Agg.N, prev, m)
	}
	s.last[m.Topic] = m.Seq
	s.n[m.Topic] += m.Agg.N
}

// rawWSHandshake opens a WebSocket at the TCP level and returns the socket
// right after the 101 response: whatever the test does with it next, no
// library answers pings behind its back.
func rawWSHandshake(t testing.TB, addr string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return upgradeRaw(t, conn, addr)
}

// upgradeRaw sends a WebSocket handshake on conn and reads the response
// head byte by byte, so that no frame after the 101 is consumed.
func upgradeRaw(t testing.TB, conn net.Conn, addr string) net.Conn {
	t.Helper()
	req := "GET /ws HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	// Read the response head byte by byte so that no frame is consumed.
	var head []byte
	b := make([]byte, 1)
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		if _, err := conn.Read(b); err != nil {
			t.Fatalf("handshake: %v after %q", err, head)
		}
		head = append(head, b[0])
	}
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 101")) {
		t.Fatalf("handshake answered %q", head)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn
}
