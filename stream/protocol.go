package stream

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/tickstream/tickstream/feeds"
)

// clientMessage is any message a client sends.
type clientMessage struct {
	Op         string            `json:"op"`
	ID         json.RawMessage   `json:"id"`
	Topics     []string          `json:"topics"`
	ThrottleMS *int64            `json:"throttle_ms"`
	Resume     map[string]Cursor `json:"resume"`
}

// Result is what one client message did.
type Result struct {
	Op     string          `json:"op"`
	ID     json.RawMessage `json:"id,omitempty"`
	Topics []string        `json:"topics"`
	// Errors are the refused parts of the message, also sent as error
	// messages on the stream.
	Errors []*ProtocolError `json:"errors,omitempty"`
}

// Handle carries out one client message (subscribe, unsubscribe, ping):
// the answers (ack, snapshots, pong, errors) go on the subscriber's queue
// in order. The returned error is a *ProtocolError when nothing of the
// message could be done. A subscriber that keeps sending bad messages is
// closed with DisconnectPolicy.
func (s *Subscriber) Handle(frame []byte) (Result, error) {
	var msg clientMessage
	frame = bytes.TrimSpace(frame)
	if len(frame) == 0 || frame[0] != '{' {
		return Result{}, s.Refuse(nil, CodeBadJSON, "want a JSON object")
	}
	if err := json.Unmarshal(frame, &msg); err != nil {
		return Result{}, s.Refuse(nil, CodeBadJSON, err.Error())
	}
	if len(msg.ID) > 0 && !validID(msg.ID) {
		return Result{}, s.Refuse(nil, CodeBadID, "id must be a number or a string of at most 64 bytes")
	}
	res := Result{Op: msg.Op, ID: msg.ID}
	switch msg.Op {
	case "ping":
		s.push(Message{Type: TypePong, JSON: encodePong(msg.ID)})
		return res, nil
	case "subscribe":
		return s.subscribe(msg)
	case "unsubscribe":
		return s.unsubscribe(msg)
	case "":
		return res, s.Refuse(msg.ID, CodeUnknownOp, `missing "op" (want subscribe, unsubscribe or ping)`)
	default:
		return res, s.Refuse(msg.ID, CodeUnknownOp, fmt.Sprintf("unknown op %q (want subscribe, unsubscribe or ping)", msg.Op))
	}
}

func validID(id json.RawMessage) bool {
	if len(id) > 66 {
		return false
	}
	var v any
	if json.Unmarshal(id, &v) != nil {
		return false
	}
	switch v.(type) {
	case float64, string:
		return true
	}
	return false
}

// Refuse sends an error message and spends the subscriber's error budget:
// more than MaxProtocolErrors within a few seconds closes it with
// DisconnectPolicy. Transports use it for errors they detect themselves
// (frame_too_large).
func (s *Subscriber) Refuse(id json.RawMessage, code, message string) *ProtocolError {
	e := &ProtocolError{ID: id, Code: code, Message: message}
	s.sendError(e)
	s.spendErrorBudget()
	return e
}

func (s *Subscriber) sendError(e *ProtocolError) {
	s.push(Message{Type: TypeError, JSON: encodeError(e.ID, e.Code, e.Message)})
}

// MaxProtocolErrors bad messages are forgiven in a burst; the budget
// refills by one per second, so an occasional bad message never closes a
// connection.
const MaxProtocolErrors = 10

func (s *Subscriber) spendErrorBudget() {
	now := s.bus.cfg.Now()
	s.subMu.Lock()
	if !s.errAt.IsZero() {
		s.errLevel = max(0, s.errLevel-now.Sub(s.errAt).Seconds())
	}
	s.errAt = now
	s.errLevel++
	over := s.errLevel > MaxProtocolErrors
	s.subMu.Unlock()
	if over {
		s.mu.Lock()
		s.closeLocked(DisconnectPolicy)
		s.mu.Unlock()
	}
}

// pattern returns the prefix of a pattern topic ("crypto.*" → "crypto.").
func pattern(t string) (prefix string, ok bool) {
	if !strings.HasSuffix(t, "*") {
		return "", false
	}
	return t[:len(t)-1], true
}

