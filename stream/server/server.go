package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
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
	"github.com/valyala/fasthttp"
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
	// means no feeds: /readyz is ready while the server runs. If it also
	// reports sources (feeds.SourceReporter, as feeds.Supervisor does),
	// /api/topics names each topic's feed (feed, backup_for).
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

	// PublishFrom is who may POST /api/publish while auth is off (see
	// ParsePublishFrom). Zero value means loopback only.
	PublishFrom PublishFrom
	// AllowedOrigins are the browser origins that may open /ws and /sse
	// and use /api across origins (CORS); see ParseOrigins. The request's
	// own host is always allowed. Zero value means localhost.
	AllowedOrigins Origins
	// MaxConnsPerIP and MaxConns bound the open /ws and /sse streams per
	// client address and in total. Zero values mean 256 and 20000.
	MaxConnsPerIP int
	MaxConns      int
	// AcceptRatePerIP and AcceptBurstPerIP are each client address's own
	// connection bucket, besides the global one. Zero values mean 20/s
	// and a burst of 100.
	AcceptRatePerIP  float64
	AcceptBurstPerIP int
	// MaxMsgsPerSec bounds the messages (and pings) a client sends per
	// connection; past it each gets a rate_limited error, which spends
	// the connection's error budget, so a client that keeps on is closed
	// with 1008. The burst is twice the rate. Zero value means 50.
	MaxMsgsPerSec float64
	// MaxPublishPerSec paces a WebSocket connection's publish ops, which
	// MaxMsgsPerSec leaves aside: past it the reader waits before taking
	// the next publish, so the producer is slowed by TCP, never refused.
	// The burst is twice the rate. Zero value means 1000. It also bounds
	// POST /api/publish requests per producer (the token's subject with
	// auth on, else the client's address): past it a request is answered
	// 429 rate_limited with Retry-After.
	MaxPublishPerSec float64
	// MaxTopicsPerPublisher bounds the topics one client address may
	// create through POST /api/publish. Zero value means 10000.
	MaxTopicsPerPublisher int
	// ReadTimeout bounds reading a request (its headers and body), so a
	// client that sends headers a byte at a time (slowloris) is cut off.
	// Zero value means 10 s.
	ReadTimeout time.Duration
	// DeadPeerTimeout is TCP_USER_TIMEOUT on accepted sockets: a peer that
	// acknowledges nothing of what was written (a heartbeat at least) for
	// this long is dropped. Zero value means the bus heartbeat, so a dead
	// peer is noticed within two heartbeats; negative means the system's.
	DeadPeerTimeout time.Duration
	// TLSCertFile and TLSKeyFile, when set, serve HTTPS and WSS with this
	// PEM pair, re-read when either file changes.
	TLSCertFile string
	TLSKeyFile  string
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
	if c.PublishFrom.isZero() {
		c.PublishFrom.loopback = true
	}
	if !c.AllowedOrigins.parsed {
		c.AllowedOrigins.localhost = true
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.MaxConnsPerIP, 256)
	def(&c.MaxConns, 20_000)
	def(&c.AcceptBurstPerIP, 100)
	def(&c.MaxTopicsPerPublisher, 10_000)
	if c.AcceptRatePerIP == 0 {
		c.AcceptRatePerIP = 20
	}
	if c.MaxMsgsPerSec == 0 {
		c.MaxMsgsPerSec = 50
	}
	if c.MaxPublishPerSec == 0 {
		c.MaxPublishPerSec = 1000
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = 10 * time.Second
	}
	if c.DeadPeerTimeout == 0 {
		c.DeadPeerTimeout = c.Bus.Config().Heartbeat
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return errors.New("server: TLS needs both a certificate and a key file")
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
	clients   *clients    // per-address streams and connection buckets
	quota     *topicQuota // topics created per publishing address
	pubRates  *clients    // POST /api/publish requests per producer (MaxPublishPerSec)
	tls       *certReloader

	draining atomic.Bool
	mu       sync.Mutex
	streams  map[*stream.Subscriber]*streamInfo // open /ws and /sse streams
	sessions map[string]*stream.Subscriber      // SSE sessions by id
	cursors  *cursorStore                       // SSE cursor logs
	idem     *idemStore                         // recent publish ids
	wg       sync.WaitGroup                     // stream handlers

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
		streams:  make(map[*stream.Subscriber]*streamInfo),
		sessions: make(map[string]*stream.Subscriber),
		cursors:  newCursorStore(),
		idem:     newIdemStore(cfg.IdempotencyIDs, cfg.IdempotencyProducers, cfg.IdempotencyTotalIDs, cfg.IdempotencyTTL),
		clients:  newClients(cfg.AcceptRatePerIP, cfg.AcceptBurstPerIP),
		quota:    newTopicQuota(cfg.MaxTopicsPerPublisher),
		pubRates: newClients(cfg.MaxPublishPerSec, max(1, int(2*cfg.MaxPublishPerSec))),
	}
	if cfg.TLSCertFile != "" {
		r, err := newCertReloader(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, err
		}
		s.tls = r
	}
	cfg.Bus.OnEvict(s.quota.release)
	s.cursors.share = cfg.CursorShare
	s.app = fiber.New(fiber.Config{
		DisableStartupMessage: true,
		BodyLimit:             cfg.MaxPublishBytes,
		ReadTimeout:           cfg.ReadTimeout,
		// Only publish reads bodies, and only JSON: a multipart body is
		// refused by its content type, never parsed.
		DisablePreParseMultipartForm: true,
		IdleTimeout:                  2 * time.Minute,
		ErrorHandler:                 errorHandler,
		AppName:                      "tickstream",
	})
	// fasthttp answers a request it could not read whole (a URL past its
	// header buffer: 431; a body past the limit: 413; a malformed one)
	// and closes the connection. With the rest of the request unread,
	// that close is a reset, and a client still writing the request loses
	// the answer ("connection reset by peer"): such a connection drains
	// for a moment before it closes, as nginx's lingering close does.
	hs := s.app.Server()
	answer := hs.ErrorHandler
	hs.ErrorHandler = func(ctx *fasthttp.RequestCtx, err error) {
		lingerOnClose(ctx.Conn())
		answer(ctx, err)
	}
	s.initWS()
	s.routes()
	return s, nil
}

