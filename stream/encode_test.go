package stream

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream/protocol"
)

// jsonAgg and jsonUpdate are the wire update as encoding/json would write
// it, field for field.
type jsonAgg = protocol.WireAgg

type jsonUpdate struct {
	Type  string              `json:"type"`
	Topic string              `json:"topic"`
	Epoch string              `json:"epoch"`
	Seq   uint64              `json:"seq"`
	TS    int64               `json:"ts"`
	Data  map[string]tick.Num `json:"data"`
	Agg   *jsonAgg            `json:"agg,omitempty"`
}

func fieldMap(fs []tick.Field) map[string]tick.Num {
	m := map[string]tick.Num{}
	for _, f := range fs {
		m[f.Name] = f.Value
	}
	return m
}

// sortedFields returns fs sorted by name, the order encoding/json writes
// a map in, so that encodings can be compared byte for byte.
func sortedFields(fs []tick.Field) []tick.Field {
	fs = slices.Clone(fs)
	slices.SortFunc(fs, func(a, b tick.Field) int { return cmpString(a.Name, b.Name) })
	return fs
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

var oddFloats = []float64{0, math.Copysign(0, -1), 1, -1, 0.1, 1e-6, 9.99e-7, 1e-7, 1.5e-9, 1e20, 1e21, 123456789.123456789,
	-1e300, math.MaxFloat64, math.SmallestNonzeroFloat64, 5e-324, 1e-320, 2.5e-8, 100.25, 1 << 53, -(1 << 62)}

func TestAppendUpdateMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(8, 8))
	var ups []*Update
	ups = append(ups,
		&Update{Topic: "BTC-USD", Epoch: "e1", Seq: 1, TS: 0, Agg: protocol.Agg{N: 1}},
		&Update{Topic: "a.b:c/d-e_f", Epoch: "E-_9", Seq: math.MaxUint64, TS: math.MaxInt64,
			Data: []tick.Field{tick.F("price", 1.5)}, Agg: protocol.Agg{N: 3, O: num(1), H: num(2), L: num(0.5), C: num(1.5), V: num(0), HasPrice: true}},
	)
	for _, v := range oddFloats {
		ups = append(ups, &Update{Topic: "x", Epoch: "e", Seq: 2, TS: 3,
			Data: []tick.Field{tick.F("a", v), tick.F("b.c", -v)},
			Agg:  protocol.Agg{N: 1, O: num(v), H: num(v), L: num(v), C: num(v), V: num(v), HasPrice: true}})
	}
	for range 200 {
		var w window
		for i := range 1 + rng.IntN(5) {
			tk := randTick(rng, "R", baseTS+int64(i)*rng.Int64N(700))
			w.fold(&tk, uint64(i+1), time.Time{})
		}
		u := w.take("R", "e1")
		u.Data = sortedFields(u.Data)
		ups = append(ups, u)
	}
	for i, u := range ups {
		u.Data = sortedFields(u.Data)
		got := appendUpdate(nil, u)
		want := jsonUpdate{Type: protocol.TypeUpdate, Topic: u.Topic, Epoch: u.Epoch, Seq: u.Seq, TS: u.TS, Data: fieldMap(u.Data),
			Agg: &jsonAgg{N: u.Agg.N, V: u.Agg.V}}
		if u.Agg.HasPrice {
			a := u.Agg
			want.Agg.O, want.Agg.H, want.Agg.L, want.Agg.C = &a.O, &a.H, &a.L, &a.C
		}
		if u.Agg.Parts() {
			want.Agg.B = append(slices.Clone(u.Agg.B), u.Agg.Cur)
		}
		wantJSON, err := json.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, wantJSON) {
			t.Fatalf("update %d:\n got %s\nwant %s", i, got, wantJSON)
		}
		// And it decodes back to the same values.
		var back jsonUpdate
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatal(err)
		}
		if back.Seq != u.Seq || back.TS != u.TS || len(back.Data) != len(want.Data) {
			t.Fatalf("update %d decodes to %+v", i, back)
		}
		for k, v := range want.Data {
			if !back.Data[k].Equal(v) {
				t.Fatalf("update %d: %s decodes to %v, want %v", i, k, back.Data[k], v)
			}
		}
		if got := u.encoded().JSON(); !bytes.Equal(got, wantJSON) {
			t.Fatalf("Update.JSON() = %s", got)
		}
	}
}

func TestAppendSnapshot(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		data []tick.Field
	}{
		{"empty", nil},
		{"market", []tick.Field{tick.F("ask", 2), tick.F("bid", 1), tick.F("price", 1.5)}},
		{"odd", []tick.Field{tick.F("a", 1e-7), tick.F("b", 1e21), tick.F("c", math.Copysign(0, -1))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := protocol.AppendSnapshot([]byte("prefix"), "T", "e1", 7, 8, tt.data)
			want, _ := json.Marshal(jsonUpdate{Type: protocol.TypeSnapshot, Topic: "T", Epoch: "e1", Seq: 7, TS: 8, Data: fieldMap(tt.data)})
			if !bytes.Equal(got, append([]byte("prefix"), want...)) {
				t.Fatalf("got %s, want prefix%s", got, want)
			}
		})
	}
}

