package protocol

import (
	"encoding/json"
	"strconv"

	"github.com/tickstream/tickstream/feeds/tick"
)

// Message types on the wire.
const (
	TypeWelcome  = "welcome"
	TypeAck      = "ack"
	TypeSnapshot = "snapshot"
	TypeUpdate   = "update"
	TypeReset    = "reset"
	TypePong     = "pong"
	TypeError    = "error"
	TypeStatus   = "status"
)

// Topic names, field names and epochs are restricted to characters that
// need no JSON escaping, so the encoders below append them verbatim.

// AppendFields appends fs as a JSON object {"name":value,…} in order.
func AppendFields(b []byte, fs []tick.Field) []byte {
	b = append(b, '{')
	for i, f := range fs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, f.Name...)
		b = append(b, '"', ':')
		b = f.Value.Append(b)
	}
	return append(b, '}')
}

func appendHead(b []byte, typ, topic, epoch string, seq uint64, ts int64) []byte {
	b = append(b, `{"type":"`...)
	b = append(b, typ...)
	b = append(b, `","topic":"`...)
	b = append(b, topic...)
	b = append(b, `","epoch":"`...)
	b = append(b, epoch...)
	b = append(b, `","seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"ts":`...)
	return strconv.AppendInt(b, ts, 10)
}

// AppendUpdate appends an update message.
func AppendUpdate(b []byte, topic, epoch string, seq uint64, ts int64, data []tick.Field, agg *Agg) []byte {
	b = appendHead(b, TypeUpdate, topic, epoch, seq, ts)
	b = append(b, `,"data":`...)
	b = AppendFields(b, data)
	b = append(b, `,"agg":{"n":`...)
	b = strconv.AppendInt(b, agg.N, 10)
	if agg.HasPrice {
		b = append(b, `,"o":`...)
		b = agg.O.Append(b)
		b = append(b, `,"h":`...)
		b = agg.H.Append(b)
		b = append(b, `,"l":`...)
		b = agg.L.Append(b)
		b = append(b, `,"c":`...)
		b = agg.C.Append(b)
	}
	b = append(b, `,"v":`...)
	b = agg.V.Append(b)
	if agg.Parts() {
		b = append(b, `,"b":[`...)
		for i := range agg.B {
			b = appendPart(b, &agg.B[i])
			b = append(b, ',')
		}
		b = appendPart(b, &agg.Cur)
		b = append(b, ']')
	}
	return append(b, "}}"...)
}

func appendPart(b []byte, p *Part) []byte {
	b = append(b, `{"t":`...)
	b = strconv.AppendInt(b, p.T, 10)
	b = append(b, `,"n":`...)
	b = strconv.AppendInt(b, p.N, 10)
	b = append(b, `,"o":`...)
	b = p.O.Append(b)
	b = append(b, `,"h":`...)
	b = p.H.Append(b)
	b = append(b, `,"l":`...)
	b = p.L.Append(b)
	b = append(b, `,"c":`...)
	b = p.C.Append(b)
	b = append(b, `,"v":`...)
	b = p.V.Append(b)
	return append(b, '}')
}

// AppendSnapshot appends a snapshot message.
func AppendSnapshot(b []byte, topic, epoch string, seq uint64, ts int64, data []tick.Field) []byte {
	return AppendSnapshotRef(b, topic, epoch, seq, ts, data, nil)
}

// AppendSnapshotRef appends a snapshot message with the topic's reference
// figures, if ref is not nil.
func AppendSnapshotRef(b []byte, topic, epoch string, seq uint64, ts int64, data []tick.Field, ref *Ref) []byte {
	b = appendHead(b, TypeSnapshot, topic, epoch, seq, ts)
	b = append(b, `,"data":`...)
	b = AppendFields(b, data)
	if ref != nil {
		b = append(b, `,"ref":`...)
		b = ref.Append(b)
	}
	return append(b, '}')
}

