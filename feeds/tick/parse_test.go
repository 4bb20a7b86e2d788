package tick

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var sentinels = []error{ErrBadJSON, ErrBadTopic, ErrBadField, ErrNonFinite, ErrTooManyField}

func sentinel(err error) error {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return s
		}
	}
	return err
}

// surrogateEscape matches a \u escape of a UTF-16 surrogate: encoding/json
// and fastjson decode an unpaired one differently (U+FFFD, or the escape
// kept as text). Either way the key or value holding it is invalid, so
// both parsers refuse the tick, but not always for the same first reason.
var surrogateEscape = regexp.MustCompile(`(?i)\\ud[89a-f]`)

// checkSameAsOld checks that parse (new) and old accept and refuse data
// alike, with the same tick or the same kind of error. The old parser
// iterates a map, so when a tick has several faults it reports one at
// random: old is retried until it reports the new parser's one.
func checkSameAsOld(t *testing.T, data []byte, parse, old func([]byte) (Tick, error)) {
	t.Helper()
	got, err := parse(data)
	want, oldErr := old(data)
	if !json.Valid(data) {
		// The old parser took a valid object followed by anything.
		if !errors.Is(err, ErrBadJSON) {
			t.Fatalf("%q is not JSON: got %+v, %v; want ErrBadJSON", data, got, err)
		}
		return
	}
	if err != nil && errors.Is(err, ErrBadJSON) && strings.Contains(err.Error(), "nested deeper") {
		return // maxNesting (32) is below encoding/json's 10000
	}
	if (err == nil) != (oldErr == nil) {
		t.Fatalf("%q:\n new: %+v, %v\n old: %+v, %v", data, got, err, want, oldErr)
	}
	if err == nil {
		if got.Topic != want.Topic || got.TS != want.TS || !slices.Equal(got.Fields, want.Fields) {
			t.Fatalf("%q:\n new: %+v\n old: %+v", data, got, want)
		}
		return
	}
	if surrogateEscape.Match(data) {
		return
	}
	for range 200 {
		if sentinel(oldErr) == sentinel(err) {
			return
		}
		_, oldErr = old(data)
	}
	t.Fatalf("%q: new refuses with %v; old never with that kind, e.g. %v", data, err, oldErr)
}

// parsePublishedOld is the server's parsePublished before ParsePublished
// (without its mid validation, which both share).
func parsePublishedOld(raw []byte) (Tick, []byte, error) {
	if !bytes.Contains(raw, []byte(`"mid"`)) {
		t, err := parseTickOld(raw)
		return t, nil, err
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		t, err := parseTickOld(raw)
		return t, nil, err
	}
	mid, ok := obj["mid"]
	if !ok {
		t, err := parseTickOld(raw)
		return t, nil, err
	}
	delete(obj, "mid")
	rest, _ := json.Marshal(obj)
	t, err := parseTickOld(rest)
	return t, mid, err
}

func checkPublishedSameAsOld(t *testing.T, data []byte) {
	t.Helper()
	_, mid, _ := ParsePublished(data)
	_, oldMid, _ := parsePublishedOld(data)
	if mid != nil && !bytes.Contains(data, []byte(`"mid"`)) {
		return // an escaped "mid" key: the old parser did not see it
	}
	if json.Valid(data) {
		var v any
		if json.Unmarshal(oldMid, &v) == nil {
			switch v.(type) {
			case map[string]any, []any:
				// compacted by the new parser; refused as a mid by both
				if mid == nil {
					t.Fatalf("%q: no mid, old one %s", data, oldMid)
				}
				oldMid = mid
			}
		}
		if !bytes.Equal(mid, oldMid) {
			t.Fatalf("%q: mid %q, old %q", data, mid, oldMid)
		}
	}
	checkSameAsOld(t, data, func(b []byte) (Tick, error) {
		tk, _, err := ParsePublished(b)
		return tk, err
	}, func(b []byte) (Tick, error) {
		tk, _, err := parsePublishedOld(b)
		return tk, err
	})
}

