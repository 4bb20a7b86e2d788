package store

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream"
)

// The meta record and bars are written by hand, as json.Marshal writes
// them: stores written with json.Marshal load the same way, and so do
// these.
func TestHandEncodingMatchesJSON(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uote\back`, "<a&b>", "ctl\x00\x01\b\f\n\r\t\x1f", "üñí €", "bad\xffutf8\xc3", "sep\u2028\u2029", `{"topic":".","ts":1}` + "\n"} {
		want, _ := json.Marshal(s)
		if got := appendJSONString(nil, []byte(s)); !bytes.Equal(got, want) {
			t.Errorf("string %q: %s, want %s", s, got, want)
		}
	}
	bars := []stream.Candle{
		{},
		{T: 1764000000000, O: tick.MustNum("61837.63"), H: tick.MustNum("61900"), L: tick.MustNum("0.00000001"), C: tick.MustNum("-12.5"), V: tick.MustNum("1e+22"), N: 42},
	}
	for _, bar := range bars {
		want, _ := json.Marshal(bar)
		if got := appendBar(nil, bar); !bytes.Equal(got, want) {
			t.Errorf("bar: %s, want %s", got, want)
		}
	}
	fields := []tick.Field{tick.F(tick.FieldPrice, 61837.63), tick.F("o\"i", 3), tick.F("<x>", 0.5)}
	for _, st := range []*topicState{
		{seq: 7, ts: -3, acc: 1764000000000000000, latest: fields, open: make([]stream.Candle, len(stream.CandleIntervals))},
		{seq: 1 << 63, latest: fields, lineage: []stream.EpochSeq{{Epoch: "e\"1", Seq: 5}, {Epoch: "e2", Seq: 9}},
			open: []stream.Candle{bars[1], {}, {T: 60000, O: tick.NumInt(1), H: tick.NumInt(2), L: tick.NumInt(1), C: tick.NumInt(2), V: tick.NumInt(3), N: 2}, bars[1]}},
	} {
		if err := st.setLineage(st.lineage); err != nil {
			t.Fatal(err)
		}
		latest := appendLatest(nil, st.latest)
		m := topicMeta{Seq: st.seq, TS: st.ts, Acc: st.acc, Latest: string(latest), Lineage: st.lineage}
		for i, bar := range st.open {
			if bar.N > 0 {
				if m.Open == nil {
					m.Open = map[string]stream.Candle{}
				}
				m.Open[stream.CandleIntervals[i].Name] = bar
			}
		}
		got := appendMeta(nil, st, latest)
		var back topicMeta
		if err := json.Unmarshal(got, &back); err != nil || !reflect.DeepEqual(back, m) {
			t.Errorf("meta %s: decodes to %+v, %v; want %+v", got, back, err, m)
		}
		if m.Open == nil { // no map, whose keys json.Marshal sorts
			if want, _ := json.Marshal(m); !bytes.Equal(got, want) {
				t.Errorf("meta:\n%s\nwant\n%s", got, want)
			}
		}
	}
}
