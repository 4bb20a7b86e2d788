package server

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/gofiber/fiber/v2/middleware/filesystem"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"

	"github.com/tickstream/tickstream/dashboard"
	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/auth"
	"github.com/tickstream/tickstream/stream/protocol"
)

// Config configures a Server. Every zero value means the documented default.
type Config struct {
	// Bus is the topic bus to serve. Required.
	Bus *stream.Bus
	// Feeds reports feed states for /api/feeds and /readyz. Zero value
	// means no feeds: /readyz is ready while the server runs.
	Feeds feeds.StatusReporter
	// PublishSink receives ticks from POST /api/publish. Zero value means
	// Bus.Sink("http").
	PublishSink feeds.Sink
	// Gatherer serves /metrics. Zero value means no /metrics.
	Gatherer prometheus.Gatherer
	// Logger logs connection events. Zero value means slog.Default().
	Logger *slog.Logger
	// Dashboard is served at /. Zero value means dashboard.FS().
	Dashboard fs.FS
	// DisableWebSocket refuses /ws upgrades (403), as a proxy that blocks
	// WebSocket would, so that clients fall back to SSE.
	DisableWebSocket bool
	// WriteTimeout is the write deadline: a client whose socket accepts
	// nothing for this long is closed with 1013. Zero value means 10 s.
	WriteTimeout time.Duration
	// RetryBase is the base of the reconnect hint sent in close frames
	// and SSE retry: lines; each hint is jittered uniformly in
	// [RetryBase, 2×RetryBase) so that a restart does not bring every
	// client back at once. Zero value means 1 s.
	RetryBase time.Duration
	// AcceptRate is how many new /ws and /sse connections per second the
	// token bucket lets in; AcceptBurst is the bucket size. Zero values
	// mean 200/s and a burst of 500.
	AcceptRate  float64
	AcceptBurst int
	// MaxFrameBytes is the largest client message; a larger one gets a
	// frame_too_large error. Zero value means 64 KiB.
	MaxFrameBytes int
	// MaxPublishBytes is the largest POST body. Zero value means 8 MiB.
	MaxPublishBytes int
	// SendBufferBytes is the kernel send buffer (SO_SNDBUF) of every
	// accepted connection. A fixed size turns off Linux's autotuning (up
	// to 4 MiB a socket), so a slow client's backlog stays in its queue,
	// where the bus bounds it, merges it and sees that the client lags.
	// Zero value means 256 KiB; negative means the system's autotuning.
	SendBufferBytes int
	// Auth verifies tokens and their rights (see auth.go). Zero value
	// means auth off: every client may read every topic, and publishing
	// is as open as the rest of the configuration leaves it.
	Auth *auth.Authorizer
	// CursorShare shares reference-form SSE cursors with the other nodes
	// of a cluster (see CursorShare). Zero value means they resolve only
	// on this node.
	CursorShare CursorShare
	// The idempotency window of publishes (see idemStore): per producer,
	// the last IdempotencyIDs message ids for at most IdempotencyTTL; at
	// most IdempotencyProducers producers (least recently active
	// forgotten first) and IdempotencyTotalIDs ids in all (about 300
	// bytes each). Zero values mean 10,000 ids, 10 minutes, 1,024
	// producers and 200,000 ids in all.
	IdempotencyIDs       int
	IdempotencyTTL       time.Duration
	IdempotencyProducers int
	IdempotencyTotalIDs  int
	// PollTimeout is how long GET /poll waits for a first message when
	// the request gives no timeout_ms; MaxPollTimeout is the most a
	// request may ask. Zero values mean 25 s and 60 s.
	PollTimeout    time.Duration
	MaxPollTimeout time.Duration
}

