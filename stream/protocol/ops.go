package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/tickstream/tickstream/feeds/tick"
)

// Client ops.
const (
	OpSubscribe   = "subscribe"
	OpUnsubscribe = "unsubscribe"
	OpPing        = "ping"
	OpPublish     = "publish"
)

// Cursor is a resume position: the last (epoch, seq) a client has of a
// topic.
type Cursor struct {
	Epoch string `json:"epoch"`
	Seq   uint64 `json:"seq"`
}

// Op is one client message.
type Op struct {
	Op         string            `json:"op"`
	ID         json.RawMessage   `json:"id"`
	Topics     []string          `json:"topics"`
	ThrottleMS *int64            `json:"throttle_ms"`
	Resume     map[string]Cursor `json:"resume"`
	// Publish only: the ticks (each as the HTTP publish takes it, with an
	// optional "mid"), the batch's own message id and the producer the
	// ids belong to.
	Ticks    []json.RawMessage `json:"ticks"`
	Mid      json.RawMessage   `json:"mid"`
	Producer string            `json:"producer"`
}

// ParseOp decodes one client message and checks what can be checked
// without the server's state: the JSON shape, the id, the op, and for
// subscribe and unsubscribe that topics are present and resume entries are
// well formed. Topic names are checked one by one by the caller (ValidSub),
// because one bad topic does not refuse the others. The Op is returned
// with as much as was decoded (its ID) also on error.
func ParseOp(frame []byte) (Op, *Error) {
	var op Op
	frame = bytes.TrimSpace(frame)
	if len(frame) == 0 || frame[0] != '{' {
		return op, &Error{Code: CodeBadJSON, Message: "want a JSON object"}
	}
	if err := json.Unmarshal(frame, &op); err != nil {
		return Op{}, &Error{Code: CodeBadJSON, Message: err.Error()}
	}
	if len(op.ID) > 0 && !validID(op.ID) {
		op.ID = nil
		return op, &Error{Code: CodeBadID, Message: "id must be a number or a string of at most 64 bytes"}
	}
	fail := func(code, format string, args ...any) (Op, *Error) {
		return op, &Error{ID: op.ID, Code: code, Message: fmt.Sprintf(format, args...)}
	}
	switch op.Op {
	case OpPing:
		return op, nil
	case OpPublish:
		switch {
		case len(op.Ticks) == 0:
			return fail(CodeEmpty, `"ticks" is empty`)
		case len(op.Mid) > 0 && !ValidMid(op.Mid):
			return fail(CodeBadMid, "mid: want a string or number of at most %d bytes", MaxMidLen)
		case op.Producer != "" && !ValidProducer(op.Producer):
			return fail(CodeBadProducer, "producer %q: want 1-64 characters of [A-Za-z0-9._:-]", op.Producer)
		}
		return op, nil
	case OpSubscribe, OpUnsubscribe:
	case "":
		return fail(CodeUnknownOp, `missing "op" (want subscribe, unsubscribe, ping or publish)`)
	default:
		return fail(CodeUnknownOp, "unknown op %q (want subscribe, unsubscribe, ping or publish)", op.Op)
	}
	if len(op.Topics) == 0 {
		return fail(CodeBadTopic, `"topics" is empty`)
	}
	for name, c := range op.Resume {
		if !tick.ValidTopic(name) || !ValidEpoch(c.Epoch) {
			return fail(CodeBadResume, "resume[%q]: want a topic with {\"epoch\":…,\"seq\":…}", name)
		}
	}
	return op, nil
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

// Pattern returns the prefix of a pattern topic ("crypto.*" → "crypto.").
func Pattern(t string) (prefix string, ok bool) {
	if !strings.HasSuffix(t, "*") {
		return "", false
	}
	return t[:len(t)-1], true
}

// ValidSub reports whether t is a topic or a pattern (a topic prefix,
// possibly empty, followed by *) that a client may subscribe to.
func ValidSub(t string) bool {
	if p, ok := Pattern(t); ok {
		return p == "" || (len(p) < tick.MaxTopicLen && tick.ValidTopic(p))
	}
	return tick.ValidTopic(t)
}

// BadSub is the error for a topic that ValidSub refuses.
func BadSub(id json.RawMessage, t string) *Error {
	return &Error{ID: id, Code: CodeBadTopic,
		Message: fmt.Sprintf("%q: want 1-%d characters of [A-Za-z0-9._:/-], optionally ending in *", t, tick.MaxTopicLen)}
}

// Throttle checks a throttle_ms against the server's maximum and rounds it
// up to a multiple of 10 ms (which bounds the number of distinct flush
// intervals).
func Throttle(id json.RawMessage, ms, maxMS int64) (time.Duration, *Error) {
	if ms < 0 || ms > maxMS {
		return 0, &Error{ID: id, Code: CodeBadThrottle, Message: fmt.Sprintf("throttle_ms %d: want 0 to %d", ms, maxMS)}
	}
	return Quantize(time.Duration(ms) * time.Millisecond), nil
}

// Quantize rounds a throttle up to a multiple of 10 ms.
func Quantize(d time.Duration) time.Duration {
	const q = 10 * time.Millisecond
	if d <= 0 {
		return 0
	}
	return (d + q - 1) / q * q
}

// MaxMidLen is the longest producer message id ("mid") of a tick or a
// publish batch (and of an Idempotency-Key).
const MaxMidLen = 128

// ValidMid reports whether raw (JSON) is a usable message id: a non-empty
// string or a number, at most MaxMidLen bytes as written.
func ValidMid(raw json.RawMessage) bool {
	if len(raw) == 0 || len(raw) > MaxMidLen {
		return false
	}
	if n := len(raw); n > 2 && raw[0] == '"' && raw[n-1] == '"' && plainString(raw[1:n-1]) {
		return true // the usual mid, without decoding it
	}
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return false
	}
	switch v := v.(type) {
	case float64:
		return true
	case string:
		return v != ""
	}
	return false
}

// plainString reports whether s can stand between quotes as a JSON string
// as it is: no quote, backslash or control character.
func plainString(s []byte) bool {
	for _, c := range s {
		if c < 0x20 || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// ValidProducer reports whether p can name a producer: 1-64 characters of
// [A-Za-z0-9._:-].
func ValidProducer(p string) bool {
	if len(p) == 0 || len(p) > 64 {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}
