package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream/protocol"
)

// Options configure Dial. The zero value is ready to use.
type Options struct {
	// HTTPClient makes the WebSocket handshake and the /api/history
	// requests. Zero value means http.DefaultClient.
	HTTPClient *http.Client
	// Header is sent with the handshake and with every history request
	// (an Authorization header, say).
	Header http.Header
	// ReadLimit is the largest frame Next accepts. Zero value means 16 MiB.
	ReadLimit int64
	// IdleTimeout closes a connection on which nothing arrives, not even
	// the server's heartbeat ping, for this long while Next waits: Next
	// then returns an error wrapping ErrIdle. It finds a dead server on
	// quiet topics. Zero value means three heartbeats (from the welcome);
	// negative turns it off.
	IdleTimeout time.Duration
}

// Errors returned by the client.
var (
	// ErrIdle: nothing arrived for Options.IdleTimeout; the connection
	// was closed.
	ErrIdle = errors.New("client: server silent past the idle timeout")
	// ErrBadMessage: a server message was not the JSON expected. The
	// connection stays usable.
	ErrBadMessage = errors.New("client: bad server message")
	// ErrNoWelcome: the server's first message was not a welcome.
	ErrNoWelcome = errors.New("client: no welcome from the server")
)

// Conn is one WebSocket connection to a tickstream server.
//
// Next, Subscribe, Unsubscribe and Ping read the connection and must be
// called from one goroutine at a time; Cursors, Buffered, Session,
// Heartbeat, History and Close may be called from any goroutine.
type Conn struct {
	ws      *websocket.Conn
	hist    historyEndpoint
	welcome protocol.WireMessage
	nextID  int64

	// queue holds decoded messages that Next has not returned yet.
	queue []queued

	mu       sync.Mutex
	cursors  map[string]protocol.Cursor
	buffered atomic.Int64

	// Idle watchdog: readSince is when the current read began (0 while
	// no read is waiting), lastSeen when a frame or ping last arrived.
	idle      time.Duration
	readSince atomic.Int64
	lastSeen  atomic.Int64
	silent    atomic.Bool
	wmu       sync.Mutex
	watchdog  *time.Timer
	closed    bool
}

type queued struct {
	msg protocol.WireMessage
	err error
}

// Dial connects to a tickstream WebSocket endpoint (ws://host:8080/ws,
// or wss://) and reads the welcome. opts may be nil. ctx bounds the
// handshake only.
func Dial(ctx context.Context, url string, opts *Options) (*Conn, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.HTTPClient == nil {
		o.HTTPClient = http.DefaultClient
	}
	if o.ReadLimit <= 0 {
		o.ReadLimit = 16 << 20
	}
	hist, err := newHistoryEndpoint(url, o.HTTPClient, o.Header)
	if err != nil {
		return nil, err
	}
	c := &Conn{hist: hist, cursors: make(map[string]protocol.Cursor)}
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{
		HTTPClient: o.HTTPClient,
		HTTPHeader: o.Header,
		OnPingReceived: func(context.Context, []byte) bool {
			c.lastSeen.Store(time.Now().UnixNano())
			return true // answer it
		},
	})
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", url, err)
	}
	ws.SetReadLimit(o.ReadLimit)
	c.ws = ws
	if err := c.readFrame(ctx); err != nil {
		ws.CloseNow()
		return nil, err
	}
	if q := c.pop(); q.err != nil || q.msg.Type != protocol.TypeWelcome {
		ws.CloseNow()
		return nil, fmt.Errorf("%w: got %+v (%v)", ErrNoWelcome, q.msg, q.err)
	} else {
		c.welcome = q.msg
	}
	c.idle = o.IdleTimeout
	if c.idle == 0 {
		c.idle = 3 * c.Heartbeat()
	}
	if c.idle > 0 {
		c.wmu.Lock()
		c.watchdog = time.AfterFunc(c.idle/3, c.watch)
		c.wmu.Unlock()
	}
	return c, nil
}