// Ref is a topic's rolling 24-hour reference figures, from its hourly
// bars: Since is the start of the oldest hour included (the hour 23 hours
// before the current one, or the topic's first hour if later), O the first
// price since then, H and L the extremes, V the exact volume and N the
// ticks with a price. Change is the latest price minus O.
type Ref struct {
	Since int64    `json:"since"`
	O     tick.Num `json:"o"`
	H     tick.Num `json:"h"`
	L     tick.Num `json:"l"`
	V     tick.Num `json:"v"`
	N     int64    `json:"n"`
}

// Append appends r as a JSON object.
func (r *Ref) Append(b []byte) []byte {
	b = append(b, `{"since":`...)
	b = strconv.AppendInt(b, r.Since, 10)
	b = append(b, `,"o":`...)
	b = r.O.Append(b)
	b = append(b, `,"h":`...)
	b = r.H.Append(b)
	b = append(b, `,"l":`...)
	b = r.L.Append(b)
	b = append(b, `,"v":`...)
	b = r.V.Append(b)
	b = append(b, `,"n":`...)
	b = strconv.AppendInt(b, r.N, 10)
	return append(b, '}')
}

// MarshalJSON writes r as Append does.
func (r *Ref) MarshalJSON() ([]byte, error) { return r.Append(nil), nil }

func appendID(b []byte, id json.RawMessage) []byte {
	if len(id) == 0 {
		return b
	}
	b = append(b, `,"id":`...)
	return append(b, id...)
}

// EncodeAck returns an ack message.
func EncodeAck(id json.RawMessage, topics []string) []byte {
	b := []byte(`{"type":"ack"`)
	b = appendID(b, id)
	b = append(b, `,"topics":[`...)
	for i, t := range topics {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendQuote(b, t)
	}
	return append(b, "]}"...)
}

// EncodeError returns an error message.
func EncodeError(id json.RawMessage, code, message string) []byte {
	b := []byte(`{"type":"error"`)
	b = appendID(b, id)
	b = append(b, `,"code":`...)
	b = strconv.AppendQuote(b, code)
	b = append(b, `,"message":`...)
	return append(appendString(b, message), '}')
}

// appendString appends s as a JSON string. strconv.AppendQuote is not
// enough for text from outside (Refuse's message): its \x01 and
// \U0001xxxx escapes are Go syntax, not JSON.
func appendString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always marshals
	return append(b, q...)
}

// EncodePong returns a pong message.
func EncodePong(id json.RawMessage) []byte {
	b := []byte(`{"type":"pong"`)
	b = appendID(b, id)
	return append(b, '}')
}

// EncodeReset returns a reset message.
func EncodeReset(topic, reason string) []byte {
	b := []byte(`{"type":"reset","topic":"`)
	b = append(b, topic...)
	b = append(b, `","reason":"`...)
	b = append(b, reason...)
	return append(b, `"}`...)
}

// EncodeStatus returns a status message.
func EncodeStatus(lagging bool, throttleMS int64) []byte {
	b := []byte(`{"type":"status","lagging":`)
	b = strconv.AppendBool(b, lagging)
	b = append(b, `,"throttle_ms":`...)
	b = strconv.AppendInt(b, throttleMS, 10)
	return append(b, '}')
}

// EncodeWelcome returns the welcome message a transport sends first.
func EncodeWelcome(session string, heartbeatMS, serverTimeMS int64) []byte {
	b := []byte(`{"type":"welcome","session":`)
	b = strconv.AppendQuote(b, session)
	b = append(b, `,"heartbeat_ms":`...)
	b = strconv.AppendInt(b, heartbeatMS, 10)
	b = append(b, `,"server_time":`...)
	b = strconv.AppendInt(b, serverTimeMS, 10)
	return append(b, '}')
}

// Fields is a list of fields that encodes as a JSON object.
type Fields []tick.Field

// MarshalJSON writes the fields as {"name":value,…} in order.
func (f Fields) MarshalJSON() ([]byte, error) { return AppendFields(nil, f), nil }
