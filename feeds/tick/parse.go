package tick

import (
	"bytes"
	"errors"
	"sync"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

// ParseTick decodes and validates one tick in the tick JSON format (see
// Tick.UnmarshalJSON): data must be one JSON object, nothing after it but
// white space. Numbers are read exactly from their text (see ParseNum), as
// are strings holding decimals ("61837.63"). A key given twice counts
// once, its last value (as encoding/json reads an object into a map).
//
// ParseTick allocates only the tick's fields slice (topics and field names
// are interned per pooled parser), so it suits publish paths that parse
// every tick.
func ParseTick(data []byte) (Tick, error) {
	t, _, err := parse(data, false)
	return t, err
}

// ParsePublished is ParseTick for a tick a client publishes: a top-level
// "mid" (the publisher's idempotency id) is taken out of the tick rather
// than read as a field, and returned as its raw JSON text, a copy the
// caller owns (nil when there is none). mid comes back even when the tick
// is refused, as long as data is a JSON object, so the caller can check it
// first.
func ParsePublished(data []byte) (t Tick, mid []byte, err error) {
	return parse(data, true)
}

// member is one key of a parsed object, its key decoded.
type member struct {
	key []byte
	v   *fastjson.Value
}

// maxMembers bounds the distinct keys of a tick object: MaxFields fields
// and topic, ts, seq, epoch, fields.
const maxMembers = MaxFields + 5

// parser is a pooled fastjson parser with its scratch space and a bounded
// cache of interned topics and field names.
type parser struct {
	p      fastjson.Parser
	top    []member
	custom []member
	names  map[string]string
	num    []byte // scratch for a number's text
}

var parsers sync.Pool

const (
	// maxPooledInput: a parser that read more keeps a buffer that big, so
	// it is not pooled.
	maxPooledInput = 64 << 10
	// maxInterned bounds a parser's interned strings; the cache starts
	// over when full.
	maxInterned = 1024
)

func getParser(size int) *parser {
	if size <= maxPooledInput {
		if p, _ := parsers.Get().(*parser); p != nil {
			return p
		}
	}
	return &parser{}
}

func (p *parser) release(size int) {
	clear(p.top)
	clear(p.custom)
	if size > maxPooledInput || cap(p.top) > 4*maxMembers || cap(p.custom) > 4*maxMembers {
		return
	}
	parsers.Put(p)
}

// intern returns b as a string, shared with earlier calls for the same
// bytes. Strings are immutable, so sharing them is safe; the cache is
// bounded in entries and in the length of what it keeps.
func (p *parser) intern(b []byte, maxLen int) string {
	if len(b) > maxLen {
		return string(b)
	}
	if s, ok := p.names[string(b)]; ok {
		return s
	}
	if p.names == nil {
		p.names = make(map[string]string)
	} else if len(p.names) >= maxInterned {
		clear(p.names)
	}
	s := string(b)
	p.names[s] = s
	return s
}

func parse(data []byte, published bool) (Tick, []byte, error) {
	// fastjson recurses once per level of nesting and wraps its error
	// message at each: bound the nesting first.
	deep, ctrl := preScan(data)
	if deep {
		return Tick{}, nil, tickErr(ErrBadJSON, "nested deeper than %d levels", maxNesting)
	}
	if ctrl {
		return Tick{}, nil, tickErr(ErrBadJSON, "a string holds a raw control character (escape it)")
	}
	p := getParser(len(data))
	defer p.release(len(data))
	// The Parser is lenient (it takes NaN, 01 and bad escapes): Validate
	// holds the input to the JSON grammar, as encoding/json did.
	v, err := p.p.ParseBytes(data)
	if err == nil {
		err = fastjson.ValidateBytes(data)
	}
	if err != nil {
		return Tick{}, nil, tickErr(ErrBadJSON, "%s", shortened(err.Error()))
	}
	if v.Type() != fastjson.TypeObject {
		return Tick{}, nil, tickErr(ErrBadJSON, "want a JSON object, not %s", v.Type())
	}
	o, _ := v.Object()
	p.top = members(o, p.top[:0])

	var t Tick
	var mid []byte
	var topicV, tsV, fieldsV *fastjson.Value
	keys, nf := len(p.top), 0
	for _, m := range p.top {
		switch string(m.key) {
		case "topic":
			topicV = m.v
		case "ts":
			tsV = m.v
		case "fields":
			fieldsV = m.v
		case "seq", "epoch":
		case "mid":
			if published {
				// Its raw text, before Type() unescapes it in place.
				mid = m.v.MarshalTo(nil)
				keys--
				break
			}
			nf++
		default:
			nf++
		}
	}
	// Refuse oversized objects before the per-field work, which is
	// quadratic in the number of fields (they are few in a valid tick).
	if keys > maxMembers {
		return Tick{}, mid, tickErr(ErrTooManyField, "%d keys, at most %d fields", keys, MaxFields)
	}
	if topicV == nil {
		return Tick{}, mid, tickErr(ErrBadTopic, "missing \"topic\"")
	}
	switch topicV.Type() {
	case fastjson.TypeString:
		s, _ := topicV.StringBytes()
		t.Topic = p.intern(s, MaxTopicLen)
	case fastjson.TypeNull: // "", refused by Validate below
	default:
		return Tick{}, mid, tickErr(ErrBadTopic, "topic must be a string")
	}
	if tsV != nil && tsV.Type() != fastjson.TypeNull {
		// A fraction of a millisecond is truncated, never rounded into
		// the next millisecond (or bar).
		n, err := p.number(tsV)
		ms, fits := n.Trunc()
		if err != nil || n.Sign() < 0 || !fits || ms > 1<<53 {
			return Tick{}, mid, tickErr(ErrBadField, "ts must be Unix milliseconds, got %s", tsV.MarshalTo(nil))
		}
		t.TS = ms
	}
	p.custom = p.custom[:0]
	fieldsOK := fieldsV == nil || fieldsV.Type() == fastjson.TypeNull
	if fieldsV != nil && fieldsV.Type() == fastjson.TypeObject {
		fieldsOK = true
		fo, _ := fieldsV.Object()
		p.custom = members(fo, p.custom)
	}
	if n := nf + len(p.custom); n > 0 {
		t.Fields = make([]Field, 0, min(n, MaxFields+1))
	}
	// The keys in the order they came: the first bad one is refused.
	for _, m := range p.top {
		switch string(m.key) {
		case "topic", "ts", "seq", "epoch":
			continue
		case "mid":
			if published {
				continue
			}
		case "fields":
			if !fieldsOK {
				return Tick{}, mid, tickErr(ErrBadField, "fields must be an object of numbers")
			}
			if len(p.custom)+keys > maxMembers {
				return Tick{}, mid, tickErr(ErrTooManyField, "%d custom fields, at most %d fields", len(p.custom), MaxFields)
			}
			for _, c := range p.custom {
				if isMarketField(string(c.key)) {
					return Tick{}, mid, tickErr(ErrBadField, "market field %q belongs at the top level, not in fields", c.key)
				}
				if err := p.add(&t, c.key, c.v); err != nil {
					return Tick{}, mid, err
				}
			}
			continue
		}
		if err := p.add(&t, m.key, m.v); err != nil {
			return Tick{}, mid, err
		}
	}
	t.sortFields()
	if err := t.Validate(); err != nil {
		return Tick{}, mid, err
	}
	return t, mid, nil
}

func (p *parser) add(t *Tick, name []byte, v *fastjson.Value) error {
	n, err := p.number(v)
	if err != nil {
		if errors.Is(err, ErrNonFinite) {
			return tickErr(ErrNonFinite, "field %q", name)
		}
		return tickErr(ErrBadField, "field %q: %v", name, err)
	}
	for _, f := range t.Fields {
		if f.Name == string(name) {
			return tickErr(ErrBadField, "field %q given twice", name)
		}
	}
	t.Fields = append(t.Fields, Field{Name: p.intern(name, MaxFieldNameLen), Value: n})
	return nil
}

// number reads a JSON number, or a string holding one (exchanges send
// decimals as strings), exactly from its text: no float64 round trip.
func (p *parser) number(v *fastjson.Value) (Num, error) {
	switch v.Type() {
	case fastjson.TypeNumber:
		p.num = v.MarshalTo(p.num[:0]) // the number's own text
		return parseNum(p.num)
	case fastjson.TypeString:
		s, _ := v.StringBytes()
		return parseNum(bytes.TrimSpace(s))
	}
	return Num{}, errNotNumber
}

// members appends o's keys to dst, each key once with its last value, in
// the order of their last occurrence, as encoding/json reads an object
// into a map.
func members(o *fastjson.Object, dst []member) []member {
	o.Visit(func(k []byte, v *fastjson.Value) {
		dst = append(dst, member{key: decodedKey(k), v: v})
	})
	if len(dst) <= 2*maxMembers {
		out := dst[:0]
		for i, m := range dst {
			if !hasKey(dst[i+1:], m.key) {
				out = append(out, m)
			}
		}
		return out
	}
	// Many keys: stop counting once past the limit (the tick is refused
	// as too many fields, whatever else it holds).
	last := make(map[string]int, 2*maxMembers)
	for i, m := range dst {
		last[string(m.key)] = i
		if len(last) > maxMembers+1 { // + mid
			return dst
		}
	}
	out := dst[:0]
	for i, m := range dst {
		if last[string(m.key)] == i {
			out = append(out, m)
		}
	}
	return out
}

func hasKey(ms []member, key []byte) bool {
	for _, m := range ms {
		if bytes.Equal(m.key, key) {
			return true
		}
	}
	return false
}

// decodedKey returns k with each byte that is not valid UTF-8 replaced by
// U+FFFD, as encoding/json decodes a key (so such keys collide the same
// way).
func decodedKey(k []byte) []byte {
	ascii := true
	for _, c := range k {
		if c >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii || utf8.Valid(k) {
		return k
	}
	out := make([]byte, 0, len(k)+8)
	for len(k) > 0 {
		r, size := utf8.DecodeRune(k)
		out = utf8.AppendRune(out, r)
		k = k[size:]
	}
	return out
}

// maxNesting bounds how deep arrays and objects nest in a tick (a tick
// needs 2: itself and its fields).
const maxNesting = 32

// preScan reports, in one pass, whether data nests deeper than
// maxNesting and whether a string in it holds a raw control character
// (JSON wants those escaped; fastjson's validator misses one that comes
// before an escape in the same string, as in "\x00\\b").
func preScan(data []byte) (deep, ctrl bool) {
	depth := 0
	for i := 0; i < len(data); i++ {
		switch data[i] {
		case '"':
			for i++; i < len(data) && data[i] != '"'; i++ {
				if data[i] == '\\' {
					i++
				}
				if i < len(data) && data[i] < 0x20 {
					ctrl = true
				}
			}
		case '[', '{':
			if depth++; depth > maxNesting {
				return true, ctrl
			}
		case ']', '}':
			depth--
		}
	}
	return false, ctrl
}

// shortened keeps the end of a long fastjson error message (the innermost
// reason and the unparsed tail).
func shortened(msg string) string {
	const max = 200
	if len(msg) <= max {
		return msg
	}
	i := len(msg) - max
	for i < len(msg) && !utf8.RuneStart(msg[i]) {
		i++
	}
	return "…" + msg[i:]
}