var sameAsOldSeeds = []string{
	`{"topic":"BTC-USD","ts":1700000000000,"price":1.5,"size":2,"fields":{"oi":7}}`,
	`{"topic":"bench.T0","price":"61837.63","size":0.5,"fields":{"sent_us":1700000000000000,"ctr":123}}`,
	`{"topic":"a","price":"1.25","bid":1,"ask":2,"bid_size":3,"ask_size":4,"volume":5}`,
	`{"topic":"a","ts":null,"seq":5,"epoch":"x"}`, `{"topic":"a","seq":{"x":[1,2,{"y":null}]},"epoch":[true,false]}`,
	`{"topic":"a","ts":1.5}`, `{"topic":"a","ts":-1}`, `{"topic":"a","ts":"1723161299999.9996"}`, `{"topic":"a","ts":" 12 "}`,
	`{"topic":"a","ts":9007199254740993}`, `{"topic":"a","ts":1e999}`, `{"topic":"a","ts":true}`,
	`{"topic":"a","price":1e999}`, `{"topic":"a","price":"NaN"}`, `{"topic":"a","price":"-Infinity"}`, `{"topic":"a","price":"1e999"}`,
	`{"topic":"a","price":12345678901234567891}`, `{"topic":"a","price":0.000000000000000000000000000001}`, `{"topic":"a","price":1e-999}`,
	`{"topic":"a","price":-0,"size":1e-7}`, `{"topic":"a","price":"\u0031.5"}`, `{"topic":"a","price":" 1.5\t"}`, `{"topic":"a","price":"\u00a01"}`,
	`{"topic":"a","fields":{"price":1}}`, `{"topic":"a","x":1,"fields":{"x":2}}`, `{"topic":"a","fields":null}`, `{"topic":"a","fields":[1]}`,
	`{"topic":"a","price":1,"price":2}`, `{"topic":"a","topic":"b"}`, `{"topic":"a","fields":{"x":1,"x":"NaN"},"fields":{"y":2}}`,
	`{"topic":"a","x":"NaN","y":"z"}`, `{"topic":"a b","price":"x"}`, `{"topic":null,"price":1}`, `{"topic":null,"price":"x"}`,
	`{"topic":5}`, `{"topic":"a","bad name":1,"x":"NaN"}`, `{"topic":"a","seq":1,"epoch":2,"ts":3}`,
	`{"\u0074opic":"a","pr\u0069ce":"2"}`, `{"topic":"\u0061\/b","price":1}`, `{"topic":"é","price":1}`, `{"topic":"a","é":1}`,
	"{\"topic\":\"a\",\"x\xff\":1,\"x\xfe\":\"NaN\"}", "{\"topic\":\"a\xff\"}", `{"topic":"a","\ud800":1,"\ud801":"NaN"}`,
	`{"topic":"a","mid":"m1","price":1}`, `{"topic":"a","mid":7}`, `{"topic":"a","mid":""}`, `{"topic":"a","mid":{"x":1}}`,
	`{"topic":"a","mid":"m","mid":"n"}`, `{"topic":"a","fields":{"mid":1}}`, `{"topic":"a","\u006did":"m"}`, `{"mid":"m"}`,
	`{}`, `null`, `[]`, ``, `"x"`, `1`, ` {"topic":"a"} `, "\t{ \"topic\" : \"a\" ,\r\n \"price\" : 1 }\n",
	`{"topic":"a"} trailing`, `{"topic":"a"}{"topic":"b"}`, `{"topic":"a",}`, `{"topic":"a","price":01}`, `{"topic":"a","price":NaN}`,
	"{\"topic\":\"a\x01\"}", `{"topic":"a\x"}`,
}

func manyFields(n int, dup bool) string {
	var b strings.Builder
	b.WriteString(`{"topic":"a"`)
	for i := range n {
		k := i
		if dup {
			k = i % 3
		}
		b.WriteString(`,"k` + strconv.Itoa(k) + `":` + strconv.Itoa(i))
	}
	b.WriteString(`,"fields":{"c1":1,"c2":2}}`)
	return b.String()
}

// TestParseTickSameAsOld runs the differential check over the seeds of
// FuzzParseTickSameAsOld.
func TestParseTickSameAsOld(t *testing.T) {
	seeds := append(slices.Clone(sameAsOldSeeds), manyFields(30, false), manyFields(31, false), manyFields(40, false), manyFields(40, true), manyFields(5000, true))
	for _, s := range seeds {
		checkSameAsOld(t, []byte(s), ParseTick, parseTickOld)
		checkPublishedSameAsOld(t, []byte(s))
	}
}

