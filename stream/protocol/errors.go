package protocol

import "strconv"

// Disconnect is why the server closes a connection: a WebSocket close code
// and a reason. Transports add a jittered retry hint to the reason.
type Disconnect struct {
	Code   int
	Reason string
}

func (d *Disconnect) Error() string {
	return "protocol: disconnect " + strconv.Itoa(d.Code) + ": " + d.Reason
}

// Disconnects the bus and subscribers use.
var (
	// DisconnectShutdown: the server is going away (WebSocket 1001).
	DisconnectShutdown = &Disconnect{Code: 1001, Reason: "server shutting down"}
	// DisconnectSlow: the client could not keep up even stepped down, or
	// was stuck past the write deadline (WebSocket 1013, try again later).
	DisconnectSlow = &Disconnect{Code: 1013, Reason: "client too slow"}
	// DisconnectPolicy: the client kept sending bad messages (1008).
	DisconnectPolicy = &Disconnect{Code: 1008, Reason: "too many bad messages"}
)

// Error codes sent in error messages. They are stable: clients switch on
// them.
const (
	CodeBadJSON       = "bad_json"        // the message is not a JSON object
	CodeUnknownOp     = "unknown_op"      // op is missing or not known
	CodeBadTopic      = "bad_topic"       // a topic or pattern is malformed
	CodeTooManyTopics = "too_many_topics" // over the per-connection limit
	CodeUnknownTopic  = "unknown_topic"   // no such topic: HTTP API only (a subscribe accepts a topic with no tick yet)
	CodeBadThrottle   = "bad_throttle"    // throttle_ms out of range
	CodeBadResume     = "bad_resume"      // resume is malformed
	CodeBadID         = "bad_id"          // id is not a number or string
	CodeFrameTooLarge = "frame_too_large" // the frame is over the limit
	CodeRateLimited   = "rate_limited"    // too many messages per second
	CodeForbidden     = "forbidden"       // the token does not allow it (auth on)
	CodeTokenExpired  = "token_expired"   // the connection's token expired (SSE, before the stream ends)
	CodeEmpty         = "empty"           // a publish with no ticks
	CodeBadMid        = "bad_mid"         // a mid or Idempotency-Key is malformed
	CodeBadProducer   = "bad_producer"    // a producer id is malformed
)

// Codes of a refused tick in a publish answer (HTTP and WebSocket alike).
const (
	CodeBadField      = "bad_field"       // a field is not a finite number, or is given twice
	CodeNonFinite     = "non_finite"      // NaN or ±Inf
	CodeTooManyFields = "too_many_fields" // over the per-tick field limit
	CodeOverLimit     = "over_limit"      // over a bus limit (topics, ts too far from now)
	CodeClosed        = "closed"          // the bus is closed
	CodeInternal      = "internal"        // anything else
)

// Error is a refused client message, sent to the client as an error
// message.
type Error struct {
	ID      []byte `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return "protocol: " + e.Code + ": " + e.Message }

// Reset reasons.
const (
	ResetHistoryGap = "history_gap"  // the cursor is older than the kept history
	ResetEpoch      = "epoch_change" // the cursor's epoch is not the topic's
	ResetBadCursor  = "bad_cursor"   // the cursor is ahead of the topic
)
