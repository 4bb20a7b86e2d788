package server

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"time"

	fastws "github.com/fasthttp/websocket"
	"github.com/gofiber/contrib/websocket"
	"github.com/gofiber/fiber/v2"
	"golang.org/x/time/rate"

	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/auth"
	"github.com/tickstream/tickstream/stream/protocol"
)

// wsReadLimit is the hard cap on a client frame: past it the WebSocket
// library closes the connection (1009). Frames between MaxFrameBytes and
// this get a frame_too_large error and the connection stays up.
const wsReadLimit = 1 << 20

// wsBufferPool lends the library's write buffer to a connection only while
// it writes through the library, which tickstream no longer does for data
// (frames are built in frameBufs and written by the sockWriter): it stays
// so that an idle connection holds none should the library ever write.
var wsBufferPool sync.Pool

// wsWriteBufferBytes is the size of the library's lent write buffer.
const wsWriteBufferBytes = 4 << 10

// wsReadBufferBytes is the WebSocket reader's buffer. fasthttp's own
// 4 KiB connection reader already sits beneath it and batches the
// socket reads, so this one only needs to hold a frame header and a
// control frame's payload (125 bytes).
const wsReadBufferBytes = 256

func (s *Server) wsUpgrade(c *fiber.Ctx) error {
	if !websocket.IsWebSocketUpgrade(c) {
		return apiError(c, fiber.StatusUpgradeRequired, "upgrade_required", "GET /ws must be a WebSocket upgrade; use /sse for plain HTTP")
	}
	if s.cfg.DisableWebSocket {
		return apiError(c, fiber.StatusForbidden, "websocket_disabled", "WebSocket is disabled on this server; use /sse")
	}
	claims, err := s.authenticate(c)
	if err != nil {
		return err
	}
	if err := s.admit(c); err != nil {
		return err
	}
	c.Locals(claimsLocal, claims)
	return s.wsHandler(c)
}

func (s *Server) initWS() {
	s.wsHandler = websocket.New(s.serveWS, websocket.Config{
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   wsReadBufferBytes,
		WriteBufferSize:  wsWriteBufferBytes,
		WriteBufferPool:  &wsBufferPool,
		Subprotocols:     []string{subprotocol}, // echoed to a client that offers it
	})
}

// wsTransport writes a subscriber's batches as one text frame each,
// messages separated by '\n', built in a lent buffer and written to the
// socket in one write (sockWriter). Control frames (ping, pong, close) go
// through the library, under the same lock.
type wsTransport struct {
	conn *fastws.Conn
	sock *sockWriter
}

func newWSTransport(conn *fastws.Conn, timeout time.Duration) *wsTransport {
	return &wsTransport{conn: conn, sock: newSockWriter(conn.NetConn(), timeout)}
}

// transport is t as the bus sees it.
func (t *wsTransport) transport() stream.Transport { return busTransport(t, t.sock) }

func (t *wsTransport) appendFrame(dst []byte, msgs []stream.Message) []byte {
	return appendWSFrame(dst, msgs)
}

func (t *wsTransport) WriteBatch(msgs []stream.Message) error { return t.sock.writeBatch(t, msgs) }

// TryWrite implements stream.DirectTransport.
func (t *wsTransport) TryWrite(msgs []stream.Message) (started, incomplete bool) {
	return t.sock.tryBatch(t, msgs)
}

func (t *wsTransport) Heartbeat() error {
	return t.control(fastws.PingMessage, nil, false)
}

// control writes a control frame after whatever is still to be written;
// last says it is the close frame, after which nothing is written (it
// gets a second: the connection is ending anyway).
func (t *wsTransport) control(typ int, data []byte, last bool) error {
	t.sock.mu.Lock()
	defer t.sock.mu.Unlock()
	if err := t.sock.writeLocked(nil); err != nil {
		return err
	}
	if t.sock.closed {
		return fastws.ErrCloseSent
	}
	limit := t.sock.timeout
	if last {
		limit = time.Second
	}
	err := t.conn.WriteControl(typ, data, time.Now().Add(limit))
	t.sock.deadline = time.Time{} // the library set its own
	t.sock.closed = last
	return err
}

var _ stream.DirectTransport = (*wsTransport)(nil)