// FuzzParseTickSameAsOld: ParseTick and ParsePublished accept exactly what
// the encoding/json parser they replaced accepted (but trailing data after
// the object), with the same result, and refuse the rest with the same
// kind of error.
func FuzzParseTickSameAsOld(f *testing.F) {
	for _, s := range sameAsOldSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte(manyFields(40, false)))
	f.Add([]byte(manyFields(40, true)))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkSameAsOld(t, data, ParseTick, parseTickOld)
		checkPublishedSameAsOld(t, data)
	})
}

func TestParsePublishedMid(t *testing.T) {
	for _, tc := range []struct {
		in, mid string
		fields  int
		err     error
	}{
		{`{"topic":"a","mid":"m1","price":1}`, `"m1"`, 1, nil},
		{`{"topic":"a","mid":"m\u0031"}`, `"m\u0031"`, 0, nil}, // raw text, as before
		{`{"topic":"a","mid":12.50}`, `12.50`, 0, nil},
		{`{"topic":"a","mid":"x","mid":"y"}`, `"y"`, 0, nil},
		{`{"topic":"a","fields":{"mid":1}}`, ``, 1, nil},
		{`{"topic":"a b","mid":"m"}`, `"m"`, 0, ErrBadTopic}, // the mid comes with a refusal
		{`{"topic":"a","price":1}`, ``, 1, nil},
		{`{"topic":"a","mid":"m"} x`, ``, 0, ErrBadJSON},
	} {
		tk, mid, err := ParsePublished([]byte(tc.in))
		if string(mid) != tc.mid || len(tk.Fields) != tc.fields || !errors.Is(err, tc.err) || (err == nil) != (tc.err == nil) {
			t.Errorf("ParsePublished(%s) = %+v, mid %q, %v; want mid %q, %d fields, %v", tc.in, tk, mid, err, tc.mid, tc.fields, tc.err)
		}
	}
	// ParseTick reads a "mid" as a field
	if tk, err := ParseTick([]byte(`{"topic":"a","mid":5}`)); err != nil || len(tk.Fields) != 1 || tk.Fields[0].Name != "mid" {
		t.Errorf("ParseTick with a mid: %+v, %v", tk, err)
	}
}

// TestParseTickAllocs: a typical published tick costs one allocation, its
// fields slice (topic and field names are interned).
func TestParseTickAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under the race detector")
	}
	if _, err := ParseTick(benchTick); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = ParseTick(benchTick) }); n > 2 {
		t.Errorf("ParseTick: %v allocations, want at most 2", n)
	}
	if n := testing.AllocsPerRun(100, func() { _, _, _ = ParsePublished(benchTick) }); n > 2 {
		t.Errorf("ParsePublished: %v allocations, want at most 2", n)
	}
}

// The returned tick shares no memory with the parser, which the next
// parse reuses.
func TestParseTickOwnsItsStrings(t *testing.T) {
	a, err := ParseTick([]byte(`{"topic":"\u0041-1","price":"1","fields":{"x\u0031":2}}`))
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := ParseTick([]byte(`{"topic":"zzzzzzz","price":"9","fields":{"yyyyy":3}}`)); err != nil {
			t.Fatal(err)
		}
	}
	if a.Topic != "A-1" || a.Fields[1].Name != "x1" {
		t.Fatalf("tick changed under a later parse: %+v", a)
	}
}

// Deep nesting is refused before any recursion that deep (the old parser
// stopped at encoding/json's 10000 levels), with a short reason.
func TestParseTickDeepNesting(t *testing.T) {
	deepest := `{"topic":"a","seq":` + strings.Repeat("[", maxNesting-1) + strings.Repeat("]", maxNesting-1) + `}`
	if _, err := ParseTick([]byte(deepest)); err != nil {
		t.Errorf("%d levels: %v", maxNesting, err)
	}
	for _, s := range []string{
		`{"topic":"a","seq":` + strings.Repeat("[", maxNesting) + strings.Repeat("]", maxNesting) + `}`,
		`{"topic":"a","seq":` + strings.Repeat("[", maxNesting-1) + "01" + strings.Repeat("]", maxNesting-1) + `}`,
		`{"topic":"a","seq":` + strings.Repeat("[", 1<<20) + strings.Repeat("]", 1<<20) + `}`,
		`{"topic":"a","seq":` + strings.Repeat("[", 1<<20),
		strings.Repeat(`{"a":`, 1<<18),
	} {
		if _, err := ParseTick([]byte(s)); !errors.Is(err, ErrBadJSON) || len(err.Error()) > 300 {
			t.Errorf("%d bytes: %v, want a short ErrBadJSON", len(s), err)
		}
	}
}
