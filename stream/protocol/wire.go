package protocol

import "encoding/json"

// WireMessage is any server message decoded with encoding/json, for Go
// clients of /ws and /sse (tickstream record, tests). Fields a message
// type does not carry stay zero.
type WireMessage struct {
	Type        string             `json:"type"`
	ID          json.RawMessage    `json:"id,omitempty"`
	Session     string             `json:"session,omitempty"`      // welcome
	HeartbeatMS int64              `json:"heartbeat_ms,omitempty"` // welcome
	ServerTime  int64              `json:"server_time,omitempty"`  // welcome
	Topics      []string           `json:"topics,omitempty"`       // ack
	Topic       string             `json:"topic,omitempty"`        // snapshot, update, reset
	Epoch       string             `json:"epoch,omitempty"`        // snapshot, update
	Seq         uint64             `json:"seq,omitempty"`          // snapshot, update
	TS          int64              `json:"ts,omitempty"`           // snapshot, update
	Data        map[string]float64 `json:"data,omitempty"`         // snapshot, update
	Agg         *WireAgg           `json:"agg,omitempty"`          // update
	Reason      string             `json:"reason,omitempty"`       // reset
	Code        string             `json:"code,omitempty"`         // error
	Message     string             `json:"message,omitempty"`      // error
	Lagging     *bool              `json:"lagging,omitempty"`      // status
	ThrottleMS  *int64             `json:"throttle_ms,omitempty"`  // status
	Accepted    *int               `json:"accepted,omitempty"`     // ack of a publish
	Duplicates  int                `json:"duplicates,omitempty"`   // ack of a publish
	Refused     []Refusal          `json:"refused,omitempty"`      // ack of a publish
	Seqs        map[string]uint64  `json:"seqs,omitempty"`         // ack of a publish
}

// WireAgg is an update's agg. O, H, L and C are nil when the window had
// no price.
type WireAgg struct {
	N int64    `json:"n"`
	O *float64 `json:"o,omitempty"`
	H *float64 `json:"h,omitempty"`
	L *float64 `json:"l,omitempty"`
	C *float64 `json:"c,omitempty"`
	V float64  `json:"v"`
}
