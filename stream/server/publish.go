package server

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream/auth"
	"github.com/tickstream/tickstream/stream/protocol"
)

// anonymousProducer is the producer of publishes that name none: they
// share one idempotency namespace, so their ids must be unique across
// them (UUIDs).
const anonymousProducer = "-"

// authorizePublish is the one place where a publish, over HTTP or
// WebSocket, is authorized and its producer decided. cl is the verified
// token (nil with auth off); claimed is the producer the client named
// ("producer" of the op, X-Producer-Id), "" if none. It returns the
// producer whose idempotency ids the publish uses, the per-topic right
// (nil: any topic), or the error that refuses the whole publish (code
// forbidden). With auth on the producer is the token's subject, so one
// holder cannot answer from another's window.
func (s *Server) authorizePublish(cl *auth.Claims, claimed string) (string, func(topic string) bool, *protocol.Error) {
	if cl == nil {
		if claimed == "" {
			return anonymousProducer, nil, nil
		}
		return claimed, nil, nil
	}
	if len(cl.Publish.Patterns) == 0 {
		return "", nil, &protocol.Error{Code: protocol.CodeForbidden, Message: "the token has no publish right"}
	}
	producer := "sub:" + cl.Subject()
	if cl.Subject() == "" {
		producer = "sub:-"
	}
	if claimed != "" {
		producer += "/" + claimed
	}
	return producer, cl.CanPublish, nil
}

// seqSink is a sink that reports the seq each tick got (stream.FeedSink).
type seqSink interface {
	PublishSeq(tick.Tick) (uint64, error)
}

// publishOne publishes t and returns its seq. A tick that would create a
// topic first reserves it in quotaKey's topic quota.
func (s *Server) publishOne(quotaKey string, t tick.Tick) (uint64, error) {
	if quotaKey == "" || s.bus.HasTopic(t.Topic) {
		return s.publishSeq(t)
	}
	if !s.quota.reserve(quotaKey, t.Topic) {
		s.bus.Metrics().Limited(CodeTopicQuota)
		return 0, fmt.Errorf("%w: this address created %d topics already (max_topics_per_publisher)", errTopicQuota, s.cfg.MaxTopicsPerPublisher)
	}
	seq, err := s.publishSeq(t)
	if err != nil && !s.bus.HasTopic(t.Topic) {
		s.quota.release(t.Topic)
	}
	return seq, err
}

func (s *Server) publishSeq(t tick.Tick) (uint64, error) {
	if ss, ok := s.cfg.PublishSink.(seqSink); ok {
		return ss.PublishSeq(t)
	}
	return 0, s.cfg.PublishSink.Publish(t)
}

// parsePublished parses one published tick and its optional "mid" in one
// pass (tick.ParsePublished). A bad mid refuses the tick before anything
// else is checked.
func parsePublished(raw []byte) (feeds.Tick, string, error) {
	t, mid, err := tick.ParsePublished(raw)
	if mid == nil {
		return t, "", err
	}
	if !protocol.ValidMid(mid) {
		return feeds.Tick{}, "", errBadMid
	}
	return t, string(mid), err
}

type midError struct{}

func (midError) Error() string {
	return "mid: want a non-empty string or a number of at most 128 bytes"
}

var errBadMid error = midError{}

func refusalCode(err error) string {
	if err == errBadMid {
		return protocol.CodeBadMid
	}
	if errors.Is(err, errTopicQuota) {
		return CodeTopicQuota
	}
	return protocol.TickErrorCode(err)
}

// Idempotency keys: a tick's mid and a batch's mid live apart.
func tickKey(mid string) string  { return "t" + mid }
func batchKey(mid string) string { return "b" + mid }

// publishTicks publishes one batch for producer: the one implementation
// behind POST /api/publish and the publish op. Good ticks land even when
// others are refused. A tick whose mid, or a batch whose mid
// (batchMid, raw JSON, "" for none), the window still remembers is not
// published again: it is answered with the original result. allowed is
// the producer's per-topic right (nil: any); quotaKey is the address whose
// topic quota new topics count against ("" for none).
func (s *Server) publishTicks(producer string, allowed func(topic string) bool, quotaKey string, batchMid json.RawMessage, items []json.RawMessage) *protocol.PublishResult {
	unlock := s.idem.lock(producer)
	defer unlock()
	if len(batchMid) > 0 {
		if e := s.idem.get(producer, batchKey(string(batchMid))); e != nil {
			r := *e.batch
			r.Duplicates = r.Accepted
			return &r
		}
	}
	res := &protocol.PublishResult{Refused: []protocol.Refusal{}, Seqs: make(map[string]uint64)}
	for i, raw := range items {
		t, mid, err := parsePublished(raw)
		if err == nil && mid != "" {
			if e := s.idem.get(producer, tickKey(mid)); e != nil {
				res.Accepted++
				res.Duplicates++
				if e.seq > res.Seqs[e.topic] {
					res.Seqs[e.topic] = e.seq
				}
				continue
			}
		}
		if err == nil && allowed != nil && !allowed(t.Topic) {
			res.Refused = append(res.Refused, protocol.Refusal{Index: i, Code: protocol.CodeForbidden,
				Error: fmt.Sprintf("forbidden: the token does not allow publishing to %q", t.Topic)})
			continue
		}
		var seq uint64
		if err == nil {
			seq, err = s.publishOne(quotaKey, t)
		}
		if err != nil {
			res.Refused = append(res.Refused, protocol.Refusal{Index: i, Code: refusalCode(err), Error: err.Error()})
			continue
		}
		res.Accepted++
		if seq > res.Seqs[t.Topic] {
			res.Seqs[t.Topic] = seq
		}
		if mid != "" {
			s.idem.put(producer, &idemEntry{key: tickKey(mid), topic: t.Topic, seq: seq})
		}
	}
	if len(batchMid) > 0 {
		r := *res
		s.idem.put(producer, &idemEntry{key: batchKey(string(batchMid)), batch: &r})
	}
	return res
}