func (c *Config) setDefaults() error {
	if c.Bus == nil {
		return errors.New("server: Config.Bus is required")
	}
	if c.PublishSink == nil {
		c.PublishSink = c.Bus.Sink("http")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Dashboard == nil {
		c.Dashboard = dashboard.FS()
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.RetryBase == 0 {
		c.RetryBase = time.Second
	}
	if c.AcceptRate == 0 {
		c.AcceptRate = 200
	}
	if c.AcceptBurst == 0 {
		c.AcceptBurst = 500
	}
	if c.MaxFrameBytes == 0 {
		c.MaxFrameBytes = 64 << 10
	}
	if c.MaxPublishBytes == 0 {
		c.MaxPublishBytes = 8 << 20
	}
	if c.SendBufferBytes == 0 {
		c.SendBufferBytes = 256 << 10
	}
	if c.IdempotencyIDs == 0 {
		c.IdempotencyIDs = 10_000
	}
	if c.IdempotencyTTL == 0 {
		c.IdempotencyTTL = 10 * time.Minute
	}
	if c.IdempotencyProducers == 0 {
		c.IdempotencyProducers = 1024
	}
	if c.IdempotencyTotalIDs == 0 {
		c.IdempotencyTotalIDs = 200_000
	}
	if c.PollTimeout == 0 {
		c.PollTimeout = 25 * time.Second
	}
	if c.MaxPollTimeout == 0 {
		c.MaxPollTimeout = 60 * time.Second
	}
	return nil
}

// Server serves one Bus over HTTP.
type Server struct {
	cfg    Config
	bus    *stream.Bus
	app    *fiber.App
	log    *slog.Logger
	accept *rate.Limiter

	wsHandler fiber.Handler

	draining atomic.Bool
	mu       sync.Mutex
	streams  map[*stream.Subscriber]net.Conn // open /ws and /sse streams: their sockets
	sessions map[string]*stream.Subscriber   // SSE sessions by id
	cursors  *cursorStore                    // SSE cursor logs
	idem     *idemStore                      // recent publish ids
	wg       sync.WaitGroup                  // stream handlers

	listeners []net.Listener // passed to Serve, closed by Shutdown; guarded by mu
	silent    silentConns    // accepted connections that have sent nothing
	auths     sync.Map       // *stream.Subscriber → *connAuth, streams that hold a token
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("server: closed")

// New builds a server. Call Serve to run it.
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		bus:      cfg.Bus,
		log:      cfg.Logger,
		accept:   rate.NewLimiter(rate.Limit(cfg.AcceptRate), cfg.AcceptBurst),
		streams:  make(map[*stream.Subscriber]net.Conn),
		sessions: make(map[string]*stream.Subscriber),
		cursors:  newCursorStore(),
		idem:     newIdemStore(cfg.IdempotencyIDs, cfg.IdempotencyProducers, cfg.IdempotencyTotalIDs, cfg.IdempotencyTTL),
	}
	s.cursors.share = cfg.CursorShare
	s.app = fiber.New(fiber.Config{
		DisableStartupMessage: true,
		BodyLimit:             cfg.MaxPublishBytes,
		IdleTimeout:           2 * time.Minute,
		ErrorHandler:          errorHandler,
		AppName:               "tickstream",
	})
	s.initWS()
	s.routes()
	return s, nil
}

// App returns the Fiber app, for tests with app.Test and for adding routes.
func (s *Server) App() *fiber.App { return s.app }

func (s *Server) routes() {
	app := s.app
	app.Get("/ws", s.wsUpgrade)
	app.Get("/sse", s.handleSSE)
	app.Get("/poll", s.handlePoll)
	app.Post("/api/sse/:session", s.handleSSEControl)
	app.Get("/api/topics", s.handleTopics)
	app.Get("/api/history", s.handleHistory)
	app.Get("/api/candles", s.handleCandles)
	app.Post("/api/publish", s.handlePublish)
	app.Get("/api/feeds", s.handleFeeds)
	app.Get("/healthz", func(c *fiber.Ctx) error { return c.JSON(fiber.Map{"status": "ok"}) })
	app.Get("/readyz", s.handleReady)
	if s.cfg.Gatherer != nil {
		app.Get("/metrics", adaptor.HTTPHandler(promhttp.HandlerFor(s.cfg.Gatherer, promhttp.HandlerOpts{})))
	}
	app.Use("/api", func(c *fiber.Ctx) error {
		return apiError(c, fiber.StatusNotFound, "not_found", "no such API endpoint: "+c.Method()+" "+c.Path())
	})
	app.Use("/", filesystem.New(filesystem.Config{Root: http.FS(s.cfg.Dashboard), Index: "index.html"}))
}

// Serve serves HTTP on ln until Shutdown; then it returns ErrServerClosed.
// Shutdown closes ln, even one whose Serve call starts after it.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		_ = ln.Close()
		return ErrServerClosed
	}
	s.listeners = append(s.listeners, ln)
	s.mu.Unlock()
	if s.cfg.SendBufferBytes > 0 {
		ln = sendBufferListener{Listener: ln, size: s.cfg.SendBufferBytes}
	}
	err := s.app.Listener(trackingListener{Listener: ln, t: &s.silent})
	if s.draining.Load() {
		return ErrServerClosed
	}
	return err
}

