package websocket

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/tick"
)

// mapper turns one exchange message into ticks, appended to ticks. A
// message of a kind the mapper does not use (order-book deltas,
// subscription acks, heartbeats) gives no tick and no error. An
// *ExchangeError means the exchange refused us (bad subscription).
type mapper interface {
	mapMessage(msg []byte, now time.Time, ticks []feeds.Tick) ([]feeds.Tick, error)
}

// ExchangeError is an error message sent by the exchange, such as a
// refused subscription. The feed fails with it and is restarted.
type ExchangeError struct {
	Message string
}

func (e *ExchangeError) Error() string { return "websocket: exchange error: " + e.Message }

// errNotJSON is returned for a message that is not a JSON object.
var errNotJSON = errors.New("websocket: message is not a JSON object")

// number reads a JSON number or a decimal string (exchanges send prices
// as strings to keep them exact).
// It keeps the text's decimals exactly (tick.ParseNum).
func number(raw json.RawMessage) (tick.Num, error) {
	s := string(bytes.TrimSpace(raw))
	if len(s) >= 2 && s[0] == '"' {
		var str string
		if err := json.Unmarshal(raw, &str); err != nil {
			return tick.Num{}, err
		}
		s = strings.TrimSpace(str)
	}
	v, err := tick.ParseNum(s)
	if err != nil {
		return tick.Num{}, fmt.Errorf("%s is not a finite number: %w", raw, err)
	}
	return v, nil
}

