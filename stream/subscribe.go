package stream

import (
	"encoding/json"
	"fmt"
	"sort"
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
// in order; the snapshots of a big subscribe follow as the client reads
// (see pumpJoins). The returned error is a *protocol.Error when nothing of the
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

// ReadCheck says whether a subscriber may read a topic. It is also asked
// about a subscription pattern, as the prefix followed by * ("crypto.*"),
// and answers whether the pattern may be subscribed at all; the topics the
// pattern then delivers are each asked about by name.
type ReadCheck func(topic string) bool

// SetReadCheck sets the subscriber's read check, consulted by every later
// subscribe: a named topic or pattern it refuses gets an error with code
// forbidden (the rest of the message is carried out), and a pattern only
// delivers the topics it allows, now and as they are created. nil allows
// everything (the default). It is safe to call while the subscriber runs.
// f is called with the subscriber's and a topic's locks held (see doc.go):
// it must be quick and take no lock of the bus.
func (s *Subscriber) SetReadCheck(f ReadCheck) {
	if f == nil {
		s.readCheck.Store(nil)
		return
	}
	s.readCheck.Store(&f)
}

// mayRead applies the read check.
func (s *Subscriber) mayRead(topic string) bool {
	f := s.readCheck.Load()
	return f == nil || (*f)(topic)
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

// joinReq is one topic a subscriber is to join: a topic waiting for room
// on the subscriber's queue (subState.waiting), or a name that has no tick
// yet (subState.pending and Bus.pending).
type joinReq struct {
	name     string
	t        *topic // nil while pending
	interval time.Duration
	cur      *protocol.Cursor
	named    bool // the client named the topic (else a pattern asked for it)
}

// subState is the part of a subscriber's subscriptions not yet in effect.
// It is guarded by Subscriber.subMu.
type subState struct {
	// waiting are the joins waiting for room on the queue, so that the
	// snapshots of a big subscribe go out as the client takes them; order
	// is their names, oldest first (a name no longer waiting is skipped).
	waiting map[string]*joinReq
	order   []string
	// pending are named topics that have no tick yet.
	pending map[string]*joinReq
	// full are the patterns that stopped expanding at the per-connection
	// limit; the client was told once.
	full map[string]bool
}

// holdsLocked reports whether s has or is about to have topic name.
func (s *Subscriber) holdsLocked(name string) bool {
	return s.members[name] != nil || s.subs.waiting[name] != nil || s.subs.pending[name] != nil
}

// heldLocked is what counts against MaxTopicsPerSubscriber: every topic
// delivered, by name or through a pattern, every topic waiting to be
// joined or to get its first tick, and every pattern.
func (s *Subscriber) heldLocked() int {
	n := len(s.members) + len(s.subs.pending) + len(s.patterns)
	for name := range s.subs.waiting {
		if s.members[name] == nil {
			n++
		}
	}
	return n
}

// atLimitLocked reports whether s holds MaxTopicsPerSubscriber already.
func (s *Subscriber) atLimitLocked() bool {
	max := s.bus.cfg.MaxTopicsPerSubscriber
	if len(s.members)+len(s.subs.pending)+len(s.patterns)+len(s.subs.waiting) < max {
		return false // the common case, without counting
	}
	return s.heldLocked() >= max
}

// patternForLocked returns a pattern of s that matches name, preferring
// prefer, and its interval.
func (s *Subscriber) patternForLocked(name, prefer string) (string, time.Duration, bool) {
	if iv, ok := s.patterns[prefer]; ok && strings.HasPrefix(name, prefer) {
		return prefer, iv, true
	}
	for p, iv := range s.patterns {
		if strings.HasPrefix(name, p) {
			return p, iv, true
		}
	}
	return "", 0, false
}

func matchesAny(name string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// queueLocked adds a join to the waiting list, replacing an earlier one of
// the same topic (a topic once named stays named).
func (s *Subscriber) queueLocked(req *joinReq) {
	if s.subs.waiting == nil {
		s.subs.waiting = make(map[string]*joinReq)
	}
	if old := s.subs.waiting[req.name]; old != nil && old.named {
		req.named = true
	}
	s.subs.waiting[req.name] = req
	s.subs.order = append(s.subs.order, req.name)
	delete(s.subs.pending, req.name)
	if len(s.subs.order) > 2*len(s.subs.waiting)+64 {
		// Unsubscribes and resubscribes left stale names: keep the first
		// of each name still waiting, so order stays bounded.
		seen := make(map[string]bool, len(s.subs.waiting))
		order := s.subs.order[:0]
		for _, name := range s.subs.order {
			if s.subs.waiting[name] != nil && !seen[name] {
				seen[name] = true
				order = append(order, name)
			}
		}
		clear(s.subs.order[len(order):])
		s.subs.order = order
	}
}

func cursorOf(resume map[string]protocol.Cursor, name string) *protocol.Cursor {
	if c, ok := resume[name]; ok {
		return &c
	}
	return nil
}

func (s *Subscriber) subscribe(msg protocol.Op) (Result, error) {
	cfg := &s.bus.cfg
	res := Result{Op: msg.Op, ID: msg.ID, Topics: []string{}}
	errorsSent := false // the refusals went out right after the ack
	interval := cfg.DefaultThrottle
	if msg.ThrottleMS != nil {
		var perr *protocol.Error
		if interval, perr = protocol.Throttle(msg.ID, *msg.ThrottleMS, cfg.MaxThrottle.Milliseconds()); perr != nil {
			return res, s.refuse(perr)
		}
	}
	var names, patterns []string
	named := make(map[string]bool, len(msg.Topics))
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
		if !s.mayRead(name) {
			res.Errors = append(res.Errors, &protocol.Error{ID: msg.ID, Code: protocol.CodeForbidden,
				Message: fmt.Sprintf("%q: this connection's token does not allow reading it", name)})
			continue
		}
		res.Topics = append(res.Topics, name)
		if p, ok := protocol.Pattern(name); ok {
			patterns = append(patterns, p)
			continue
		}
		names = append(names, name)
		named[name] = true
	}

	// What the patterns expand to now: the topic list is copied under the
	// bus lock and scanned outside it. A topic named in this message is
	// joined (and resumed) as named, not again through a pattern.
	var all, matched []*topic
	var gen uint64
	if len(patterns) > 0 {
		all, gen = s.bus.topicListGen()
		for _, t := range all {
			if !named[t.name] && matchesAny(t.name, patterns) && s.mayRead(t.name) {
				matched = append(matched, t)
			}
		}
		sort.Slice(matched, func(i, j int) bool { return matched[i].name < matched[j].name })
		if h := s.bus.testHookScanned; h != nil {
			h(s)
		}
	}
	exact := make([]*topic, len(names))
	for i, name := range names {
		exact[i] = s.bus.lookup(name) // nil: no tick yet
	}

	var pending []*joinReq
	if len(res.Topics) > 0 {
		s.subMu.Lock()
		have, fresh := s.heldLocked(), 0
		for _, p := range patterns {
			if _, ok := s.patterns[p]; !ok {
				fresh++
			}
		}
		for _, name := range names {
			if !s.holdsLocked(name) {
				fresh++
			}
		}
		for _, t := range matched {
			if !s.holdsLocked(t.name) {
				fresh++
			}
		}
		if max := cfg.MaxTopicsPerSubscriber; have+fresh > max {
			s.subMu.Unlock()
			res.Topics, res.Errors = []string{}, nil
			return res, s.Refuse(msg.ID, protocol.CodeTooManyTopics, fmt.Sprintf(
				"%d topics held and %d more asked for: at most %d per connection (each pattern counts, and so does each topic it delivers)", have, fresh, max))
		}
		// The ack goes first, before any join of this message can be
		// made (Deliver makes waiting joins too).
		s.push(Message{Type: protocol.TypeAck, JSON: protocol.EncodeAck(msg.ID, res.Topics)})
		// So do the refusals of its bad topics: a join made meanwhile
		// by the writer must not put a snapshot ahead of them.
		for _, e := range res.Errors {
			s.sendError(e)
		}
		errorsSent = true
		if !s.released {
			for _, p := range patterns {
				s.patterns[p] = interval
				delete(s.subs.full, p)
			}
			for i, name := range names {
				req := &joinReq{name: name, t: exact[i], interval: interval, cur: cursorOf(msg.Resume, name), named: true}
				if req.t != nil {
					s.queueLocked(req)
					continue
				}
				if s.subs.pending == nil {
					s.subs.pending = make(map[string]*joinReq)
				}
				s.subs.pending[name] = req
				pending = append(pending, req)
			}
			for _, t := range matched {
				if s.subs.pending[t.name] == nil { // else its creation joins it
					s.queueLocked(&joinReq{name: t.name, t: t, interval: interval, cur: cursorOf(msg.Resume, t.name)})
				}
			}
		}
		s.subMu.Unlock()
	}

	if h := s.bus.testHookAcked; h != nil {
		h(s)
	}
	if len(patterns) > 0 || len(pending) > 0 {
		// From here on new topics join s when they are created; the ones
		// created since the scan, and the pending names created since
		// their lookup, are joined here.
		tail, late := s.bus.register(s, gen, patterns, interval, pending, msg.Resume, named)
		if len(tail) > 0 || len(late) > 0 {
			var full []string
			s.subMu.Lock()
			for _, req := range late {
				if s.subs.pending[req.name] == req {
					if req.cur == nil {
						// Created since the lookup (after the ack went
						// out, a client may publish its first tick at
						// once): asked for before its first tick, so
						// every tick comes as an update, replayed from
						// seq 0, not as a snapshot.
						req.cur = &protocol.Cursor{Epoch: s.bus.cfg.Epoch}
					}
					s.queueLocked(req)
				}
			}
			for _, t := range tail {
				if named[t.name] || !matchesAny(t.name, patterns) || s.subs.pending[t.name] != nil || !s.mayRead(t.name) {
					continue
				}
				p, _, ok := s.patternForLocked(t.name, "")
				if !ok {
					continue // unsubscribed meanwhile
				}
				if !s.holdsLocked(t.name) && s.atLimitLocked() {
					if !s.subs.full[p] {
						s.markFullLocked(p)
						full = append(full, p)
					}
					continue
				}
				s.queueLocked(&joinReq{name: t.name, t: t, interval: interval, cur: cursorOf(msg.Resume, t.name)})
			}
			s.subMu.Unlock()
			for _, p := range full {
				s.sendFull(p)
			}
		}
	}

	var first error
	if !errorsSent {
		for _, e := range res.Errors {
			s.sendError(e)
		}
	}
	if len(res.Errors) > 0 {
		s.spendErrorBudget() // once per message, however many topics were bad
		if len(res.Topics) == 0 {
			first = res.Errors[0]
		}
	}
	s.pumpJoins()
	return res, first
}

func (s *Subscriber) markFullLocked(p string) {
	if s.subs.full == nil {
		s.subs.full = make(map[string]bool)
	}
	s.subs.full[p] = true
}

// sendFull tells the client that pattern prefix* stopped expanding.
func (s *Subscriber) sendFull(prefix string) {
	s.sendError(&protocol.Error{Code: protocol.CodeTooManyTopics, Message: fmt.Sprintf(
		"pattern %q stopped expanding: this connection holds %d topics and patterns, the most allowed; new topics it matches are not delivered until you unsubscribe some and subscribe to it again",
		prefix+"*", s.bus.cfg.MaxTopicsPerSubscriber)})
}

// pushStaleCursor answers a resume cursor of a topic that has no tick yet:
// nothing of it can be replayed, so a cursor of another epoch gets reset
// epoch_change and one past seq 0 gets reset bad_cursor. Its first tick
// then comes as an update.
func (s *Subscriber) pushStaleCursor(name string, cur protocol.Cursor) {
	reason := ""
	switch {
	case cur.Epoch != s.bus.cfg.Epoch:
		reason = protocol.ResetEpoch
	case cur.Seq > 0:
		reason = protocol.ResetBadCursor
	default:
		return // at seq 0 of this epoch: nothing is missed
	}
	s.push(Message{Type: protocol.TypeReset, Topic: name, JSON: protocol.EncodeReset(name, reason)})
}

// pumpJoins makes the joins waiting on s while its queue is under half
// of MaxPendingBytes, so that the snapshots (or replays) of a subscribe to
// thousands of topics go out as the client reads them, instead of passing
// the hard bound at once. Deliver calls it after every write.
func (s *Subscriber) pumpJoins() {
	room := s.bus.cfg.MaxPendingBytes / 2
	for {
		select {
		case <-s.done:
			return
		default:
		}
		s.subMu.Lock()
		if len(s.subs.order) == 0 {
			s.subMu.Unlock()
			return
		}
		s.subMu.Unlock()
		if s.PendingBytes() >= room {
			return
		}
		s.subMu.Lock()
		var req *joinReq
		for req == nil && len(s.subs.order) > 0 {
			req = s.subs.waiting[s.subs.order[0]]
			s.subs.order[0] = ""
			s.subs.order = s.subs.order[1:]
		}
		if len(s.subs.order) == 0 {
			s.subs.order = nil
		}
		s.subMu.Unlock()
		if req == nil {
			return
		}
		req.t.join(s, req.cur, func(m *membership) (*membership, time.Duration, bool) {
			if s.released || s.subs.waiting[req.name] != req {
				return nil, 0, false // unsubscribed, or subscribed again since
			}
			delete(s.subs.waiting, req.name)
			old := s.members[req.name]
			m.named = req.named || old != nil && old.named
			s.members[req.name] = m
			return old, req.interval, true
		})
	}
}

// joinCreated joins s to a topic being created (called by Bus.topicFor
// with t.mu held, before the topic's first tick, so no snapshot is
// needed), if s still wants it: a pending named subscription, or a pattern
// while the connection is under its limit.
func (s *Subscriber) joinCreated(t *topic, j newJoin) {
	full := ""
	t.joinLocked(s, nil, func(m *membership) (*membership, time.Duration, bool) {
		if s.released {
			return nil, 0, false
		}
		if j.req != nil && s.subs.pending[t.name] == j.req {
			delete(s.subs.pending, t.name)
			m.named = true
			s.members[t.name] = m
			return nil, j.req.interval, true
		}
		p, interval, ok := s.patternForLocked(t.name, j.prefix)
		if !ok || s.members[t.name] != nil || !s.mayRead(t.name) {
			return nil, 0, false
		}
		if s.atLimitLocked() {
			if !s.subs.full[p] {
				s.markFullLocked(p)
				full = p
			}
			return nil, 0, false
		}
		s.members[t.name] = m
		return nil, interval, true
	})
	if full != "" {
		s.sendFull(full)
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

// unsubscribeName drops the subscription to a topic named by the client,
// whether it is in effect, waiting for room or waiting for the topic's
// first tick, unless a pattern still asks for it.
func (s *Subscriber) unsubscribeName(name string) {
	s.subMu.Lock()
	req := s.subs.pending[name]
	delete(s.subs.pending, name)
	if w := s.subs.waiting[name]; w != nil {
		if _, _, ok := s.patternForLocked(name, ""); ok {
			w.named = false
		} else {
			delete(s.subs.waiting, name)
		}
	}
	s.subMu.Unlock()
	if req != nil {
		s.bus.unregisterPending(s, req)
	}
	s.leave(name, true)
}

// unsubscribePattern drops pattern prefix*: the topics it delivers (or is
// about to) that nothing else asks for are dropped.
func (s *Subscriber) unsubscribePattern(prefix string) {
	s.bus.unregisterPattern(s, prefix)
	s.subMu.Lock()
	delete(s.patterns, prefix)
	delete(s.subs.full, prefix)
	for name, w := range s.subs.waiting {
		if _, _, ok := s.patternForLocked(name, ""); !w.named && !ok {
			delete(s.subs.waiting, name)
		}
	}
	var names []string
	for name := range s.members {
		if strings.HasPrefix(name, prefix) {
			names = append(names, name)
		}
	}
	s.subMu.Unlock()
	for _, name := range names {
		s.leave(name, false)
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
			s.unsubscribePattern(p)
			continue
		}
		s.unsubscribeName(name)
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
