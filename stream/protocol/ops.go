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
	case OpSubscribe, OpUnsubscribe:
	case "":
		return fail(CodeUnknownOp, `missing "op" (want subscribe, unsubscribe or ping)`)
	default:
		return fail(CodeUnknownOp, "unknown op %q (want subscribe, unsubscribe or ping)", op.Op)
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