// fieldSet appends a field read from raw if raw is present and not null.
func fieldSet(t *feeds.Tick, name string, raw json.RawMessage) error {
	if len(raw) == 0 || string(raw) == "null" || string(raw) == `""` {
		return nil
	}
	v, err := number(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	t.Fields = append(t.Fields, feeds.Field{Name: name, Value: v})
	return nil
}

// coinbase maps the Coinbase Exchange feed (ws-feed.exchange.coinbase.com):
// ticker → price, size (last_size), bid, ask, bid_size, ask_size, volume
// (volume_24h); match and last_match → price, size. ts is the message
// time.
type coinbase struct{}

type coinbaseMessage struct {
	Type        string          `json:"type"`
	ProductID   string          `json:"product_id"`
	Price       json.RawMessage `json:"price"`
	Size        json.RawMessage `json:"size"`
	LastSize    json.RawMessage `json:"last_size"`
	BestBid     json.RawMessage `json:"best_bid"`
	BestAsk     json.RawMessage `json:"best_ask"`
	BestBidSize json.RawMessage `json:"best_bid_size"`
	BestAskSize json.RawMessage `json:"best_ask_size"`
	Volume24h   json.RawMessage `json:"volume_24h"`
	Time        string          `json:"time"`
	Message     string          `json:"message"`
	Reason      string          `json:"reason"`
}

func (coinbase) mapMessage(msg []byte, now time.Time, ticks []feeds.Tick) ([]feeds.Tick, error) {
	var m coinbaseMessage
	if err := json.Unmarshal(msg, &m); err != nil {
		return ticks, errNotJSON
	}
	t := feeds.Tick{Topic: m.ProductID}
	var pairs [][2]any
	switch m.Type {
	case "ticker":
		pairs = [][2]any{
			{feeds.FieldPrice, m.Price}, {feeds.FieldSize, m.LastSize},
			{feeds.FieldBid, m.BestBid}, {feeds.FieldAsk, m.BestAsk},
			{feeds.FieldBidSize, m.BestBidSize}, {feeds.FieldAskSize, m.BestAskSize},
			{feeds.FieldVolume, m.Volume24h},
		}
	case "match", "last_match":
		pairs = [][2]any{{feeds.FieldPrice, m.Price}, {feeds.FieldSize, m.Size}}
	case "error":
		return ticks, &ExchangeError{Message: strings.TrimSpace(m.Message + " " + m.Reason)}
	default:
		return ticks, nil
	}
	for _, p := range pairs {
		if err := fieldSet(&t, p[0].(string), p[1].(json.RawMessage)); err != nil {
			return ticks, err
		}
	}
	if len(t.Fields) == 0 {
		return ticks, nil
	}
	t.TS = now.UnixMilli()
	if m.Time != "" {
		tm, err := time.Parse(time.RFC3339Nano, m.Time)
		if err != nil {
			return ticks, fmt.Errorf("time: %w", err)
		}
		t.TS = tm.UnixMilli()
	}
	return append(ticks, t), nil
}

// binance maps Binance spot and futures streams, raw or in the combined
// envelope {"stream":…,"data":…}: trade and aggTrade → price, size with
// ts = trade time T; bookTicker → bid, ask, bid_size, ask_size with ts = T
// if sent (futures) or the receive time (spot sends none).
type binance struct{}

func (binance) mapMessage(msg []byte, now time.Time, ticks []feeds.Tick) ([]feeds.Tick, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(msg, &m); err != nil || m == nil {
		return ticks, errNotJSON
	}
	if data, ok := m["data"]; ok && m["stream"] != nil {
		m = nil
		if err := json.Unmarshal(data, &m); err != nil || m == nil {
			return ticks, errNotJSON
		}
	}
	if code, ok := m["code"]; ok && m["msg"] != nil {
		var text string
		_ = json.Unmarshal(m["msg"], &text)
		return ticks, &ExchangeError{Message: fmt.Sprintf("%s (code %s)", text, code)}
	}
	var event string
	if e, ok := m["e"]; ok {
		_ = json.Unmarshal(e, &event)
	} else if m["u"] != nil && m["b"] != nil && m["a"] != nil && m["B"] != nil {
		event = "bookTicker" // spot bookTicker has no "e"
	}
	var t feeds.Tick
	if err := json.Unmarshal(m["s"], &t.Topic); err != nil && event != "" {
		return ticks, fmt.Errorf("s: %w", err)
	}
	var pairs [][2]any
	switch event {
	case "trade", "aggTrade":
		pairs = [][2]any{{feeds.FieldPrice, "p"}, {feeds.FieldSize, "q"}}
	case "bookTicker":
		pairs = [][2]any{{feeds.FieldBid, "b"}, {feeds.FieldAsk, "a"}, {feeds.FieldBidSize, "B"}, {feeds.FieldAskSize, "A"}}
	default:
		return ticks, nil
	}
	for _, p := range pairs {
		if err := fieldSet(&t, p[0].(string), m[p[1].(string)]); err != nil {
			return ticks, err
		}
	}
	t.TS = now.UnixMilli()
	if raw, ok := m["T"]; ok {
		ts, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil || ts < 0 {
			return ticks, fmt.Errorf("T: %s is not Unix milliseconds", raw)
		}
		t.TS = ts
	}
	return append(ticks, t), nil
}

// GenericOptions map any JSON message to ticks with JSON paths: "$" is
// the message, ".key" selects an object member and "[n]" an array element,
// e.g. "$.data.p" or "$.c[0]". With Each, "@" is the current element of
// the array Each selects, e.g. "@[0]".
type GenericOptions struct {
	// Topic is a JSON path to the topic, or, if it does not start with
	// "$" or "@", a fixed topic. Required.
	Topic string `yaml:"topic"`
	// TopicStripPrefix are prefixes removed from the topic read by Topic
	// (the first that matches), e.g. [live_trades_] for Bitstamp channel
	// names. Zero value means none.
	TopicStripPrefix []string `yaml:"topic_strip_prefix"`
	// TopicTemplate builds the topic from the (stripped) value: "{}" is
	// replaced by it, e.g. "kraken.{}". Zero value means "{}". Options.rename
	// is applied afterwards, to map pair names (XBT/USD) to topics.
	TopicTemplate string `yaml:"topic_template"`
	// Each is a JSON path to an array in the message: every element
	// becomes one tick, and paths starting with "@" are relative to the
	// element ("$" paths still read the whole message, e.g. the pair).
	// Zero value means one tick per message.
	Each string `yaml:"each"`
	// TS is a JSON path to the source time. Zero value means the receive
	// time.
	TS string `yaml:"ts"`
	// TSUnit is the unit of TS: s, ms, us, ns or rfc3339; numbers and
	// decimal strings may have a fraction ("1534614057.321597"), which is
	// truncated to the millisecond, never rounded up. Zero value means ms.
	TSUnit string `yaml:"ts_unit"`
	// Fields maps tick field names to JSON paths. Required.
	Fields map[string]string `yaml:"fields"`
	// Values maps text values of a field to numbers, e.g.
	// {side: {b: 1, s: -1}}. A value of such a field that is not listed
	// is an error (see Optional). Zero value means every field holds a
	// number or a decimal string.
	Values map[string]map[string]float64 `yaml:"values"`
	// Optional lists fields that are left out of the tick when their
	// value cannot be mapped, instead of dropping the whole tick. Zero
	// value means a bad value drops the tick (the element, with Each).
	Optional []string `yaml:"optional"`
	// Match keeps only messages (or, for "@" paths, elements) where each
	// path has the given value (compared as text), e.g. {"$.e": trade}.
	// Zero value means every message with a topic and at least one field.
	Match map[string]string `yaml:"match"`
}

type generic struct {
	topic             *jpath
	fixedTopic        string
	strip             []string
	tmplPre, tmplPost string
	each              *jpath
	ts                *jpath
	unit              string
	fields            []genericField // in tick field order
	match             []matchRule
}

type genericField struct {
	name     string
	p        jpath
	values   map[string]float64
	optional bool
}

type matchRule struct {
	p    jpath
	want string
}

// jpath is a JSON path from the message ($) or from the current element
// of Each (@).
type jpath struct {
	steps path
	rel   bool
}

func (p jpath) eval(msg, elem any) (any, bool) {
	if p.rel {
		return p.steps.eval(elem)
	}
	return p.steps.eval(msg)
}

func newGeneric(o GenericOptions) (*generic, error) {
	g := &generic{unit: cmpOr(o.TSUnit, "ms"), strip: o.TopicStripPrefix}
	parse := func(opt, s string) (jpath, error) {
		if strings.HasPrefix(s, "@") {
			if o.Each == "" {
				return jpath{}, fmt.Errorf("generic.%s: %q: @ paths need generic.each", opt, s)
			}
			p, err := parsePath("$" + s[1:])
			if err != nil {
				return jpath{}, fmt.Errorf("generic.%s: %s", opt, strings.Replace(err.Error(), "$", "@", 1))
			}
			return jpath{p, true}, nil
		}
		p, err := parsePath(s)
		if err != nil {
			return jpath{}, fmt.Errorf("generic.%s: %w", opt, err)
		}
		return jpath{p, false}, nil
	}
	switch {
	case o.Topic == "":
		return nil, errors.New("generic.topic: missing; give a JSON path like $.s or a fixed topic")
	case strings.HasPrefix(o.Topic, "$") || strings.HasPrefix(o.Topic, "@"):
		p, err := parse("topic", o.Topic)
		if err != nil {
			return nil, err
		}
		g.topic = &p
	case !feeds.ValidTopic(o.Topic):
		return nil, fmt.Errorf("generic.topic: %q is neither a JSON path nor a valid topic", o.Topic)
	default:
		g.fixedTopic = o.Topic
	}
	tmpl := cmpOr(o.TopicTemplate, "{}")
	pre, post, ok := strings.Cut(tmpl, "{}")
	if !ok || strings.Contains(post, "{}") {
		return nil, fmt.Errorf("generic.topic_template: %q: want exactly one {}", tmpl)
	}
	g.tmplPre, g.tmplPost = pre, post
	if o.Each != "" {
		if strings.HasPrefix(o.Each, "@") {
			return nil, fmt.Errorf("generic.each: %q: want a path from the message ($)", o.Each)
		}
		p, err := parse("each", o.Each)
		if err != nil {
			return nil, err
		}
		g.each = &p
	}
	if o.TS != "" {
		p, err := parse("ts", o.TS)
		if err != nil {
			return nil, err
		}
		g.ts = &p
	}
	switch g.unit {
	case "s", "ms", "us", "ns", "rfc3339":
	default:
		return nil, fmt.Errorf("generic.ts_unit: %q: want s, ms, us, ns or rfc3339", o.TSUnit)
	}
	if len(o.Fields) == 0 {
		return nil, errors.New("generic.fields: missing; map field names to JSON paths, e.g. {price: $.p}")
	}
	for name, ps := range o.Fields {
		if !feeds.ValidFieldName(name) {
			return nil, fmt.Errorf("generic.fields: %q is not a valid field name", name)
		}
		p, err := parse("fields."+name, ps)
		if err != nil {
			return nil, err
		}
		f := genericField{name: name, p: p, values: o.Values[name], optional: slices.Contains(o.Optional, name)}
		for text, v := range f.values {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, fmt.Errorf("generic.values.%s: %q: %v is not a finite number", name, text, v)
			}
		}
		g.fields = append(g.fields, f)
	}
	for name := range o.Values {
		if _, ok := o.Fields[name]; !ok {
			return nil, fmt.Errorf("generic.values: %q is not in generic.fields", name)
		}
	}
	for _, name := range o.Optional {
		if _, ok := o.Fields[name]; !ok {
			return nil, fmt.Errorf("generic.optional: %q is not in generic.fields", name)
		}
	}
	slices.SortFunc(g.fields, func(a, b genericField) int { return compareFields(a.name, b.name) })
	for ps, want := range o.Match {
		p, err := parse("match", ps)
		if err != nil {
			return nil, err
		}
		g.match = append(g.match, matchRule{p, want})
	}
	return g, nil
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// compareFields orders market fields first, in their wire order, then
// custom fields by name, as feeds.ParseTick does.
func compareFields(a, b string) int {
	rank := func(s string) int {
		if i := slices.Index(feeds.MarketFields, s); i >= 0 {
			return i
		}
		return len(feeds.MarketFields)
	}
	if ra, rb := rank(a), rank(b); ra != rb {
		return ra - rb
	}
	return strings.Compare(a, b)
}

// ElementErrors says that some elements of a message (with Each) could not
// be mapped: they were left out, the others became ticks.
type ElementErrors struct {
	N     int   // elements left out
	First error // why the first one was
}

func (e *ElementErrors) Error() string {
	return fmt.Sprintf("%d element(s) left out: %v", e.N, e.First)
}

func (e *ElementErrors) Unwrap() error { return e.First }

func (g *generic) mapMessage(msg []byte, now time.Time, ticks []feeds.Tick) ([]feeds.Tick, error) {
	dec := json.NewDecoder(bytes.NewReader(msg))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return ticks, errNotJSON
	}
	for _, r := range g.match {
		if r.p.rel {
			continue // per element
		}
		got, ok := r.p.eval(v, nil)
		if !ok || text(got) != r.want {
			return ticks, nil
		}
	}
	if g.each == nil {
		t, ok, err := g.mapOne(v, nil, now)
		if err != nil || !ok {
			return ticks, err
		}
		return append(ticks, t), nil
	}
	got, ok := g.each.eval(v, nil)
	elems, isArray := got.([]any)
	if !ok || !isArray {
		return ticks, nil // a message of another kind
	}
	var bad *ElementErrors
	for _, e := range elems {
		t, ok, err := g.mapOne(v, e, now)
		if err != nil {
			if bad == nil {
				bad = &ElementErrors{First: err}
			}
			bad.N++
			continue
		}
		if ok {
			ticks = append(ticks, t)
		}
	}
	if bad != nil {
		return ticks, bad
	}
	return ticks, nil
}