func TestEncodeControl(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		got  []byte
		want any
	}{
		{"welcome", protocol.EncodeWelcome("abc", 15000, 1700000000000),
			map[string]any{"type": "welcome", "session": "abc", "heartbeat_ms": 15000.0, "server_time": 1700000000000.0}},
		{"ack", protocol.EncodeAck(json.RawMessage(`1`), []string{"a", "b*"}),
			map[string]any{"type": "ack", "id": 1.0, "topics": []any{"a", "b*"}}},
		{"ack string id", protocol.EncodeAck(json.RawMessage(`"x"`), []string{}),
			map[string]any{"type": "ack", "id": "x", "topics": []any{}}},
		{"ack no id", protocol.EncodeAck(nil, []string{"a"}),
			map[string]any{"type": "ack", "topics": []any{"a"}}},
		{"error", protocol.EncodeError(json.RawMessage(`2`), protocol.CodeBadTopic, `"a b": want "quotes" \ and 'é' and `+"\n"),
			map[string]any{"type": "error", "id": 2.0, "code": "bad_topic", "message": `"a b": want "quotes" \ and 'é' and ` + "\n"}},
		{"error control character", protocol.EncodeError(nil, protocol.CodeFrameTooLarge, "a\x01b\x7fc\u2028"),
			map[string]any{"type": "error", "code": "frame_too_large", "message": "a\x01b\x7fc\u2028"}},
		{"pong", protocol.EncodePong(json.RawMessage(`"p"`)), map[string]any{"type": "pong", "id": "p"}},
		{"pong no id", protocol.EncodePong(nil), map[string]any{"type": "pong"}},
		{"reset", protocol.EncodeReset("T", protocol.ResetHistoryGap), map[string]any{"type": "reset", "topic": "T", "reason": "history_gap"}},
		{"status lagging", protocol.EncodeStatus(true, 2000), map[string]any{"type": "status", "lagging": true, "throttle_ms": 2000.0}},
		{"status caught up", protocol.EncodeStatus(false, 0), map[string]any{"type": "status", "lagging": false, "throttle_ms": 0.0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got any
			if err := json.Unmarshal(tt.got, &got); err != nil {
				t.Fatalf("%s: %v", tt.got, err)
			}
			gotJSON, _ := json.Marshal(got)
			wantJSON, _ := json.Marshal(tt.want)
			if !bytes.Equal(gotJSON, wantJSON) {
				t.Fatalf("got %s, want %s", gotJSON, wantJSON)
			}
		})
	}
}

func TestFieldsAndTopicInfoJSON(t *testing.T) {
	t.Parallel()
	ti := TopicInfo{Topic: "T", Epoch: "e", Seq: 3, TS: 4, Data: protocol.Fields{tick.F("price", 1.25), tick.F("oi", 1e-9)}, Rate: 5}
	got, err := json.Marshal(ti)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"topic":"T","epoch":"e","seq":3,"ts":4,"data":{"price":1.25,"oi":1e-9},"rate":5}`
	if string(got) != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	got, _ = json.Marshal(protocol.Fields(nil))
	if string(got) != `{}` {
		t.Fatalf("empty Fields = %s", got)
	}
}

// TestAppendFloat: tick.AppendFloat writes what encoding/json writes, and
// it parses back to the same bits.
func TestAppendFloat(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 1))
	vals := slices.Clone(oddFloats)
	for range 20000 {
		var v float64
		switch rng.IntN(3) {
		case 0:
			v = math.Float64frombits(rng.Uint64())
		case 1:
			v = rng.NormFloat64() * math.Pow(10, float64(rng.IntN(60)-30))
		default:
			v = float64(rng.Int64N(1e6)) / 100
		}
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			vals = append(vals, v)
		}
	}
	for _, v := range vals {
		got := tick.AppendFloat(nil, v)
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("AppendFloat(%v) = %s, encoding/json %s", v, got, want)
		}
		back, err := strconv.ParseFloat(string(got), 64)
		if err != nil || math.Float64bits(back) != math.Float64bits(v) {
			t.Fatalf("AppendFloat(%v) = %s parses to %v (%v)", v, got, back, err)
		}
	}
}

// FuzzParseTick: ParseTick never panics; what it accepts is valid and
// survives a round trip through the tick format unchanged.
func FuzzParseTick(f *testing.F) {
	for _, s := range []string{
		`{"topic":"BTC-USD","ts":1700000000000,"price":1.5,"size":2,"fields":{"oi":7}}`,
		`{"topic":"a","price":"1.25","bid":1,"ask":2,"bid_size":3,"ask_size":4,"volume":5}`,
		`{"topic":"a","ts":null,"seq":5,"epoch":"x"}`,
		`{"topic":"a","ts":1.5}`, `{"topic":"a","ts":-1}`, `{"topic":"a","price":1e999}`, `{"topic":"a","price":"NaN"}`,
		`{"topic":"a","fields":{"price":1}}`, `{"topic":"a","x":1,"fields":{"x":2}}`, `{"topic":5}`, `{}`, `null`, `[]`, ``,
		`{"topic":"a","price":-0,"size":1e-7}`, `{"topic":"a"} trailing`, `{"topic":"0","0":1e1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tk, err := tick.ParseTick(data)
		if err != nil {
			return
		}
		if err := tk.Validate(); err != nil {
			t.Fatalf("ParseTick accepted an invalid tick %+v: %v", tk, err)
		}
		enc := tk.AppendJSON(nil)
		if !json.Valid(enc) {
			t.Fatalf("AppendJSON wrote invalid JSON %s", enc)
		}
		back, err := tick.ParseTick(enc)
		if err != nil {
			t.Fatalf("round trip of %s: %v", enc, err)
		}
		// The same exact values: 1e1 is written as 10 and reads back as
		// 10, equal though not in the same form.
		sameValues := slices.EqualFunc(back.Fields, tk.Fields, func(a, b tick.Field) bool {
			return a.Name == b.Name && a.Value.Equal(b.Value)
		})
		if back.Topic != tk.Topic || back.TS != tk.TS || !sameValues {
			t.Fatalf("round trip changed the tick:\n  in %+v\n out %+v", tk, back)
		}
	})
}