// Session is the session id from the server's welcome.
func (c *Conn) Session() string { return c.welcome.Session }

// Heartbeat is the server's ping interval, from the welcome. The
// connection answers the pings while Next (or another reading call)
// waits: a caller that stops reading for two heartbeats is dropped by the
// server.
func (c *Conn) Heartbeat() time.Duration {
	return time.Duration(c.welcome.HeartbeatMS) * time.Millisecond
}

// Subscribe subscribes to topics (names, or patterns ending in *) and
// returns the topics the server acknowledged, once its ack has arrived.
// throttle is the subscription's throttle (0: every tick; negative: the
// server's default). resume maps topics to the last (epoch, seq) the
// caller has, so the server replays what was missed; it may be nil.
//
// The server takes the snapshots (or starts the replay) after it sends
// the ack, so a tick published just as Subscribe returns may come in a
// snapshot rather than as an update.
//
// If the server refuses the whole request, the error is its
// *protocol.Error. Topics it refuses while acknowledging others come as
// error messages from Next. Messages that arrive meanwhile (updates of
// earlier subscriptions) are kept for Next, in order.
func (c *Conn) Subscribe(ctx context.Context, topics []string, throttle time.Duration, resume map[string]protocol.Cursor) ([]string, error) {
	req := request{Op: protocol.OpSubscribe, Topics: topics, Resume: resume}
	if throttle >= 0 {
		ms := throttle.Milliseconds()
		req.ThrottleMS = &ms
	}
	// A topic resumed but quiet has no message to move its cursor: start
	// it at the resume position, so Cursors resumes it again.
	c.mu.Lock()
	for t, cur := range resume {
		if _, ok := c.cursors[t]; !ok {
			c.cursors[t] = cur
		}
	}
	c.mu.Unlock()
	m, err := c.roundTrip(ctx, req, protocol.TypeAck)
	return m.Topics, err
}

// Unsubscribe ends the subscriptions to topics and returns once the
// server has acknowledged it. Updates already on their way still come
// from Next.
func (c *Conn) Unsubscribe(ctx context.Context, topics []string) error {
	_, err := c.roundTrip(ctx, request{Op: protocol.OpUnsubscribe, Topics: topics}, protocol.TypeAck)
	return err
}

// Ping sends a ping message and waits for its pong: the server has read
// everything sent before it.
func (c *Conn) Ping(ctx context.Context) error {
	_, err := c.roundTrip(ctx, request{Op: protocol.OpPing}, protocol.TypePong)
	return err
}

// Next returns the next server message: ack and error messages of
// requests Subscribe and Ping did not wait for, snapshot, update, reset,
// status. Frames carrying several messages are split; Next returns them
// one at a time, and updates the cursors from every snapshot and update
// it returns. A message that is not valid JSON gives an error wrapping
// ErrBadMessage, and the next call goes on. Other errors end the
// connection.
//
// If ctx ends while Next waits, the connection is closed (the WebSocket
// library cannot abandon a read otherwise).
func (c *Conn) Next(ctx context.Context) (protocol.WireMessage, error) {
	for len(c.queue) == 0 {
		if err := c.readFrame(ctx); err != nil {
			return protocol.WireMessage{}, err
		}
	}
	q := c.pop()
	if q.err != nil {
		return protocol.WireMessage{}, q.err
	}
	switch q.msg.Type {
	case protocol.TypeSnapshot, protocol.TypeUpdate:
		c.mu.Lock()
		c.cursors[q.msg.Topic] = protocol.Cursor{Epoch: q.msg.Epoch, Seq: q.msg.Seq}
		c.mu.Unlock()
	}
	return q.msg, nil
}

// Buffered is the number of messages already read that Next will return
// without waiting: a caller that batches its output can flush when it is
// zero.
func (c *Conn) Buffered() int { return int(c.buffered.Load()) }

// Cursors returns a copy of the (epoch, seq) of every topic as of the
// last snapshot or update Next returned (or the resume position given to
// Subscribe): pass it as resume to a new connection's Subscribe to go on
// without loss or duplicates.
func (c *Conn) Cursors() map[string]protocol.Cursor {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]protocol.Cursor, len(c.cursors))
	for t, cur := range c.cursors {
		out[t] = cur
	}
	return out
}