// mapOne maps the message, or one element of it: ok is false for one that
// does not match or has no field.
func (g *generic) mapOne(msg, elem any, now time.Time) (t feeds.Tick, ok bool, err error) {
	for _, r := range g.match {
		if !r.p.rel {
			continue
		}
		got, ok := r.p.eval(msg, elem)
		if !ok || text(got) != r.want {
			return t, false, nil
		}
	}
	t.Topic = g.fixedTopic
	if g.topic != nil {
		got, ok := g.topic.eval(msg, elem)
		if !ok {
			return t, false, nil
		}
		name := text(got)
		for _, p := range g.strip {
			if strings.HasPrefix(name, p) {
				name = name[len(p):]
				break
			}
		}
		t.Topic = g.tmplPre + name + g.tmplPost
	}
	for _, f := range g.fields {
		got, ok := f.p.eval(msg, elem)
		if !ok || got == nil {
			continue
		}
		x, err := f.value(got)
		if err != nil {
			if f.optional {
				continue
			}
			return t, false, err
		}
		t.Fields = append(t.Fields, feeds.Field{Name: f.name, Value: x})
	}
	if len(t.Fields) == 0 {
		return t, false, nil
	}
	t.TS = now.UnixMilli()
	if g.ts != nil {
		got, ok := g.ts.eval(msg, elem)
		if !ok {
			return t, false, errors.New("ts: missing")
		}
		ts, err := parseTS(text(got), g.unit)
		if err != nil {
			return t, false, fmt.Errorf("ts: %w", err)
		}
		t.TS = ts
	}
	return t, true, nil
}

