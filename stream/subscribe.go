package stream

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/tickstream/tickstream/stream/protocol"
)

// Result is what one client message did.
type Result struct {
	Op     string          `json:"op"`
	ID     json.RawMessage `json:"id,omitempty"`
	Topics []string        `json:"topics"`
	// Errors are the refused parts of the message, also sent as error
	// messages on the stream.
	Errors []*protocol.Error `json:"errors,omitempty"`
}

// Handle carries out one client message (subscribe, unsubscribe, ping):
// the answers (ack, snapshots, pong, errors) go on the subscriber's queue
// in order. The returned error is a *protocol.Error when nothing of the
// message could be done. A subscriber that keeps sending bad messages is
// closed with protocol.DisconnectPolicy.
func (s *Subscriber) Handle(frame []byte) (Result, error) {
	op, perr := protocol.ParseOp(frame)
	res := Result{Op: op.Op, ID: op.ID}
	if perr != nil {
		return res, s.refuse(perr)
	}
	switch op.Op {
	case protocol.OpPing:
		s.push(Message{Type: protocol.TypePong, JSON: protocol.EncodePong(op.ID)})
		return res, nil
	case protocol.OpSubscribe:
		return s.subscribe(op)
	default:
		return s.unsubscribe(op)
	}
}

// Refuse sends an error message and spends the subscriber's error budget:
// more than MaxProtocolErrors within a few seconds closes it with
// protocol.DisconnectPolicy. Transports use it for errors they detect themselves
// (frame_too_large).
func (s *Subscriber) Refuse(id json.RawMessage, code, message string) *protocol.Error {
	return s.refuse(&protocol.Error{ID: id, Code: code, Message: message})
}

func (s *Subscriber) refuse(e *protocol.Error) *protocol.Error {
	s.sendError(e)
	s.spendErrorBudget()
	return e
}

func (s *Subscriber) sendError(e *protocol.Error) {
	s.push(Message{Type: protocol.TypeError, JSON: protocol.EncodeError(e.ID, e.Code, e.Message)})
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
		s.closeLocked(protocol.DisconnectPolicy)
		s.mu.Unlock()
	}
}

func (s *Subscriber) subscribe(msg protocol.Op) (Result, error) {
	cfg := &s.bus.cfg
	res := Result{Op: msg.Op, ID: msg.ID, Topics: []string{}}
	interval := cfg.DefaultThrottle
	if msg.ThrottleMS != nil {
		var perr *protocol.Error
		if interval, perr = protocol.Throttle(msg.ID, *msg.ThrottleMS, cfg.MaxThrottle.Milliseconds()); perr != nil {
			return res, s.refuse(perr)
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
		p, isPattern := protocol.Pattern(name)
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
		return res, s.Refuse(msg.ID, protocol.CodeTooManyTopics, fmt.Sprintf("%d topics subscribed and %d more asked for: at most %d per connection", have, fresh, cfg.MaxTopicsPerSubscriber))
	}
	var exact []*topic
	var patterns []string
	seen := make(map[string]bool, len(msg.Topics))
	for _, name := range msg.Topics {
		if seen[name] {
			continue
		}
		seen[name] = true
		if !protocol.ValidSub(name) {
			res.Errors = append(res.Errors, protocol.BadSub(msg.ID, name))
			continue
		}
		if p, ok := protocol.Pattern(name); ok {
			patterns = append(patterns, p)
			res.Topics = append(res.Topics, name)
			continue
		}
		t := s.bus.lookup(name)
		if t == nil {
			res.Errors = append(res.Errors, &protocol.Error{ID: msg.ID, Code: protocol.CodeUnknownTopic, Message: fmt.Sprintf("no topic %q (yet); subscribe to a pattern such as %q to get topics as they appear", name, name+"*")})
			continue
		}
		exact = append(exact, t)
		res.Topics = append(res.Topics, name)
	}
	if len(res.Topics) > 0 {
		s.push(Message{Type: protocol.TypeAck, JSON: protocol.EncodeAck(msg.ID, res.Topics)})
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
func (s *Subscriber) join(t *topic, interval time.Duration, resume map[string]protocol.Cursor, named bool) {
	s.subMu.Lock()
	if old := s.members[t.name]; old != nil && old.named {
		named = true
	}
	s.subMu.Unlock()
	s.drop(t.name)
	var cur *protocol.Cursor
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

func (s *Subscriber) unsubscribe(msg protocol.Op) (Result, error) {
	res := Result{Op: msg.Op, ID: msg.ID, Topics: []string{}}
	for _, name := range msg.Topics {
		if !protocol.ValidSub(name) {
			e := protocol.BadSub(msg.ID, name)
			s.sendError(e)
			res.Errors = append(res.Errors, e)
			continue
		}
		res.Topics = append(res.Topics, name)
		if p, ok := protocol.Pattern(name); ok {
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
	s.push(Message{Type: protocol.TypeAck, JSON: protocol.EncodeAck(msg.ID, res.Topics)})
	return res, nil
}

// SubscribeRequest is a subscribe that did not come as JSON (the SSE
// URL's topics and Last-Event-ID cursor).
type SubscribeRequest struct {
	Topics     []string
	ThrottleMS *int64 // nil means the default throttle
	Resume     map[string]protocol.Cursor
}

// Subscribe subscribes like a subscribe message.
func (s *Subscriber) Subscribe(r SubscribeRequest) (Result, error) {
	return s.subscribe(protocol.Op{Op: protocol.OpSubscribe, Topics: r.Topics, ThrottleMS: r.ThrottleMS, Resume: r.Resume})
}