func (s *Server) serveWS(c *websocket.Conn) {
	conn := c.Conn
	// conn.Close only closes fasthttp's hijacked wrapper, which does
	// nothing: a stuck writer is cut off by closing the socket itself.
	sock := socket(conn.NetConn())
	tr := newWSTransport(conn, s.cfg.WriteTimeout)
	// The answer to a client's close frame goes through tr too, after
	// whatever update is still being written.
	conn.SetCloseHandler(func(code int, _ string) error {
		_ = tr.control(fastws.CloseMessage, fastws.FormatCloseMessage(code, ""), true)
		return nil
	})
	ip := c.IP()
	sub, err := s.open("ws", sock, ip)
	if errors.Is(err, errTooManyConns) {
		// admit let it in, but others took the room during the handshake.
		s.closeWS(tr, &protocol.Disconnect{Code: fastws.CloseTryAgainLater, Reason: "too many connections"})
		return
	}
	if err != nil {
		s.closeWS(tr, &protocol.Disconnect{Code: fastws.CloseGoingAway, Reason: "server shutting down"})
		return
	}
	defer s.closeStream(sub)
	claims, _ := c.Locals(claimsLocal).(*auth.Claims)
	ca := s.startAuth(sub, claims)
	defer ca.stop()
	hb := s.bus.Config().Heartbeat
	sub.Send(protocol.TypeWelcome, protocol.EncodeWelcome(sub.Session(), hb.Milliseconds(), time.Now().UnixMilli()))

	// A client that sends nothing, not even a pong, for two heartbeats is gone.
	idle := 2 * hb
	extend := func() { _ = conn.SetReadDeadline(time.Now().Add(idle)) }
	extend()
	conn.SetReadLimit(wsReadLimit)
	conn.SetPongHandler(func(string) error { extend(); return nil })
	// Pings count as messages: a ping flood gets rate_limited, then 1008.
	conn.SetPingHandler(func(data string) error {
		extend()
		if !s.allowMsg(sub) {
			return nil
		}
		err := tr.control(fastws.PongMessage, []byte(data), false)
		if errors.Is(err, fastws.ErrCloseSent) {
			return nil
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		return err
	})

	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		err := sub.Deliver(context.Background(), tr.transport())
		var d *protocol.Disconnect
		var ne net.Error
		switch {
		case errors.Is(err, stream.ErrClientGone):
			return // the reader ended the connection
		case errors.As(err, &d):
			s.closeWS(tr, d)
		case errors.As(err, &ne) && ne.Timeout():
			s.bus.Metrics().SlowClose()
			s.closeWS(tr, protocol.DisconnectSlow)
		default:
			_ = sock.Close() // the socket failed: wake the reader
			return
		}
		// Give the client a moment to answer the close frame, then stop
		// the reader.
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	}()

	pub := &wsPublisher{s: s, sub: sub, ip: ip}
	pubPace := rate.NewLimiter(rate.Limit(s.cfg.MaxPublishPerSec), max(1, int(2*s.cfg.MaxPublishPerSec)))
	for {
		typ, msg, err := conn.ReadMessage()
		if err != nil {
			if errors.Is(err, fastws.ErrReadLimit) { // the library closed it with 1009
				s.bus.Metrics().Limited("frame_hard_cap")
			}
			break
		}
		extend()
		switch {
		case typ == fastws.TextMessage && len(msg) <= s.cfg.MaxFrameBytes && isPublish(msg):
			// Publishes are paced, not refused: the reader waits for the
			// publish bucket, and for room in the publisher's queue, so
			// TCP slows the producer down (docs/protocol.md).
			_ = pubPace.Wait(context.Background())
			pub.enqueue(msg)
			extend() // the wait for room is not the client's silence
		case !s.allowMsg(sub):
			// dropped; the client got rate_limited
		case len(msg) > s.cfg.MaxFrameBytes:
			s.bus.Metrics().Limited(protocol.CodeFrameTooLarge)
			sub.Refuse(nil, protocol.CodeFrameTooLarge, "message of "+strconv.Itoa(len(msg))+" bytes; at most "+strconv.Itoa(s.cfg.MaxFrameBytes))
		case typ != fastws.TextMessage:
			sub.Refuse(nil, protocol.CodeBadJSON, "binary frames are not supported; send JSON text frames")
		default:
			if op, ok := parseRefresh(msg); ok {
				s.refreshWS(sub, ca, op)
				continue
			}
			_, _ = sub.Handle(msg)
		}
	}
	pub.stop()
	sub.Close(nil)
	_ = sock.Close() // unblocks a writer stuck on a dead client
	<-writerDone
}

// wsPublishQueue is how many publish ops of one connection wait for the
// publisher. Past it the reader waits for room: the acks come later and
// TCP pushes back on the producer, while the connection's deliveries go
// on (they have their own goroutine). Nothing is dropped.
const wsPublishQueue = 64

var publishOp = []byte(`"publish"`)

// isPublish tells a publish op from the others without parsing: a false
// positive is parsed as a publish and answered as the op it is.
func isPublish(msg []byte) bool { return bytes.Contains(msg, publishOp) }

// wsPublisher runs one connection's publish ops in order, off the reader's
// goroutine, and puts their acks on the connection's outbound queue. It
// starts at the first publish.
type wsPublisher struct {
	s    *Server
	sub  *stream.Subscriber
	ip   string // the client's address: its topic quota
	jobs chan []byte
	done chan struct{}
}

func (p *wsPublisher) enqueue(frame []byte) {
	if p.jobs == nil {
		p.jobs = make(chan []byte, wsPublishQueue)
		p.done = make(chan struct{})
		go p.run()
	}
	select {
	case p.jobs <- frame:
	case <-p.sub.Done():
	}
}

// stop waits for the publishes already read: they are published even
// when the connection has dropped (a resend with the same ids is then
// answered from the idempotency window).
func (p *wsPublisher) stop() {
	if p.jobs != nil {
		close(p.jobs)
		<-p.done
	}
}

func (p *wsPublisher) run() {
	defer close(p.done)
	for frame := range p.jobs {
		op, perr := protocol.ParseOp(frame)
		if perr == nil && op.Op != protocol.OpPublish {
			_, _ = p.sub.Handle(frame) // "publish" was only in a value
			continue
		}
		if perr != nil {
			p.sub.Refuse(perr.ID, perr.Code, perr.Message)
			continue
		}
		producer, allowed, perr := p.s.authorizePublish(p.s.claimsOf(p.sub), op.Producer)
		if perr != nil {
			p.sub.Refuse(op.ID, perr.Code, perr.Message)
			continue
		}
		res := p.s.publishTicks(producer, allowed, p.ip, op.Mid, op.Ticks)
		p.sub.Send(protocol.TypeAck, protocol.EncodePublishAck(op.ID, res))
	}
}

// closeWS sends a close frame whose reason carries a jittered retry hint.
func (s *Server) closeWS(tr *wsTransport, d *protocol.Disconnect) {
	reason := d.Reason + " retry_ms=" + strconv.FormatInt(s.retryHint().Milliseconds(), 10)
	msg := fastws.FormatCloseMessage(d.Code, reason)
	_ = tr.control(fastws.CloseMessage, msg, true)
}