// App returns the Fiber app, for tests with app.Test and for adding routes.
func (s *Server) App() *fiber.App { return s.app }

func (s *Server) routes() {
	app := s.app
	app.Use("/api", s.cors)
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
	ln = sockoptListener{Listener: ln, sendBuf: s.cfg.SendBufferBytes, userTimeout: s.cfg.DeadPeerTimeout}
	ln = trackingListener{Listener: ln, t: &s.silent}
	if s.tls != nil {
		ln = tls.NewListener(ln, s.tls.config())
	}
	err := s.app.Listener(ln)
	if s.draining.Load() {
		return ErrServerClosed
	}
	return err
}

// sockoptListener sets SO_SNDBUF (when sendBuf > 0) and TCP_USER_TIMEOUT
// (when userTimeout > 0; Linux only) on accepted TCP connections. The user
// timeout drops a peer that acknowledges nothing written to it (the
// heartbeats at least) for that long: a client whose machine or network
// vanished without a FIN is noticed within two heartbeats instead of when
// TCP's retransmissions give up, some 15 minutes later.
type sockoptListener struct {
	net.Listener
	sendBuf     int
	userTimeout time.Duration
}

func (l sockoptListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		if l.sendBuf > 0 {
			_ = tc.SetWriteBuffer(l.sendBuf) // best effort: the kernel may clamp it
		}
		if l.userTimeout > 0 {
			_ = setUserTimeout(tc, l.userTimeout) // best effort
		}
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
	t      *silentConns
	spoke  atomic.Bool
	linger atomic.Bool // drain before closing (lingerOnClose)
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
	if c.linger.Load() {
		drain(c.Conn)
	}
	return c.Conn.Close()
}

// lingerOnClose makes conn (a trackedConn, under TLS or not) drain before
// it closes.
func lingerOnClose(conn net.Conn) {
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	if tc, ok := conn.(*trackedConn); ok {
		tc.linger.Store(true)
	}
}

// A draining connection reads and drops at most lingerBytes for at most
// lingerTime.
const (
	lingerTime  = 2 * time.Second
	lingerBytes = 64 << 20
)

