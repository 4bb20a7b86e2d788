package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/protocol"
)

// sseTransport writes messages as SSE events and keeps the stream's
// cursor: inline while it is short, then a reference into its cursor log.
// It writes straight to the hijacked socket (sockWriter): a batch is
// built in a lent buffer and goes out in one write.
type sseTransport struct {
	sock  *sockWriter
	log   *cursorLog
	id    []byte // the cursor after the last message
	dirty bool   // the inline cursor is out of date
}

// writeDeadline returns the deadline for a write starting now: the one in
// effect while it is at least 7/8 of the timeout away, else a fresh one.
// The runtime re-arms a timer each time a socket's deadline changes, so a
// busy stream that keeps its deadline for a while spares that per batch,
// and a write still gets between 7/8 and all of the timeout.
func writeDeadline(cur *time.Time, timeout time.Duration) time.Time {
	now := time.Now()
	if cur.Sub(now) < timeout-timeout/8 {
		*cur = now.Add(timeout)
	}
	return *cur
}

// appendFrame appends msgs as events, advancing the cursor: call it only
// for events that are then written.
func (t *sseTransport) appendFrame(b []byte, msgs []stream.Message) []byte {
	for i := range msgs {
		if parts := msgs[i].Parts; len(parts) > 0 {
			b = t.appendFrame(b, parts) // an update run: one event each
			continue
		}
		m := &msgs[i]
		t.id = t.log.nextID(t.id, &t.dirty, m.Topic, m.Epoch, m.Seq)
		b = append(b, "event: "...)
		b = append(b, m.Type...)
		if len(t.id) > 0 {
			b = append(b, "\nid: "...)
			b = append(b, t.id...)
		}
		b = append(b, "\ndata: "...)
		b = append(b, m.JSON...)
		b = append(b, "\n\n"...)
	}
	return b
}

func (t *sseTransport) WriteBatch(msgs []stream.Message) error { return t.sock.writeBatch(t, msgs) }

// TryWrite implements stream.DirectTransport.
func (t *sseTransport) TryWrite(msgs []stream.Message) (started, incomplete bool) {
	return t.sock.tryBatch(t, msgs)
}

func (t *sseTransport) Heartbeat() error { return t.writeString(": hb\n\n", false) }

// writeString writes s after whatever is still to be written; last says
// it ends the stream.
func (t *sseTransport) writeString(s string, last bool) error {
	t.sock.mu.Lock()
	defer t.sock.mu.Unlock()
	err := t.sock.writeLocked([]byte(s))
	t.sock.closed = t.sock.closed || last
	return err
}

// transport is t as the bus sees it.
func (t *sseTransport) transport() stream.Transport { return busTransport(t, t.sock) }

var _ stream.DirectTransport = (*sseTransport)(nil)

// sseHead is the response head of an event stream. The body ends when
// the connection closes (no length, not chunked): a stream is never
// followed by another response on its connection.
const sseHead = "HTTP/1.1 200 OK\r\n" +
	"Content-Type: text/event-stream\r\n" +
	"Cache-Control: no-cache\r\n" +
	"Connection: close\r\n" +
	"X-Accel-Buffering: no\r\n\r\n"

// sseError answers a request that cannot start a stream.
func sseError(c *fiber.Ctx, status int, code, msg string) error {
	return apiError(c, status, code, msg)
}

// streamRequest reads what an SSE stream or a long poll delivers: the
// topics and throttle_ms of the query, resumed from cursor (an SSE event
// id, either form), whose topics are resumed too. expired says that a
// reference cursor could no longer be resolved: the delivery starts
// afresh. On a bad request it writes the error response and returns
// errAnswered.
func (s *Server) streamRequest(c *fiber.Ctx, cursor, cursorName string) (req stream.SubscribeRequest, expired bool, err error) {
	for _, t := range strings.Split(c.Query("topics"), ",") {
		if t = strings.TrimSpace(t); t != "" {
			req.Topics = append(req.Topics, t)
		}
	}
	if v := c.Query("throttle_ms"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			ms = -1
		}
		if _, perr := protocol.Throttle(nil, ms, s.bus.Config().MaxThrottle.Milliseconds()); perr != nil {
			return req, false, answered(sseError(c, fiber.StatusBadRequest, perr.Code, perr.Message))
		}
		req.ThrottleMS = &ms
	}
	for _, t := range req.Topics {
		if !protocol.ValidSub(t) {
			perr := protocol.BadSub(nil, t)
			return req, false, answered(sseError(c, fiber.StatusBadRequest, perr.Code, perr.Message))
		}
	}
	cur, err := protocol.ParseCursor(cursor)
	if err != nil {
		return req, false, answered(sseError(c, fiber.StatusBadRequest, protocol.CodeBadResume, cursorName+" is not a tickstream cursor"))
	}
	resume := cur.Positions
	if cur.IsRef() {
		if resume, err = s.cursors.resolve(cur.Stream, cur.Event); err != nil {
			// Not a 4xx: the browser would retry the same id forever.
			// The stream starts afresh and says why.
			resume, expired = nil, true
		}
	}
	// Topics named only in the cursor are resumed too, as named topics
	// unless a pattern of the URL covers them.
	var patterns []string
	named := make(map[string]bool, len(req.Topics))
	for _, t := range req.Topics {
		named[t] = true
		if p, ok := protocol.Pattern(t); ok {
			patterns = append(patterns, p)
		}
	}
	cursorTopics := make([]string, 0, len(resume))
	for t := range resume {
		covered := slices.ContainsFunc(patterns, func(p string) bool { return strings.HasPrefix(t, p) })
		if !named[t] && !covered {
			cursorTopics = append(cursorTopics, t)
		}
	}
	sort.Strings(cursorTopics)
	req.Topics = append(req.Topics, cursorTopics...)
	req.Resume = resume
	// Patterns count one plus each topic they deliver now, as a
	// subscribe counts them: the stream is refused before it starts.
	if max := s.bus.Config().MaxTopicsPerSubscriber; len(req.Topics) > max || len(req.Topics)+s.bus.CountMatching(patterns, named) > max {
		return req, expired, answered(sseError(c, fiber.StatusBadRequest, protocol.CodeTooManyTopics, fmt.Sprintf("at most %d topics per stream (each pattern counts, and so does each topic it delivers)", max)))
	}
	return req, expired, nil
}

