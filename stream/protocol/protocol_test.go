package protocol

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/tickstream/tickstream/feeds/tick"
)

func TestParseOp(t *testing.T) {
	for _, tc := range []struct {
		frame, code string
	}{
		{`{"op":"ping","id":3}`, ""},
		{`{"op":"subscribe","id":"a","topics":["A","B*"],"throttle_ms":250,"resume":{"A":{"epoch":"e","seq":2}}}`, ""},
		{`{"op":"unsubscribe","topics":["A"]}`, ""},
		{``, CodeBadJSON},
		{`[1]`, CodeBadJSON},
		{`{"op":`, CodeBadJSON},
		{`{"op":"ping","id":{"x":1}}`, CodeBadID},
		{`{"op":"ping","id":"` + strings.Repeat("x", 65) + `"}`, CodeBadID},
		{`{"id":1}`, CodeUnknownOp},
		{`{"op":"dance","id":1}`, CodeUnknownOp},
		{`{"op":"subscribe","id":1}`, CodeBadTopic},
		{`{"op":"subscribe","topics":["A"],"resume":{"A":{"seq":1}}}`, CodeBadResume},
		{`{"op":"subscribe","topics":["A"],"resume":{"bad topic":{"epoch":"e","seq":1}}}`, CodeBadResume},
	} {
		_, err := ParseOp([]byte(tc.frame))
		got := ""
		if err != nil {
			got = err.Code
		}
		if got != tc.code {
			t.Errorf("ParseOp(%s) code %q, want %q (%v)", tc.frame, got, tc.code, err)
		}
	}
}

func TestValidSub(t *testing.T) {
	long := strings.Repeat("a", 128)
	for sub, ok := range map[string]bool{
		"A": true, "*": true, "crypto.*": true, long: true, long + "*": false, long[1:] + "*": true,
		"": false, "a b": false, "a*b": false, "**": false,
	} {
		if ValidSub(sub) != ok {
			t.Errorf("ValidSub(%q) = %v, want %v", sub, !ok, ok)
		}
	}
}

func TestCursorRoundTrip(t *testing.T) {
	pos := []CursorPos{{"e1", "A", 5}, {"e1", "b.c:d/e-f_g", 7}, {"e2", "Z", 1 << 60}}
	id := string(AppendCursor(nil, pos))
	c, err := ParseCursor(id)
	if err != nil || c.IsRef() {
		t.Fatalf("ParseCursor(%q) = %+v, %v", id, c, err)
	}
	want := map[string]Cursor{"A": {"e1", 5}, "b.c:d/e-f_g": {"e1", 7}, "Z": {"e2", 1 << 60}}
	if !maps.Equal(c.Positions, want) {
		t.Fatalf("positions %v, want %v", c.Positions, want)
	}
	ref := string(AppendCursorRef(nil, "abc234", 99))
	c, err = ParseCursor(ref)
	if err != nil || !c.IsRef() || c.Stream != "abc234" || c.Event != 99 {
		t.Fatalf("ParseCursor(%q) = %+v, %v", ref, c, err)
	}
	for _, bad := range []string{"garbage", "e1~A=x", "~A=1", "e1~=1", "@.5", "@s.x", "@a.b.5", "e1~A=1!e2"} {
		if _, err := ParseCursor(bad); err == nil {
			t.Errorf("ParseCursor(%q) accepted", bad)
		}
	}
}

func FuzzParseCursor(f *testing.F) {
	for _, s := range []string{"", "e1~A=1,B=2!e2~C=3", "@abc.5", "@a.b", "e~=", "!!", "e1~A=18446744073709551615"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		c, err := ParseCursor(id)
		if err != nil || c.IsRef() || id == "" {
			return
		}
		// An accepted inline cursor re-encodes to one that parses to the
		// same positions.
		var pos []CursorPos
		for topic, cur := range c.Positions {
			pos = append(pos, CursorPos{Epoch: cur.Epoch, Topic: topic, Seq: cur.Seq})
		}
		slices.SortFunc(pos, func(a, b CursorPos) int {
			if a.Epoch != b.Epoch {
				return strings.Compare(a.Epoch, b.Epoch)
			}
			return strings.Compare(a.Topic, b.Topic)
		})
		back, err := ParseCursor(string(AppendCursor(nil, pos)))
		if err != nil || !maps.Equal(back.Positions, c.Positions) {
			t.Fatalf("%q: round trip %v, %v", id, back.Positions, err)
		}
	})
}

func FuzzParseOp(f *testing.F) {
	for _, s := range []string{`{"op":"ping","id":1}`, `{"op":"subscribe","topics":["A*"],"throttle_ms":5}`, `{`, `null`, `{"op":"unsubscribe","topics":[""]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		op, err := ParseOp(frame)
		if err != nil {
			if err.Code == "" || err.Message == "" {
				t.Fatalf("error without code or message: %+v", err)
			}
			return
		}
		switch op.Op {
		case OpPing:
		case OpSubscribe, OpUnsubscribe:
			if len(op.Topics) == 0 {
				t.Fatal("accepted a subscribe without topics")
			}
		default:
			t.Fatalf("accepted op %q", op.Op)
		}
	})
}

// FuzzTopicPattern: ValidSub and Pattern agree with the topic rules: a
// valid pattern's prefix extends to a valid topic (so it can match), a
// valid plain topic is no pattern, and nothing valid is longer than a
// topic plus its *.
func FuzzTopicPattern(f *testing.F) {
	for _, s := range []string{"*", "BTC-*", "BTC-USD", "a*b", "**", "", "x y*", strings.Repeat("a", tick.MaxTopicLen) + "*", strings.Repeat("a", tick.MaxTopicLen-1) + "*", "é*", "feeds/x:y.z_-*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !ValidSub(s) {
			return
		}
		if len(s) > tick.MaxTopicLen+1 {
			t.Fatalf("%q (%d bytes) is valid", s, len(s))
		}
		p, ok := Pattern(s)
		if !ok {
			if !tick.ValidTopic(s) {
				t.Fatalf("%q is valid but neither a pattern nor a topic", s)
			}
			return
		}
		if p+"*" != s || strings.Contains(p, "*") {
			t.Fatalf("pattern %q has prefix %q", s, p)
		}
		if !tick.ValidTopic(p + "a") {
			t.Fatalf("pattern %q can match no topic: %q is not one", s, p+"a")
		}
	})
}

// FuzzValidMid: the fast path for plain strings agrees with decoding.
func FuzzValidMid(f *testing.F) {
	for _, s := range []string{`"m1"`, `""`, `"`, `"a"b"`, `"a\"b"`, `"\u0000"`, "\"a\x01\"", "\"\xff\"", `12.5`, `1e999`, `null`, `{"a":1}`, `"x" `, strings.Repeat("x", 130)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		want := false
		var v any
		if len(raw) > 0 && len(raw) <= MaxMidLen && json.Unmarshal(raw, &v) == nil {
			switch v := v.(type) {
			case float64:
				want = true
			case string:
				want = v != ""
			}
		}
		if got := ValidMid(raw); got != want {
			t.Fatalf("ValidMid(%q) = %v, want %v", raw, got, want)
		}
	})
}
