package protocol

import (
	"encoding/json"
	"errors"
	"sort"
	"strconv"

	"github.com/tickstream/tickstream/feeds/tick"
)

// Refusal is one refused tick of a publish: its 0-based index in the
// batch, a stable code and a reason for people.
type Refusal struct {
	Index int    `json:"index"`
	Code  string `json:"code"`
	Error string `json:"error"`
}

// PublishResult is what a publish did, over WebSocket (an ack) and HTTP
// alike.
type PublishResult struct {
	// Accepted counts the ticks that are on the bus: published now, or
	// earlier under the same mid (those are also counted in Duplicates).
	Accepted   int
	Duplicates int
	Refused    []Refusal
	// Seqs is the last seq each topic of the batch got.
	Seqs map[string]uint64
}

// EncodePublishAck returns the ack of a publish op:
//
//	{"type":"ack","id":7,"accepted":2,"refused":[…],"seqs":{"T":12}}
//
// with "duplicates":n after accepted when some ticks were repeats.
func EncodePublishAck(id json.RawMessage, r *PublishResult) []byte {
	b := []byte(`{"type":"ack"`)
	b = appendID(b, id)
	b = append(b, `,"accepted":`...)
	b = strconv.AppendInt(b, int64(r.Accepted), 10)
	if r.Duplicates > 0 {
		b = append(b, `,"duplicates":`...)
		b = strconv.AppendInt(b, int64(r.Duplicates), 10)
	}
	b = append(b, `,"refused":[`...)
	for i, f := range r.Refused {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"index":`...)
		b = strconv.AppendInt(b, int64(f.Index), 10)
		b = append(b, `,"code":`...)
		b = strconv.AppendQuote(b, f.Code)
		b = append(b, `,"error":`...)
		b = appendString(b, f.Error)
		b = append(b, '}')
	}
	b = append(b, `],"seqs":{`...)
	topics := make([]string, 0, len(r.Seqs))
	for t := range r.Seqs {
		topics = append(topics, t)
	}
	sort.Strings(topics)
	for i, t := range topics {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, t...)
		b = append(b, `":`...)
		b = strconv.AppendUint(b, r.Seqs[t], 10)
	}
	return append(b, "}}"...)
}

// TickErrorCode is the code of a refused tick's error (see the Code…
// constants).
func TickErrorCode(err error) string {
	switch {
	case errors.Is(err, tick.ErrBadJSON):
		return CodeBadJSON
	case errors.Is(err, tick.ErrBadTopic):
		return CodeBadTopic
	case errors.Is(err, tick.ErrNonFinite):
		return CodeNonFinite
	case errors.Is(err, tick.ErrBadField):
		return CodeBadField
	case errors.Is(err, tick.ErrTooManyField):
		return CodeTooManyFields
	case errors.Is(err, tick.ErrOverLimit):
		return CodeOverLimit
	case errors.Is(err, tick.ErrClosed):
		return CodeClosed
	}
	return CodeInternal
}