func validSubscription(t string) bool {
	if p, ok := pattern(t); ok {
		return p == "" || (len(p) < feeds.MaxTopicLen && feeds.ValidTopic(p))
	}
	return feeds.ValidTopic(t)
}

func (s *Subscriber) subscribe(msg clientMessage) (Result, error) {
	cfg := &s.bus.cfg
	res := Result{Op: msg.Op, ID: msg.ID, Topics: []string{}}
	interval := cfg.DefaultThrottle
	if msg.ThrottleMS != nil {
		ms := *msg.ThrottleMS
		if ms < 0 || ms > cfg.MaxThrottle.Milliseconds() {
			return res, s.Refuse(msg.ID, CodeBadThrottle, fmt.Sprintf("throttle_ms %d: want 0 to %d", ms, cfg.MaxThrottle.Milliseconds()))
		}
		interval = quantize(time.Duration(ms) * time.Millisecond)
	}
	if len(msg.Topics) == 0 {
		return res, s.Refuse(msg.ID, CodeBadTopic, `"topics" is empty`)
	}
	for name, c := range msg.Resume {
		if !feeds.ValidTopic(name) || c.Epoch == "" {
			return res, s.Refuse(msg.ID, CodeBadResume, fmt.Sprintf("resume[%q]: want a topic with {\"epoch\":…,\"seq\":…}", name))
		}
	}
	s.subMu.Lock()
	// Count what the client named: patterns, not the topics they expand to.
	have, fresh := len(s.patterns), 0
	for _, m := range s.members {
		if m.named {
			have++
		}
	}
	for _, name := range msg.Topics {
		p, isPattern := pattern(name)
		if _, ok := s.patterns[p]; isPattern && ok {
			continue
		}
		if _, ok := s.members[name]; !isPattern && ok {
			continue
		}
		fresh++
	}
	s.subMu.Unlock()
	if have+fresh > cfg.MaxTopicsPerSubscriber {
		return res, s.Refuse(msg.ID, CodeTooManyTopics, fmt.Sprintf("%d topics subscribed and %d more asked for: at most %d per connection", have, fresh, cfg.MaxTopicsPerSubscriber))
	}
	var exact []*topic
	var patterns []string
	seen := make(map[string]bool, len(msg.Topics))
	for _, name := range msg.Topics {
		if seen[name] {
			continue
		}
		seen[name] = true
		if !validSubscription(name) {
			res.Errors = append(res.Errors, &ProtocolError{ID: msg.ID, Code: CodeBadTopic,
				Message: fmt.Sprintf("%q: want 1-%d characters of [A-Za-z0-9._:/-], optionally ending in *", name, feeds.MaxTopicLen)})
			continue
		}
		if p, ok := pattern(name); ok {
			patterns = append(patterns, p)
			res.Topics = append(res.Topics, name)
			continue
		}
		t := s.bus.lookup(name)
		if t == nil {
			res.Errors = append(res.Errors, &ProtocolError{ID: msg.ID, Code: CodeUnknownTopic, Message: fmt.Sprintf("no topic %q (yet); subscribe to a pattern such as %q to get topics as they appear", name, name+"*")})
			continue
		}
		exact = append(exact, t)
		res.Topics = append(res.Topics, name)
	}
	if len(res.Topics) > 0 {
		s.push(Message{Type: TypeAck, JSON: encodeAck(msg.ID, res.Topics)})
	}
	var first error
	for _, e := range res.Errors {
		s.sendError(e)
	}
	if len(res.Errors) > 0 {
		s.spendErrorBudget() // once per message, however many topics were bad
		if len(res.Topics) == 0 {
			first = res.Errors[0]
		}
	}
	named := make(map[string]bool, len(exact))
	for _, t := range exact {
		s.join(t, interval, msg.Resume, true)
		named[t.name] = true
	}
	for _, p := range patterns {
		// A topic named in this message is already joined (and resumed):
		// joining it again through the pattern would replay it twice.
		s.bus.subscribePattern(s, p, interval, msg.Resume, named)
	}
	return res, first
}

