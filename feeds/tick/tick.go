// Package tick is tickstream's data model: a Tick (topic, source time,
// numeric fields), its validation and its JSON form. It imports nothing of
// the feed framework or the bus, so both can depend on it.
package tick

import (
	"errors"
	"fmt"
	"math"
	"strconv"
)

// Market field names. Any other field name is a custom numeric field.
const (
	FieldPrice   = "price"
	FieldSize    = "size"
	FieldBid     = "bid"
	FieldAsk     = "ask"
	FieldBidSize = "bid_size"
	FieldAskSize = "ask_size"
	FieldVolume  = "volume"
)

// Limits on a single tick. They bound the memory a topic and a subscriber
// can hold whatever a publisher sends.
const (
	MaxTopicLen     = 128
	MaxFieldNameLen = 64
	MaxFields       = 32
)

// MarketFields lists the fixed market field names in wire order.
var MarketFields = []string{FieldPrice, FieldSize, FieldBid, FieldAsk, FieldBidSize, FieldAskSize, FieldVolume}

// Tick is one observation for one topic.
type Tick struct {
	// Topic is 1-128 characters of [A-Za-z0-9._:/-].
	Topic string
	// TS is the source time in Unix milliseconds. Zero means "now": the bus
	// stamps it when the tick is accepted.
	TS int64
	// Fields holds market fields (price, size, …) and custom numeric fields,
	// each name at most once. Use Set and Get rather than editing it by hand.
	Fields []Field
}

// Field is one named numeric value of a tick, an exact decimal.
type Field struct {
	Name  string
	Value Num
}

// F returns a field from a float64 (see NumOf), for Go feeds and tests.
func F(name string, v float64) Field {
	n, ok := NumOf(v)
	if !ok {
		n = nonFinite
	}
	return Field{Name: name, Value: n}
}

// Set sets field name to v, replacing an earlier value of the same name.
// v is converted with strconv's shortest formatting (NumOf): 61837.63
// goes out as 61837.63. NaN and infinities make Validate refuse the tick.
func (t *Tick) Set(name string, v float64) {
	t.SetNum(name, F(name, v).Value)
}

// SetNum sets field name to the exact decimal v.
func (t *Tick) SetNum(name string, v Num) {
	for i := range t.Fields {
		if t.Fields[i].Name == name {
			t.Fields[i].Value = v
			return
		}
	}
	t.Fields = append(t.Fields, Field{Name: name, Value: v})
}

// Get returns the value of field name as a float64.
func (t Tick) Get(name string) (float64, bool) {
	n, ok := t.GetNum(name)
	return n.Float(), ok
}

// GetNum returns the exact value of field name.
func (t Tick) GetNum(name string) (Num, bool) {
	for _, f := range t.Fields {
		if f.Name == name {
			return f.Value, true
		}
	}
	return Num{}, false
}

// Clone returns a copy of t that shares no memory with it.
func (t Tick) Clone() Tick {
	t.Fields = append([]Field(nil), t.Fields...)
	return t
}

// Errors returned by Validate and ParseTick. They are wrapped in a
// *Error that names the offending part.
var (
	ErrBadTopic     = errors.New("tick: bad topic")
	ErrBadField     = errors.New("tick: bad field")
	ErrNonFinite    = errors.New("tick: non-finite number")
	ErrTooManyField = errors.New("tick: too many fields")
	ErrBadJSON      = errors.New("tick: bad tick JSON")
	// ErrOverLimit: the tick is over a limit of the bus (too many topics,
	// a ts too far from now); it is refused like an invalid one.
	ErrOverLimit = errors.New("tick: over a limit")
)

// ErrClosed is wrapped by the error a sink returns once the bus behind it
// is closed: the feed stops (see feeds.Sink).
var ErrClosed = errors.New("tick: sink closed")

// Error says why a tick was refused.
type Error struct {
	Err    error  // one of the Err… sentinels above
	Detail string // what exactly was wrong, for people
}

func (e *Error) Error() string { return e.Err.Error() + ": " + e.Detail }
func (e *Error) Unwrap() error { return e.Err }

func tickErr(err error, format string, args ...any) error {
	return &Error{Err: err, Detail: fmt.Sprintf(format, args...)}
}

// ValidTopic reports whether s is a valid topic name.
func ValidTopic(s string) bool {
	if len(s) == 0 || len(s) > MaxTopicLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !topicChar(s[i]) {
			return false
		}
	}
	return true
}

func topicChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return c == '.' || c == '_' || c == ':' || c == '/' || c == '-'
}

// ValidFieldName reports whether s may name a field: 1-64 characters of
// [A-Za-z0-9_.-], not one of the tick's own keys (topic, ts, fields, seq,
// epoch).
func ValidFieldName(s string) bool {
	if len(s) == 0 || len(s) > MaxFieldNameLen {
		return false
	}
	switch s {
	case "topic", "ts", "fields", "seq", "epoch":
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(topicChar(c) && c != ':' && c != '/') {
			return false
		}
	}
	return true
}

// Validate checks the topic, field names and values of t.
func (t Tick) Validate() error {
	if !ValidTopic(t.Topic) {
		return tickErr(ErrBadTopic, "%q: want 1-%d characters of [A-Za-z0-9._:/-]", t.Topic, MaxTopicLen)
	}
	if len(t.Fields) > MaxFields {
		return tickErr(ErrTooManyField, "%d fields, at most %d", len(t.Fields), MaxFields)
	}
	if t.TS < 0 {
		return tickErr(ErrBadField, "ts %d is negative", t.TS)
	}
	for i, f := range t.Fields {
		if !ValidFieldName(f.Name) {
			return tickErr(ErrBadField, "field name %q: want 1-%d characters of [A-Za-z0-9_.-]", f.Name, MaxFieldNameLen)
		}
		if !f.Value.Finite() {
			return tickErr(ErrNonFinite, "field %q", f.Name)
		}
		for _, g := range t.Fields[:i] {
			if g.Name == f.Name {
				return tickErr(ErrBadField, "field %q given twice", f.Name)
			}
		}
	}
	return nil
}

func isMarketField(name string) bool {
	for _, m := range MarketFields {
		if m == name {
			return true
		}
	}
	return false
}

// MarshalJSON writes the tick in tickstream's tick format, which is also
// the replay and record format:
//
//	{"topic":"BTC-USD","ts":1700000000000,"price":1.5,"size":2,"fields":{"oi":7}}
func (t Tick) MarshalJSON() ([]byte, error) {
	return t.AppendJSON(nil), nil
}

// AppendJSON appends the tick's JSON form to b.
func (t Tick) AppendJSON(b []byte) []byte {
	b = append(b, `{"topic":`...)
	b = strconv.AppendQuote(b, t.Topic)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, t.TS, 10)
	custom := 0
	for _, f := range t.Fields {
		if !isMarketField(f.Name) {
			custom++
			continue
		}
		b = append(b, ',', '"')
		b = append(b, f.Name...)
		b = append(b, '"', ':')
		b = f.Value.Append(b)
	}
	if custom > 0 {
		b = append(b, `,"fields":{`...)
		first := true
		for _, f := range t.Fields {
			if isMarketField(f.Name) {
				continue
			}
			if !first {
				b = append(b, ',')
			}
			first = false
			b = append(b, '"')
			b = append(b, f.Name...)
			b = append(b, '"', ':')
			b = f.Value.Append(b)
		}
		b = append(b, '}')
	}
	return append(b, '}')
}

// AppendFloat appends v the way encoding/json writes a float64: the
// shortest representation that round-trips, with exponents only for very
// large or very small magnitudes.
func AppendFloat(b []byte, v float64) []byte {
	abs := math.Abs(v)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, v, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9, as encoding/json does
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

// UnmarshalJSON reads the tick format written by MarshalJSON. Market
// fields and any other numeric key may also stand at the top level; custom
// fields may stand in the "fields" object. Keys "seq" and "epoch" are
// ignored so that recorded updates can be replayed. The result is validated.
func (t *Tick) UnmarshalJSON(data []byte) error {
	parsed, err := ParseTick(data)
	if err != nil {
		return err
	}
	*t = parsed
	return nil
}

// sortFields puts market fields first in their fixed order, then custom
// fields by name, so that decoding is deterministic.
func (t *Tick) sortFields() {
	rank := func(name string) int {
		for i, m := range MarketFields {
			if m == name {
				return i
			}
		}
		return len(MarketFields)
	}
	fs := t.Fields
	for i := 1; i < len(fs); i++ {
		for j := i; j > 0; j-- {
			a, b := fs[j-1], fs[j]
			ra, rb := rank(a.Name), rank(b.Name)
			if ra < rb || (ra == rb && a.Name <= b.Name) {
				break
			}
			fs[j-1], fs[j] = b, a
		}
	}
}
