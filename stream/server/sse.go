package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream"
)

// The SSE event id is an opaque cursor of every topic's (epoch, seq):
//
//	<epoch>~<topic>=<seq>,<topic>=<seq>!<epoch>~<topic>=<seq>
//
// Topic names cannot contain ~ = , or !, so no escaping is needed.

// encodeCursor writes the cursor for the given positions.
func appendCursor(b []byte, pos []cursorPos) []byte {
	// pos is sorted by epoch, then topic
	for i, p := range pos {
		switch {
		case i == 0:
			b = append(b, p.epoch...)
			b = append(b, '~')
		case p.epoch != pos[i-1].epoch:
			b = append(b, '!')
			b = append(b, p.epoch...)
			b = append(b, '~')
		default:
			b = append(b, ',')
		}
		b = append(b, p.topic...)
		b = append(b, '=')
		b = strconv.AppendUint(b, p.seq, 10)
	}
	return b
}

type cursorPos struct {
	epoch, topic string
	seq          uint64
}

// errBadCursor is returned for a Last-Event-ID that is not a cursor.
var errBadCursor = errors.New("bad cursor")

// ParseCursor reads an SSE event id into resume positions.
func ParseCursor(id string) (map[string]stream.Cursor, error) {
	out := make(map[string]stream.Cursor)
	if id == "" {
		return out, nil
	}
	for _, group := range strings.Split(id, "!") {
		epoch, list, ok := strings.Cut(group, "~")
		if !ok || epoch == "" {
			return nil, errBadCursor
		}
		for _, item := range strings.Split(list, ",") {
			topic, seqText, ok := strings.Cut(item, "=")
			seq, err := strconv.ParseUint(seqText, 10, 64)
			if !ok || err != nil || !feeds.ValidTopic(topic) {
				return nil, errBadCursor
			}
			out[topic] = stream.Cursor{Epoch: epoch, Seq: seq}
		}
	}
	return out, nil
}

// sseTransport writes messages as SSE events and keeps the stream's cursor.
type sseTransport struct {
	w       *bufio.Writer
	conn    net.Conn
	timeout time.Duration
	// deadline is the write deadline armed before the current batch.
	deadline time.Time
	pos      []cursorPos // sorted by epoch, topic
	id       []byte      // the cursor after the last message
	dirty    bool
}

func (t *sseTransport) advance(m *stream.Message) {
	if m.Epoch == "" || m.Topic == "" {
		return
	}
	i := sort.Search(len(t.pos), func(i int) bool {
		p := t.pos[i]
		return p.epoch > m.Epoch || (p.epoch == m.Epoch && p.topic >= m.Topic)
	})
	if i < len(t.pos) && t.pos[i].epoch == m.Epoch && t.pos[i].topic == m.Topic {
		t.pos[i].seq = m.Seq
	} else {
		// a new epoch for a topic replaces its old position
		for j, p := range t.pos {
			if p.topic == m.Topic {
				t.pos = append(t.pos[:j], t.pos[j+1:]...)
				if j < i {
					i--
				}
				break
			}
		}
		t.pos = append(t.pos, cursorPos{})
		copy(t.pos[i+1:], t.pos[i:])
		t.pos[i] = cursorPos{epoch: m.Epoch, topic: m.Topic, seq: m.Seq}
	}
	t.dirty = true
}

func (t *sseTransport) WriteBatch(msgs []stream.Message) error {
	t.arm()
	for i := range msgs {
		m := &msgs[i]
		t.advance(m)
		if t.dirty {
			t.id = appendCursor(t.id[:0], t.pos)
			t.dirty = false
		}
		_, _ = t.w.WriteString("event: ")
		_, _ = t.w.WriteString(m.Type)
		if len(t.id) > 0 {
			_, _ = t.w.WriteString("\nid: ")
			_, _ = t.w.Write(t.id)
		}
		_, _ = t.w.WriteString("\ndata: ")
		_, _ = t.w.Write(m.JSON)
		_, _ = t.w.WriteString("\n\n")
	}
	return t.flush()
}

func (t *sseTransport) Heartbeat() error {
	t.arm()
	_, _ = t.w.WriteString(": hb\n\n")
	return t.flush()
}

// arm sets the write deadline for the writes that follow.
func (t *sseTransport) arm() {
	t.deadline = time.Now().Add(t.timeout)
	if t.conn != nil {
		_ = t.conn.SetWriteDeadline(t.deadline)
	}
}

func (t *sseTransport) flush() error {
	if t.conn != nil {
		_ = t.conn.SetWriteDeadline(time.Now().Add(t.timeout))
	}
	err := t.w.Flush()
	if err != nil && t.conn != nil && !time.Now().Before(t.deadline) {
		// fasthttp copies the stream to the socket from its own goroutine
		// through a pipe, so a write stuck past the deadline shows here as
		// a closed pipe: report it as the timeout it was.
		return os.ErrDeadlineExceeded
	}
	return err
}

// sseError answers a request that cannot start a stream.
func sseError(c *fiber.Ctx, status int, code, msg string) error {
	return apiError(c, status, code, msg)
}