// sendBufferListener sets SO_SNDBUF on accepted TCP connections.
type sendBufferListener struct {
	net.Listener
	size int
}

func (l sendBufferListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(l.size) // best effort: the kernel may clamp it
	}
	return c, err
}

// trackingListener keeps track of the accepted connections whose client
// has not sent a byte yet. fasthttp counts such a connection as busy from
// the start, so one that a client opened and left unused (a browser's
// preconnect, an HTTP client's spare) would hold Shutdown to its timeout.
type trackingListener struct {
	net.Listener
	t *silentConns
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return c, err
	}
	tc := &trackedConn{Conn: c, t: l.t}
	l.t.add(tc)
	return tc, nil
}

// silentConns is the set of accepted connections that have sent nothing.
type silentConns struct {
	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

func (s *silentConns) add(c *trackedConn) {
	s.mu.Lock()
	if s.conns == nil {
		s.conns = make(map[*trackedConn]struct{})
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
}

func (s *silentConns) remove(c *trackedConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// closeAll closes every connection that has sent nothing yet.
func (s *silentConns) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		_ = c.Conn.Close()
		delete(s.conns, c)
	}
}

// trackedConn is an accepted connection that leaves the silent set at its
// first byte.
type trackedConn struct {
	net.Conn
	t     *silentConns
	spoke atomic.Bool
}

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.spoke.Load() {
		c.spoke.Store(true)
		c.t.remove(c)
	}
	return n, err
}

func (c *trackedConn) Close() error {
	c.t.remove(c)
	return c.Conn.Close()
}

// NetConn returns the connection under the wrapper (see socket).
func (c *trackedConn) NetConn() net.Conn { return c.Conn }

// Shutdown stops the server within ctx:
//
//  1. It starts draining: /readyz answers 503 and new streams are refused
//     with 503 and a retry hint, while the listener still answers.
//  2. Every WebSocket gets a close frame 1001 with a jittered retry hint and
//     every SSE stream a retry: line, then ends.
//  3. Stream handlers get a grace period (shutdownGrace, at most half of
//     the time ctx leaves) to end by themselves; then the connections of
//     those still running are closed, which cuts off a writer stuck on a
//     client that stopped reading however long its write deadline.
//  4. The listener is closed and the HTTP server waits, until ctx ends at
//     most, for the other connections to finish their requests; idle
//     keep-alive connections, and those that never sent a request, are
//     closed.
//
// The listener is closed even when ctx ends first, and Serve then returns;
// Shutdown returns ctx.Err() if ctx ended before everything stopped.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	for _, sub := range s.openStreams() {
		sub.Close(protocol.DisconnectShutdown)
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	grace := time.NewTimer(shutdownGrace(ctx))
	defer grace.Stop()
	var err error
	select {
	case <-done:
	case <-grace.C:
		s.cutStreams()
		select {
		case <-done:
		case <-ctx.Done():
			err = ctx.Err()
		}
	case <-ctx.Done():
		s.cutStreams()
		err = ctx.Err()
	}
	// Past ctx, this still closes the listener, then returns at once.
	// Meanwhile connections that have sent nothing are closed as they come.
	stopSweep := make(chan struct{})
	swept := make(chan struct{})
	go func() {
		defer close(swept)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			s.silent.closeAll()
			select {
			case <-stopSweep:
				return
			case <-tick.C:
			}
		}
	}()
	herr := s.app.ShutdownWithContext(ctx)
	close(stopSweep)
	<-swept
	if err == nil {
		err = herr
	}
	s.mu.Lock()
	for _, ln := range s.listeners {
		_ = ln.Close() // in case Serve had not handed it to Fiber yet
	}
	s.mu.Unlock()
	return err
}

// maxShutdownGrace is the longest Shutdown waits for stream handlers to end
// by themselves before closing their connections.
const maxShutdownGrace = 2 * time.Second

// shutdownGrace is maxShutdownGrace, or half of the time ctx leaves if that
// is shorter, so that stuck streams are cut off before ctx ends.
func shutdownGrace(ctx context.Context) time.Duration {
	g := maxShutdownGrace
	if dl, ok := ctx.Deadline(); ok {
		g = min(g, time.Until(dl)/2)
	}
	return g
}