// join (re)subscribes s to t, replacing an earlier subscription: the
// newest subscribe's throttle wins. A topic once named stays named when a
// pattern re-joins it, so that dropping the pattern keeps it.
func (s *Subscriber) join(t *topic, interval time.Duration, resume map[string]Cursor, named bool) {
	s.subMu.Lock()
	if old := s.members[t.name]; old != nil && old.named {
		named = true
	}
	s.subMu.Unlock()
	s.drop(t.name)
	var cur *Cursor
	if c, ok := resume[t.name]; ok {
		cur = &c
	}
	s.keep(t.join(s, interval, cur, named))
}

// keep records a new membership. If the subscriber was released in the
// meantime, or a concurrent join of the same topic got there first, the
// membership that is not kept leaves its group.
func (s *Subscriber) keep(m *membership) {
	s.subMu.Lock()
	drop := m
	if !s.released {
		drop = s.members[m.topic.name]
		s.members[m.topic.name] = m
	}
	s.subMu.Unlock()
	if drop != nil {
		drop.topic.mu.Lock()
		drop.topic.remove(drop)
		drop.topic.mu.Unlock()
	}
}

// leave ends s's subscription to topic name unless something still asks
// for it: the name itself (when a pattern is being dropped, exact is false)
// or a remaining pattern (when the name is being dropped, exact is true).
func (s *Subscriber) leave(name string, exact bool) {
	s.subMu.Lock()
	m := s.members[name]
	if m == nil {
		s.subMu.Unlock()
		return
	}
	if exact {
		m.named = false
	}
	keep := m.named
	for p := range s.patterns {
		keep = keep || strings.HasPrefix(name, p)
	}
	s.subMu.Unlock()
	if !keep {
		s.drop(name)
	}
}

// drop removes s's membership of topic name, if any.
func (s *Subscriber) drop(name string) {
	s.subMu.Lock()
	m := s.members[name]
	delete(s.members, name)
	s.subMu.Unlock()
	if m == nil {
		return
	}
	m.topic.mu.Lock()
	m.topic.remove(m)
	m.topic.mu.Unlock()
}

func (s *Subscriber) unsubscribe(msg clientMessage) (Result, error) {
	res := Result{Op: msg.Op, ID: msg.ID, Topics: []string{}}
	if len(msg.Topics) == 0 {
		return res, s.Refuse(msg.ID, CodeBadTopic, `"topics" is empty`)
	}
	for _, name := range msg.Topics {
		if !validSubscription(name) {
			e := &ProtocolError{ID: msg.ID, Code: CodeBadTopic, Message: fmt.Sprintf("%q is not a topic or pattern", name)}
			s.sendError(e)
			res.Errors = append(res.Errors, e)
			continue
		}
		res.Topics = append(res.Topics, name)
		if p, ok := pattern(name); ok {
			s.bus.unsubscribePattern(s, p)
			continue
		}
		s.leave(name, true)
	}
	if len(res.Errors) > 0 {
		s.spendErrorBudget()
	}
	if len(res.Topics) == 0 {
		return res, res.Errors[0]
	}
	s.push(Message{Type: TypeAck, JSON: encodeAck(msg.ID, res.Topics)})
	return res, nil
}

// quantize rounds a throttle up to a multiple of 10 ms, which bounds the
// number of distinct flush intervals (one goroutine each).
func quantize(d time.Duration) time.Duration {
	const q = 10 * time.Millisecond
	if d <= 0 {
		return 0
	}
	return (d + q - 1) / q * q
}

// SubscribeRequest is a subscribe that did not come as JSON (the SSE
// URL's topics and Last-Event-ID cursor).
type SubscribeRequest struct {
	Topics     []string
	ThrottleMS *int64 // nil means the default throttle
	Resume     map[string]Cursor
}

// Subscribe subscribes like a subscribe message.
func (s *Subscriber) Subscribe(r SubscribeRequest) (Result, error) {
	return s.subscribe(clientMessage{Op: "subscribe", Topics: r.Topics, ThrottleMS: r.ThrottleMS, Resume: r.Resume})
}