// drain half-closes conn, so that the client reads the answer and then
// the end of the stream, and reads and drops what the client still sends
// until it closes its side, lingerTime passes or lingerBytes were read.
// Closing with input unread would make the kernel send a reset, which can
// take the answer with it.
func drain(conn net.Conn) {
	hc, ok := conn.(interface{ CloseWrite() error })
	if !ok || hc.CloseWrite() != nil {
		return
	}
	_ = conn.SetReadDeadline(time.Now().Add(lingerTime))
	_, _ = io.CopyN(io.Discard, conn, lingerBytes)
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
	for _, st := range s.streams {
		_ = st.conn.Close()
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

// streamInfo is what the server keeps of an open stream.
type streamInfo struct {
	conn net.Conn      // the socket under the stream
	ip   string        // the client address (MaxConnsPerIP)
	msgs *rate.Limiter // the client's messages (MaxMsgsPerSec)

	mu     sync.Mutex // guards msgs' use and the drop budget
	drops  float64    // messages dropped, leaking at MaxMsgsPerSec
	dropAt time.Time  // when drops was last updated
	toldAt time.Time  // when the client last got rate_limited
}

// errTooManyConns refuses a stream past MaxConnsPerIP or MaxConns.
var errTooManyConns = errors.New("server: too many connections")

// open registers a new stream connection from client address ip, refusing
// it while draining (ErrServerClosed) or past the connection limits
// (errTooManyConns). conn is the connection as the handler sees it; the
// socket under it is closed if the stream outlives Shutdown's grace
// period.
func (s *Server) open(transport string, conn net.Conn, ip string) (*stream.Subscriber, error) {
	if !s.clients.add(ip, s.cfg.MaxConnsPerIP, s.cfg.MaxConns) {
		s.bus.Metrics().Limited(CodeTooManyConns)
		return nil, errTooManyConns
	}
	sub, err := s.bus.NewSubscriber(transport)
	if err != nil {
		s.clients.done(ip)
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() {
		sub.Close(protocol.DisconnectShutdown)
		s.clients.done(ip)
		return nil, ErrServerClosed
	}
	s.streams[sub] = &streamInfo{conn: socket(conn), ip: ip, msgs: rate.NewLimiter(rate.Limit(s.cfg.MaxMsgsPerSec), max(1, int(2*s.cfg.MaxMsgsPerSec)))}
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
	if st := s.streams[sub]; st != nil {
		s.clients.done(st.ip)
	}
	delete(s.streams, sub)
	delete(s.sessions, sub.Session())
	s.mu.Unlock()
	s.wg.Done()
}

// admit applies the draining state, the allowed origins, the connection
// limits and the connection buckets (the client address's, then the
// global one) to a new stream request. It returns a non-nil error
// response when refused.
func (s *Server) admit(c *fiber.Ctx) error {
	if s.draining.Load() {
		return answered(s.refuseRetry(c, fiber.StatusServiceUnavailable, "shutting_down", "server is shutting down"))
	}
	if err := s.checkOrigin(c); err != nil {
		return err
	}
	// An authorizer (auth on) is consulted here, before any bucket is spent.
	ip := c.IP()
	if n, total := s.clients.count(ip); n >= s.cfg.MaxConnsPerIP || total >= s.cfg.MaxConns {
		s.bus.Metrics().Limited(CodeTooManyConns)
		return answered(s.refuseRetry(c, fiber.StatusTooManyRequests, CodeTooManyConns,
			fmt.Sprintf("too many open streams (at most %d per client address, %d in all)", s.cfg.MaxConnsPerIP, s.cfg.MaxConns)))
	}
	if !s.clients.allow(ip) {
		s.bus.Metrics().Limited("accept_rate_per_ip")
		return answered(s.refuseRetry(c, fiber.StatusTooManyRequests, CodeBusy, "too many new connections from this address; retry later"))
	}
	if !s.accept.Allow() {
		s.bus.Metrics().Limited("accept_rate")
		return answered(s.refuseRetry(c, fiber.StatusServiceUnavailable, CodeBusy, "too many new connections; retry later"))
	}
	return nil
}

// allowMsg takes a token from sub's message bucket. A message over the
// rate is dropped; the client gets a rate_limited error (at most one a
// second), and one that keeps on (its drops pass msgDropBudget× the rate,
// leaking at the rate) is closed with 1008.
func (s *Server) allowMsg(sub *stream.Subscriber) bool {
	s.mu.Lock()
	st := s.streams[sub]
	s.mu.Unlock()
	if st == nil {
		return true
	}
	now := time.Now()
	st.mu.Lock()
	if st.msgs.AllowN(now, 1) {
		st.mu.Unlock()
		return true
	}
	r := s.cfg.MaxMsgsPerSec
	if !st.dropAt.IsZero() {
		st.drops = max(0, st.drops-now.Sub(st.dropAt).Seconds()*r)
	}
	st.dropAt = now
	st.drops++
	over := st.drops > max(msgDropBudget*r, 10)
	tell := now.Sub(st.toldAt) >= time.Second
	if tell {
		st.toldAt = now
	}
	st.mu.Unlock()
	s.bus.Metrics().Limited(protocol.CodeRateLimited)
	switch {
	case over:
		sub.Close(disconnectRate)
	case tell:
		sub.Send(protocol.TypeError, protocol.EncodeError(nil, protocol.CodeRateLimited,
			fmt.Sprintf("more than %g messages per second: messages are being dropped", r)))
	}
	return false
}

// msgDropBudget is how many seconds' worth of messages over the rate a
// client may send before it is closed.
const msgDropBudget = 5

// disconnectRate closes a client that keeps sending over max_msgs_per_sec.
var disconnectRate = &protocol.Disconnect{Code: 1008, Reason: "message rate limit exceeded"}

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