func (s *Server) handleSSE(c *fiber.Ctx) error {
	var req stream.SubscribeRequest
	for _, t := range strings.Split(c.Query("topics"), ",") {
		if t = strings.TrimSpace(t); t != "" {
			req.Topics = append(req.Topics, t)
		}
	}
	maxMS := s.bus.Config().MaxThrottle.Milliseconds()
	if v := c.Query("throttle_ms"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 || ms > maxMS {
			return sseError(c, fiber.StatusBadRequest, stream.CodeBadThrottle, fmt.Sprintf("throttle_ms %q: want a whole number from 0 to %d", v, maxMS))
		}
		req.ThrottleMS = &ms
	}
	lastID := c.Get("Last-Event-ID")
	if q := c.Query("last_event_id"); q != "" {
		lastID = q
	}
	resume, err := ParseCursor(lastID)
	if err != nil {
		return sseError(c, fiber.StatusBadRequest, stream.CodeBadResume, "Last-Event-ID is not a tickstream cursor")
	}
	for _, t := range req.Topics {
		if !validSubscription(t) {
			return sseError(c, fiber.StatusBadRequest, stream.CodeBadTopic, fmt.Sprintf("topic %q: want 1-128 characters of [A-Za-z0-9._:/-], optionally ending in *", t))
		}
	}
	if max := s.bus.Config().MaxTopicsPerSubscriber; len(req.Topics)+len(resume) > max {
		return sseError(c, fiber.StatusBadRequest, stream.CodeTooManyTopics, fmt.Sprintf("at most %d topics per stream", max))
	}
	// Topics named only in the cursor are resumed too.
	named := make(map[string]bool, len(req.Topics))
	for _, t := range req.Topics {
		named[t] = true
	}
	cursorTopics := make([]string, 0, len(resume))
	for t := range resume {
		if !named[t] {
			cursorTopics = append(cursorTopics, t)
		}
	}
	sort.Strings(cursorTopics)
	req.Topics = append(req.Topics, cursorTopics...)
	req.Resume = resume

	if err := s.admit(c); err != nil {
		return err
	}
	sub, err := s.open("sse", c.Context().Conn())
	if err != nil {
		return s.refuseRetry(c, fiber.StatusServiceUnavailable, "shutting_down", "server is shutting down")
	}
	c.Set(fiber.HeaderContentType, "text/event-stream")
	c.Set(fiber.HeaderCacheControl, "no-cache")
	c.Set(fiber.HeaderConnection, "keep-alive")
	c.Set("X-Accel-Buffering", "no")
	conn := c.Context().Conn()
	hb := s.bus.Config().Heartbeat
	// The stream writer runs on its own goroutine (fasthttp pipes it to
	// the connection); conn is only used for write deadlines.
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer s.closeStream(sub)
		defer func() { _ = conn.SetWriteDeadline(time.Time{}) }() // the connection may be kept alive
		fmt.Fprintf(w, "retry: %d\n\n", s.retryHint().Milliseconds())
		sub.Send(stream.TypeWelcome, stream.EncodeWelcome(sub.Session(), hb.Milliseconds(), time.Now().UnixMilli()))
		if len(req.Topics) > 0 {
			_, _ = sub.Subscribe(req)
		}
		t := &sseTransport{w: w, conn: conn, timeout: s.cfg.WriteTimeout}
		// Start from the resumed positions, so that the next id still
		// names a quiet topic that has no event on this stream yet.
		for topic, cur := range resume {
			t.advance(&stream.Message{Topic: topic, Epoch: cur.Epoch, Seq: cur.Seq})
		}
		err := sub.Deliver(context.Background(), t)
		var d *stream.Disconnect
		var ne net.Error
		switch {
		case errors.As(err, &d):
			// Tell the client when to come back, then end the stream.
			fmt.Fprintf(w, "retry: %d\n\n", s.retryHint().Milliseconds())
			_ = t.flush()
		case errors.As(err, &ne) && ne.Timeout():
			s.bus.Metrics().SlowClose()
		}
	})
	return nil
}

// validSubscription mirrors the bus's check so that a bad SSE URL is
// refused before the stream starts.
func validSubscription(t string) bool {
	if p, ok := strings.CutSuffix(t, "*"); ok {
		return p == "" || feeds.ValidTopic(p)
	}
	return feeds.ValidTopic(t)
}

func (s *Server) handleSSEControl(c *fiber.Ctx) error {
	s.mu.Lock()
	sub := s.sessions[c.Params("session")]
	s.mu.Unlock()
	if sub == nil {
		return apiError(c, fiber.StatusNotFound, "unknown_session", "no live SSE stream with that session; open /sse first and use the session from its welcome event")
	}
	if len(c.Body()) > s.cfg.MaxFrameBytes {
		return apiError(c, fiber.StatusRequestEntityTooLarge, stream.CodeFrameTooLarge, fmt.Sprintf("at most %d bytes", s.cfg.MaxFrameBytes))
	}
	res, err := sub.Handle(c.Body())
	var pe *stream.ProtocolError
	if errors.As(err, &pe) {
		return apiError(c, fiber.StatusBadRequest, pe.Code, pe.Message)
	}
	if err != nil {
		return apiError(c, fiber.StatusBadRequest, "bad_request", err.Error())
	}
	if res.Op == "ping" {
		return c.JSON(fiber.Map{"ok": true, "op": res.Op})
	}
	return c.JSON(fiber.Map{"ok": true, "op": res.Op, "topics": res.Topics, "errors": res.Errors})
}
