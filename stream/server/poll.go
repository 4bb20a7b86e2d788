package server

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/protocol"
)

// maxPollBytes bounds one poll's answer: past it the poll answers with
// what it has and the next poll goes on from its cursor.
const maxPollBytes = 1 << 20

// pollGrace is how long a poll whose time is up still waits for messages
// already queued (a subscription's snapshots) to be collected.
const pollGrace = time.Second

// pollTransport collects what a poll delivers: the messages and, as an
// SSE stream would name them, the cursor after the last one.
type pollTransport struct {
	log *cursorLog

	mu    sync.Mutex
	out   []byte // the messages, comma-separated
	n     int
	event uint64
	got   chan struct{} // cap 1: a message was collected
	full  bool
}

// kept are the message types a poll returns: no welcome, ack or status.
func kept(typ string) bool {
	switch typ {
	case protocol.TypeSnapshot, protocol.TypeUpdate, protocol.TypeReset, protocol.TypeError:
		return true
	}
	return false
}

func (t *pollTransport) add(typ string, json []byte) {
	if !kept(typ) {
		return
	}
	if t.n > 0 {
		t.out = append(t.out, ',')
	}
	t.out = append(t.out, json...)
	t.n++
	t.full = t.full || len(t.out) >= maxPollBytes
	select {
	case t.got <- struct{}{}:
	default:
	}
}

func (t *pollTransport) WriteBatch(msgs []stream.Message) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.addLocked(msgs)
	return nil
}

// addLocked collects msgs, an update run's parts one by one.
func (t *pollTransport) addLocked(msgs []stream.Message) {
	for i := range msgs {
		m := &msgs[i]
		if len(m.Parts) > 0 {
			t.addLocked(m.Parts)
			continue
		}
		if !kept(m.Type) {
			continue
		}
		t.event, _, _ = t.log.advance(m.Topic, m.Epoch, m.Seq)
		t.add(m.Type, m.JSON)
	}
}

func (t *pollTransport) Heartbeat() error { return nil }

// handlePoll is the long-poll transport: GET /poll?topics=…&cursor=…
// &throttle_ms=…&timeout_ms=… answers {"messages":[…],"cursor":"…"}, the
// messages (snapshot, update, reset, error) since the cursor, waiting up
// to timeout_ms for the first. The cursor is an SSE event id, either
// form, and the answer's cursor is the event id an SSE stream would have
// given after the same messages, so the two transports resume each other.
// A poll is a stream for the limits: admitted like one, counted while it
// waits, and ended by Shutdown.
func (s *Server) handlePoll(c *fiber.Ctx) error {
	claims, err := s.authenticate(c)
	if err != nil {
		return err
	}
	req, expired, err := s.streamRequest(c, c.Query("cursor"), "cursor")
	if err != nil {
		return err
	}
	timeout, err := queryInt(c, "timeout_ms", s.cfg.PollTimeout.Milliseconds(), 0, s.cfg.MaxPollTimeout.Milliseconds())
	if err != nil {
		return err
	}
	if err := s.admit(c); err != nil {
		return err
	}
	sub, err := s.open("poll", c.Context().Conn(), c.IP())
	if errors.Is(err, errTooManyConns) {
		return s.refuseRetry(c, fiber.StatusTooManyRequests, CodeTooManyConns, "too many open streams")
	}
	if err != nil {
		return s.refuseRetry(c, fiber.StatusServiceUnavailable, "shutting_down", "server is shutting down")
	}
	defer s.closeStream(sub)
	defer s.startAuth(sub, claims).stop()
	log := s.cursors.newLog(sub.Session())
	defer s.cursors.ended(log)
	t := &pollTransport{log: log, got: make(chan struct{}, 1), out: make([]byte, 0, 1024)}
	for topic, cur := range req.Resume {
		t.event, _, _ = log.advance(topic, cur.Epoch, cur.Seq)
	}
	if expired {
		t.add(protocol.TypeError, protocol.EncodeError(nil, protocol.CodeBadResume, "cursor has expired: the poll starts afresh"))
	}
	if len(req.Topics) > 0 {
		// No topics (a client that has not chosen any yet) is an empty
		// poll: it waits out its timeout and keeps its cursor.
		_, _ = sub.Subscribe(req)
	}

	ctx, cancel := context.WithCancel(context.Background())
	delivered := make(chan error, 1)
	go func() { delivered <- sub.Deliver(ctx, t) }()
	wait := time.NewTimer(time.Duration(timeout) * time.Millisecond)
	defer wait.Stop()
	timedOut := false
	var grace <-chan time.Time
wait:
	for {
		t.mu.Lock()
		has, full := t.n > 0, t.full
		t.mu.Unlock()
		// Once something came, or the time is up, answer as soon as what
		// is queued has been collected.
		if full || (has || timedOut) && sub.PendingBytes() == 0 {
			break
		}
		select {
		case <-t.got:
		case <-wait.C:
			timedOut = true
			g := time.NewTimer(pollGrace)
			defer g.Stop()
			grace = g.C
		case <-grace:
			break wait
		case err := <-delivered:
			delivered <- err // closed (Shutdown): answer what came
			break wait
		}
	}
	cancel()
	<-delivered

	t.mu.Lock()
	defer t.mu.Unlock()
	var cursor []byte
	log.mu.Lock()
	ref := log.ref
	log.mu.Unlock()
	if ref {
		cursor = protocol.AppendCursorRef(nil, log.stream, t.event)
	} else {
		cursor = log.appendInline(nil)
	}
	b := make([]byte, 0, len(t.out)+len(cursor)+32)
	b = append(b, `{"messages":[`...)
	b = append(b, t.out...)
	b = append(b, `],"cursor":`...)
	b = strconv.AppendQuote(b, string(cursor))
	b = append(b, '}')
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Send(b)
}