// value maps one field value: through Values if the field has them, else
// as a number or decimal string.
func (f *genericField) value(got any) (tick.Num, error) {
	s := text(got)
	if f.values != nil {
		if x, ok := f.values[s]; ok {
			n, _ := tick.NumOf(x) // finite: checked at start
			return n, nil
		}
		return tick.Num{}, fmt.Errorf("%s: %q is not one of the mapped values", f.name, s)
	}
	x, err := tick.ParseNum(strings.TrimSpace(s))
	if err != nil {
		return tick.Num{}, fmt.Errorf("%s: %q is not a finite number: %w", f.name, s, err)
	}
	return x, nil
}

// text renders a decoded JSON scalar as text.
func text(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case json.Number:
		return x.String()
	case bool:
		return strconv.FormatBool(x)
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}

// parseTS converts a source time to Unix ms, truncating fractions of a
// millisecond (feeds.ParseUnixMilli).
func parseTS(s, unit string) (int64, error) {
	if unit == "rfc3339" {
		return feeds.ParseRFC3339Milli(s)
	}
	return feeds.ParseUnixMilli(s, feeds.TimeUnit(unit))
}

// path is a parsed JSON path: each step is a string (object key) or an
// int (array index).
type path []any

func parsePath(s string) (path, error) {
	if !strings.HasPrefix(s, "$") {
		return nil, fmt.Errorf("%q: a JSON path starts with $", s)
	}
	rest := s[1:]
	p := path{}
	for rest != "" {
		switch rest[0] {
		case '.':
			rest = rest[1:]
			end := strings.IndexAny(rest, ".[")
			if end < 0 {
				end = len(rest)
			}
			if end == 0 {
				return nil, fmt.Errorf("%q: empty key", s)
			}
			p = append(p, rest[:end])
			rest = rest[end:]
		case '[':
			end := strings.IndexByte(rest, ']')
			if end < 0 {
				return nil, fmt.Errorf("%q: missing ]", s)
			}
			inner := rest[1:end]
			if n, err := strconv.Atoi(inner); err == nil && n >= 0 {
				p = append(p, n)
			} else if len(inner) >= 2 && (inner[0] == '\'' || inner[0] == '"') && inner[len(inner)-1] == inner[0] {
				p = append(p, inner[1:len(inner)-1]) // ['key with.dots']
			} else {
				return nil, fmt.Errorf("%q: bad index [%s]", s, inner)
			}
			rest = rest[end+1:]
		default:
			return nil, fmt.Errorf("%q: unexpected %q", s, rest[0])
		}
	}
	return p, nil
}

func (p path) eval(v any) (any, bool) {
	for _, step := range p {
		switch k := step.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil, false
			}
			if v, ok = m[k]; !ok {
				return nil, false
			}
		case int:
			a, ok := v.([]any)
			if !ok || k >= len(a) {
				return nil, false
			}
			v = a[k]
		}
	}
	return v, true
}
