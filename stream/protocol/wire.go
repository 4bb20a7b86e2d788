package protocol

import (
	"encoding/json"

	"github.com/tickstream/tickstream/feeds/tick"
)

// WireMessage is any server message decoded with encoding/json, for Go
// clients of /ws and /sse (tickstream record, tests). Fields a message
// type does not carry stay zero.
type WireMessage struct {
	Type        string              `json:"type"`
	ID          json.RawMessage     `json:"id,omitempty"`
	Session     string              `json:"session,omitempty"`      // welcome
	HeartbeatMS int64               `json:"heartbeat_ms,omitempty"` // welcome
	ServerTime  int64               `json:"server_time,omitempty"`  // welcome
	Topics      []string            `json:"topics,omitempty"`       // ack
	Topic       string              `json:"topic,omitempty"`        // snapshot, update, reset
	Epoch       string              `json:"epoch,omitempty"`        // snapshot, update
	Seq         uint64              `json:"seq,omitempty"`          // snapshot, update
	TS          int64               `json:"ts,omitempty"`           // snapshot, update
	Data        map[string]tick.Num `json:"data,omitempty"`         // snapshot, update
	Agg         *WireAgg            `json:"agg,omitempty"`          // update
	Ref         *Ref                `json:"ref,omitempty"`          // snapshot
	Reason      string              `json:"reason,omitempty"`       // reset
	Code        string              `json:"code,omitempty"`         // error
	Message     string              `json:"message,omitempty"`      // error
	Lagging     *bool               `json:"lagging,omitempty"`      // status
	ThrottleMS  *int64              `json:"throttle_ms,omitempty"`  // status
	Accepted    *int                `json:"accepted,omitempty"`     // ack of a publish
	Duplicates  int                 `json:"duplicates,omitempty"`   // ack of a publish
	Refused     []Refusal           `json:"refused,omitempty"`      // ack of a publish
	Seqs        map[string]uint64   `json:"seqs,omitempty"`         // ack of a publish
}

// WireAgg is an update's agg. O, H, L and C are nil when the window had
// no price. B holds the window's runs when they are not the agg itself
// (see Agg); Runs returns them in either case.
type WireAgg struct {
	N int64     `json:"n"`
	O *tick.Num `json:"o,omitempty"`
	H *tick.Num `json:"h,omitempty"`
	L *tick.Num `json:"l,omitempty"`
	C *tick.Num `json:"c,omitempty"`
	V tick.Num  `json:"v"`
	B []Part    `json:"b,omitempty"`
}

// Runs returns what the update adds to candle bars, oldest first: B, or
// the agg itself in the one-second bucket of the update's ts, or nothing
// when the window had no price.
func (a *WireAgg) Runs(ts int64) []Part {
	if len(a.B) > 0 {
		return a.B
	}
	if a.O == nil || a.H == nil || a.L == nil || a.C == nil {
		return nil
	}
	return []Part{{T: PartBucket(ts), N: a.N, O: *a.O, H: *a.H, L: *a.L, C: *a.C, V: a.V}}
}