// cutStreams closes the TCP connection of every open stream: its writer,
// stuck or not, fails at once and its handler ends.
func (s *Server) cutStreams() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, conn := range s.streams {
		_ = conn.Close()
	}
}

func (s *Server) openStreams() []*stream.Subscriber {
	s.mu.Lock()
	defer s.mu.Unlock()
	subs := make([]*stream.Subscriber, 0, len(s.streams))
	for sub := range s.streams {
		subs = append(subs, sub)
	}
	return subs
}

// open registers a new stream connection, refusing it while draining.
// conn is the connection as the handler sees it; the socket under it is
// closed if the stream outlives Shutdown's grace period.
func (s *Server) open(transport string, conn net.Conn) (*stream.Subscriber, error) {
	sub, err := s.bus.NewSubscriber(transport)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() {
		sub.Close(protocol.DisconnectShutdown)
		return nil, ErrServerClosed
	}
	s.streams[sub] = socket(conn)
	if transport == "sse" {
		s.sessions[sub.Session()] = sub
	}
	s.wg.Add(1)
	return sub, nil
}

// socket returns the connection under conn's wrappers: fasthttp hands a
// hijacked (WebSocket) handler a wrapper whose Close does nothing, and a
// TLS connection's Close would first try to write an alert, which blocks
// behind a stuck writer. Closing the socket itself always fails a stuck
// write at once.
func socket(conn net.Conn) net.Conn {
	for range 8 { // bounded: a wrapper could return itself
		var under net.Conn
		switch c := conn.(type) {
		case interface{ UnsafeConn() net.Conn }: // fasthttp's hijackConn
			under = c.UnsafeConn()
		case interface{ NetConn() net.Conn }: // *tls.Conn
			under = c.NetConn()
		}
		if under == nil {
			return conn
		}
		conn = under
	}
	return conn
}

func (s *Server) closeStream(sub *stream.Subscriber) {
	sub.Close(nil)
	s.mu.Lock()
	delete(s.streams, sub)
	delete(s.sessions, sub.Session())
	s.mu.Unlock()
	s.wg.Done()
}

// admit applies the draining state and the connection token bucket to a
// new stream request. It returns a non-nil error response when refused.
func (s *Server) admit(c *fiber.Ctx) error {
	if s.draining.Load() {
		return answered(s.refuseRetry(c, fiber.StatusServiceUnavailable, "shutting_down", "server is shutting down"))
	}
	if !s.accept.Allow() {
		return answered(s.refuseRetry(c, fiber.StatusServiceUnavailable, "busy", "too many new connections; retry later"))
	}
	return nil
}

// errAnswered tells a handler that a helper has already written the error
// response: the handler returns it, and errorHandler leaves the response be.
var errAnswered = errors.New("server: response already written")

// answered turns the nil of a written response into errAnswered.
func answered(err error) error {
	if err != nil {
		return err
	}
	return errAnswered
}

func (s *Server) refuseRetry(c *fiber.Ctx, status int, code, msg string) error {
	retry := s.retryHint()
	c.Set(fiber.HeaderRetryAfter, strconv.Itoa(int((retry+time.Second-1)/time.Second)))
	return c.Status(status).JSON(fiber.Map{"error": code, "message": msg, "retry_ms": retry.Milliseconds()})
}

// retryHint is a reconnect delay jittered in [RetryBase, 2×RetryBase).
func (s *Server) retryHint() time.Duration {
	b := s.cfg.RetryBase
	return b + time.Duration(rand.Int64N(int64(b)))
}

// apiError answers an API error as JSON: {"error":code,"message":…}.
func apiError(c *fiber.Ctx, status int, code, msg string) error {
	return c.Status(status).JSON(fiber.Map{"error": code, "message": msg})
}

// errorHandler turns Fiber's own errors (body too large, 404, 405) into the
// same JSON shape.
func errorHandler(c *fiber.Ctx, err error) error {
	if errors.Is(err, errAnswered) {
		return nil
	}
	status, code := fiber.StatusInternalServerError, "internal"
	var fe *fiber.Error
	if errors.As(err, &fe) {
		status = fe.Code
		switch status {
		case fiber.StatusRequestEntityTooLarge:
			code = "too_large"
		case fiber.StatusNotFound:
			code = "not_found"
		case fiber.StatusMethodNotAllowed:
			code = "method_not_allowed"
		default:
			code = "bad_request"
		}
	}
	return apiError(c, status, code, err.Error())
}