// Close closes the connection with a normal close frame. It is safe to
// call more than once.
func (c *Conn) Close() error {
	c.wmu.Lock()
	c.closed = true
	if c.watchdog != nil {
		c.watchdog.Stop()
	}
	c.wmu.Unlock()
	err := c.ws.Close(websocket.StatusNormalClosure, "")
	if err != nil {
		c.ws.CloseNow()
	}
	var ce websocket.CloseError
	if errors.As(err, &ce) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// request is one client message.
type request struct {
	Op         string                     `json:"op"`
	ID         int64                      `json:"id"`
	Topics     []string                   `json:"topics,omitempty"`
	ThrottleMS *int64                     `json:"throttle_ms,omitempty"`
	Resume     map[string]protocol.Cursor `json:"resume,omitempty"`
	Producer   string                     `json:"producer,omitempty"`
	Mid        json.RawMessage            `json:"mid,omitempty"`
	Ticks      []tick.Tick                `json:"ticks,omitempty"`
}

// roundTrip sends req with a fresh id and reads until the answer of type
// want, or an error, with that id. Other messages stay queued for Next.
func (c *Conn) roundTrip(ctx context.Context, req request, want string) (protocol.WireMessage, error) {
	c.nextID++
	req.ID = c.nextID
	b, err := json.Marshal(req)
	if err != nil {
		return protocol.WireMessage{}, err
	}
	if err := c.ws.Write(ctx, websocket.MessageText, b); err != nil {
		return protocol.WireMessage{}, fmt.Errorf("client: %s: %w", req.Op, err)
	}
	id := strconv.FormatInt(req.ID, 10)
	for scan := len(c.queue); ; scan++ {
		for scan == len(c.queue) {
			if err := c.readFrame(ctx); err != nil {
				return protocol.WireMessage{}, err
			}
		}
		m := c.queue[scan].msg
		if c.queue[scan].err != nil || string(bytes.TrimSpace(m.ID)) != id || (m.Type != want && m.Type != protocol.TypeError) {
			continue
		}
		c.queue = append(c.queue[:scan], c.queue[scan+1:]...)
		c.buffered.Add(-1)
		if m.Type == protocol.TypeError {
			return m, &protocol.Error{ID: m.ID, Code: m.Code, Message: m.Message}
		}
		return m, nil
	}
}

func (c *Conn) pop() queued {
	q := c.queue[0]
	c.queue[0] = queued{}
	c.queue = c.queue[1:]
	c.buffered.Add(-1)
	return q
}

// readFrame reads one frame and queues its messages.
func (c *Conn) readFrame(ctx context.Context) error {
	c.readSince.Store(time.Now().UnixNano())
	_, frame, err := c.ws.Read(ctx)
	c.readSince.Store(0)
	if err != nil {
		if c.silent.Load() {
			return fmt.Errorf("%w (%v)", ErrIdle, err)
		}
		return err
	}
	c.lastSeen.Store(time.Now().UnixNano())
	for len(frame) > 0 {
		var line []byte
		line, frame, _ = bytes.Cut(frame, []byte{'\n'})
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var q queued
		if err := json.Unmarshal(line, &q.msg); err != nil {
			q.err = fmt.Errorf("%w %.200q: %v", ErrBadMessage, line, err)
		}
		c.queue = append(c.queue, q)
		c.buffered.Add(1)
	}
	return nil
}

// watch closes the connection when a read has waited past the idle
// timeout with nothing arriving; otherwise it checks again later.
func (c *Conn) watch() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return
	}
	if since := c.readSince.Load(); since != 0 {
		last := max(since, c.lastSeen.Load())
		if time.Since(time.Unix(0, last)) >= c.idle {
			c.silent.Store(true)
			c.ws.CloseNow()
			return
		}
	}
	c.watchdog.Reset(c.idle / 3)
}