func (s *Server) handleSSE(c *fiber.Ctx) error {
	claims, err := s.authenticate(c)
	if err != nil {
		return err
	}
	lastID := c.Get("Last-Event-ID")
	if q := c.Query("last_event_id"); q != "" {
		lastID = q
	}
	req, expired, err := s.streamRequest(c, lastID, "Last-Event-ID")
	if err != nil {
		return err
	}
	resume := req.Resume

	if err := s.admit(c); err != nil {
		return err
	}
	sub, err := s.open("sse", c.Context().Conn(), c.IP())
	if errors.Is(err, errTooManyConns) {
		return s.refuseRetry(c, fiber.StatusTooManyRequests, CodeTooManyConns, "too many open streams")
	}
	if err != nil {
		return s.refuseRetry(c, fiber.StatusServiceUnavailable, "shutting_down", "server is shutting down")
	}
	ca := s.startAuth(sub, claims)
	hb := s.bus.Config().Heartbeat
	log := s.cursors.newLog(sub.Session())
	// Start from the resumed positions, so that the next id still names
	// a quiet topic that has no event on this stream yet.
	for topic, cur := range resume {
		log.advance(topic, cur.Epoch, cur.Seq)
	}
	// The stream takes the connection over (as a WebSocket does): its
	// writer writes the response and the events straight to the socket,
	// on the goroutine fasthttp runs the hijack handler on, and fasthttp
	// closes the connection when it returns.
	c.Context().HijackSetNoResponse(true)
	c.Context().Hijack(func(conn net.Conn) {
		defer s.closeStream(sub)
		defer ca.stop()
		defer s.cursors.ended(log)
		t := &sseTransport{sock: newSockWriter(conn, s.cfg.WriteTimeout), log: log, dirty: true}
		if err := t.writeString(sseHead+"retry: "+strconv.FormatInt(s.retryHint().Milliseconds(), 10)+"\n\n", false); err != nil {
			return
		}
		sub.Send(protocol.TypeWelcome, protocol.EncodeWelcome(sub.Session(), hb.Milliseconds(), time.Now().UnixMilli()))
		if expired {
			sub.Send(protocol.TypeError, protocol.EncodeError(nil, protocol.CodeBadResume, "Last-Event-ID has expired: the stream starts afresh"))
		}
		if len(req.Topics) > 0 {
			_, _ = sub.Subscribe(req)
		}
		err := sub.Deliver(context.Background(), t.transport())
		var d *protocol.Disconnect
		var ne net.Error
		switch {
		case errors.As(err, &d):
			var end strings.Builder
			if d == disconnectTokenExpired {
				fmt.Fprintf(&end, "event: error\ndata: %s\n\n", protocol.EncodeError(nil, protocol.CodeTokenExpired,
					"the stream's token expired: reconnect with a fresh token (or refresh it before expiry with POST /api/sse/<session>)"))
			}
			// Tell the client when to come back, then end the stream.
			fmt.Fprintf(&end, "retry: %d\n\n", s.retryHint().Milliseconds())
			_ = t.writeString(end.String(), true)
		case errors.As(err, &ne) && ne.Timeout():
			s.bus.Metrics().SlowClose()
		}
	})
	return nil
}

func (s *Server) handleSSEControl(c *fiber.Ctx) error {
	s.mu.Lock()
	sub := s.sessions[c.Params("session")]
	s.mu.Unlock()
	if sub == nil {
		return apiError(c, fiber.StatusNotFound, "unknown_session", "no live SSE stream with that session; open /sse first and use the session from its welcome event")
	}
	if err := s.checkOrigin(c); err != nil {
		return err
	}
	// An authorizer (auth on) is consulted here for the session's owner.
	if !s.allowMsg(sub) {
		return apiError(c, fiber.StatusTooManyRequests, protocol.CodeRateLimited, fmt.Sprintf("more than %g messages per second on this stream", s.cfg.MaxMsgsPerSec))
	}
	if len(c.Body()) > s.cfg.MaxFrameBytes {
		s.bus.Metrics().Limited(protocol.CodeFrameTooLarge)
		return apiError(c, fiber.StatusRequestEntityTooLarge, protocol.CodeFrameTooLarge, fmt.Sprintf("at most %d bytes", s.cfg.MaxFrameBytes))
	}
	if op, ok := parseRefresh(c.Body()); ok {
		return s.refreshSSE(c, sub, op)
	}
	res, err := sub.Handle(c.Body())
	var pe *protocol.Error
	if errors.As(err, &pe) {
		status := fiber.StatusBadRequest
		if pe.Code == protocol.CodeForbidden {
			status = fiber.StatusForbidden
		}
		return apiError(c, status, pe.Code, pe.Message)
	}
	if err != nil {
		return apiError(c, fiber.StatusBadRequest, "bad_request", err.Error())
	}
	if res.Op == "ping" {
		return c.JSON(fiber.Map{"ok": true, "op": res.Op})
	}
	return c.JSON(fiber.Map{"ok": true, "op": res.Op, "topics": res.Topics, "errors": res.Errors})
}
