package stream

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tickstream/tickstream/stream/protocol"
)

// protoBus has topics a, b, c and d and at most 3 topics per subscriber.
func protoBus(t testing.TB) *Bus {
	t.Helper()
	b := newTestBus(t, BusConfig{MaxTopicsPerSubscriber: 3})
	for _, name := range []string{"a", "b", "c", "d"} {
		mustPublish(t, b, priceTick(name, baseTS, 1, 1))
	}
	return b
}

func TestHandleErrors(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 65)
	tests := []struct {
		name  string
		frame string
		code  string
		id    string // echoed id, "" for none
	}{
		{"empty", ``, protocol.CodeBadJSON, ""},
		{"blank", " \n\t", protocol.CodeBadJSON, ""},
		{"not json", `hello`, protocol.CodeBadJSON, ""},
		{"array", `[{"op":"ping"}]`, protocol.CodeBadJSON, ""},
		{"truncated", `{"op":`, protocol.CodeBadJSON, ""},
		{"trailing garbage", `{"op":"ping"} x`, protocol.CodeBadJSON, ""},
		{"topics not a list", `{"op":"subscribe","topics":"a"}`, protocol.CodeBadJSON, ""},
		{"throttle not an integer", `{"op":"subscribe","topics":["a"],"throttle_ms":1.5}`, protocol.CodeBadJSON, ""},
		{"missing op", `{"id":1}`, protocol.CodeUnknownOp, "1"},
		{"unknown op", `{"op":"frobnicate","id":"q"}`, protocol.CodeUnknownOp, `"q"`},
		{"op wrong case", `{"op":"PING"}`, protocol.CodeUnknownOp, ""},
		{"no topics", `{"op":"subscribe","id":2}`, protocol.CodeBadTopic, "2"},
		{"empty topics", `{"op":"subscribe","topics":[]}`, protocol.CodeBadTopic, ""},
		{"bad topic", `{"op":"subscribe","id":3,"topics":["a b"]}`, protocol.CodeBadTopic, "3"},
		{"star inside", `{"op":"subscribe","topics":["x*y"]}`, protocol.CodeBadTopic, ""},
		{"too long", `{"op":"subscribe","topics":["` + strings.Repeat("t", 129) + `"]}`, protocol.CodeBadTopic, ""},
		{"too many topics", `{"op":"subscribe","id":4,"topics":["a","b","c","d"]}`, protocol.CodeTooManyTopics, "4"},
		{"pattern expands past the limit", `{"op":"subscribe","id":5,"topics":["*"]}`, protocol.CodeTooManyTopics, "5"},
		{"negative throttle", `{"op":"subscribe","id":6,"topics":["a"],"throttle_ms":-1}`, protocol.CodeBadThrottle, "6"},
		{"throttle too large", `{"op":"subscribe","topics":["a"],"throttle_ms":60001}`, protocol.CodeBadThrottle, ""},
		{"resume bad topic", `{"op":"subscribe","id":7,"topics":["a"],"resume":{"a b":{"epoch":"e1","seq":1}}}`, protocol.CodeBadResume, "7"},
		{"resume no epoch", `{"op":"subscribe","topics":["a"],"resume":{"a":{"seq":1}}}`, protocol.CodeBadResume, ""},
		{"resume not an object", `{"op":"subscribe","topics":["a"],"resume":{"a":5}}`, protocol.CodeBadJSON, ""},
		{"id object", `{"op":"ping","id":{}}`, protocol.CodeBadID, ""},
		{"id array", `{"op":"ping","id":[1]}`, protocol.CodeBadID, ""},
		{"id bool", `{"op":"ping","id":true}`, protocol.CodeBadID, ""},
		{"id null", `{"op":"ping","id":null}`, protocol.CodeBadID, ""},
		{"id too long", `{"op":"ping","id":"` + long + `"}`, protocol.CodeBadID, ""},
		{"unsubscribe nothing", `{"op":"unsubscribe","id":8}`, protocol.CodeBadTopic, "8"},
		{"unsubscribe bad topic", `{"op":"unsubscribe","topics":["a b"]}`, protocol.CodeBadTopic, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := protoBus(t)
			s := newTestSub(t, b)
			_, err := s.Handle([]byte(tt.frame))
			var pe *protocol.Error
			if !errors.As(err, &pe) || pe.Code != tt.code {
				t.Fatalf("Handle = %v, want a %s protocol.Error", err, tt.code)
			}
			if !strings.Contains(pe.Error(), tt.code) {
				t.Fatalf("Error() = %q does not name the code", pe.Error())
			}
			ws := decodeAll(t, drainAll(s))
			if len(ws) != 1 || ws[0].Type != protocol.TypeError || ws[0].Code != tt.code || ws[0].Message == "" {
				t.Fatalf("queued %+v, want one %s error message", ws, tt.code)
			}
			if string(ws[0].ID) != tt.id {
				t.Fatalf("error id %s, want %q", ws[0].ID, tt.id)
			}
			if s.Err() != nil {
				t.Fatalf("one bad message closed the subscriber: %v", s.Err())
			}
			checkNoGroups(t, b)
		})
	}
}

func TestHandleOK(t *testing.T) {
	t.Parallel()
	id64 := `"` + strings.Repeat("y", 64) + `"`
	tests := []struct {
		name     string
		frame    string
		types    []string
		id       string
		interval time.Duration // of topic a's group, -1 for none
	}{
		{"ping number id", `{"op":"ping","id":3}`, []string{protocol.TypePong}, "3", -1},
		{"ping string id", `{"op":"ping","id":"x"}`, []string{protocol.TypePong}, `"x"`, -1},
		{"ping 64-byte id", `{"op":"ping","id":` + id64 + `}`, []string{protocol.TypePong}, id64, -1},
		{"ping no id", ` {"op":"ping"} `, []string{protocol.TypePong}, "", -1},
		{"default throttle", `{"op":"subscribe","id":1,"topics":["a"]}`, []string{protocol.TypeAck, protocol.TypeSnapshot}, "1", 100 * time.Millisecond},
		{"throttle quantized up", `{"op":"subscribe","topics":["a"],"throttle_ms":15}`, []string{protocol.TypeAck, protocol.TypeSnapshot}, "", 20 * time.Millisecond},
		{"throttle 0", `{"op":"subscribe","topics":["a"],"throttle_ms":0}`, []string{protocol.TypeAck, protocol.TypeSnapshot}, "", 0},
		{"null throttle is default", `{"op":"subscribe","topics":["a"],"throttle_ms":null}`, []string{protocol.TypeAck, protocol.TypeSnapshot}, "", 100 * time.Millisecond},
		{"duplicate topics", `{"op":"subscribe","topics":["a","a","b"]}`, []string{protocol.TypeAck, protocol.TypeSnapshot, protocol.TypeSnapshot}, "", 100 * time.Millisecond},
		{"unknown fields ignored", `{"op":"ping","x":[1,{}]}`, []string{protocol.TypePong}, "", -1},
		{"unsubscribe not subscribed", `{"op":"unsubscribe","id":2,"topics":["a","z*"]}`, []string{protocol.TypeAck}, "2", -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := protoBus(t)
			s := newTestSub(t, b)
			res := mustHandle(t, s, tt.frame)
			if string(res.ID) != tt.id {
				t.Fatalf("Result.ID %s, want %s", res.ID, tt.id)
			}
			ws := decodeAll(t, drainAll(s))
			var types []string
			for _, w := range ws {
				types = append(types, w.Type)
			}
			if !slices.Equal(types, tt.types) {
				t.Fatalf("queued %v, want %v", types, tt.types)
			}
			if string(ws[0].ID) != tt.id {
				t.Fatalf("answer id %s, want %s", ws[0].ID, tt.id)
			}
			g := groupsOf(b, "a")
			if tt.interval < 0 {
				if len(g) != 0 {
					t.Fatalf("groups %v, want none", g)
				}
				return
			}
			if len(g) != 1 || g[tt.interval] == nil {
				t.Fatalf("groups %v, want one of %v", g, tt.interval)
			}
		})
	}
}

// TestHandlePartial: a subscribe with some bad topics subscribes the good
// ones, answers the others with errors and spends the budget once.
func TestHandlePartial(t *testing.T) {
	t.Parallel()
	b := protoBus(t)
	s := newTestSub(t, b)
	res, err := s.Handle([]byte(`{"op":"subscribe","id":1,"topics":["a","nope","a b"],"throttle_ms":0}`))
	if err != nil {
		t.Fatalf("Handle = %v, want nil: a topic was subscribed", err)
	}
	var codes []string
	for _, e := range res.Errors {
		codes = append(codes, e.Code)
	}
	if !slices.Equal(res.Topics, []string{"a", "nope"}) || !slices.Equal(codes, []string{protocol.CodeBadTopic}) {
		t.Fatalf("Result %+v", res)
	}
	var got []string
	for _, w := range decodeAll(t, drainAll(s)) {
		got = append(got, w.Type+" "+w.Code)
	}
	want := []string{"ack ", "error bad_topic", "snapshot "} // "nope" has no tick yet: no snapshot
	if !slices.Equal(got, want) {
		t.Fatalf("queued %q, want %q", got, want)
	}
	s.subMu.Lock()
	level := s.errLevel
	s.subMu.Unlock()
	if level != 1 {
		t.Fatalf("error budget spent %v, want 1", level)
	}
}

// TestTopicLimit: the per-connection limit counts the topics held.
func TestTopicLimit(t *testing.T) {
	t.Parallel()
	b := protoBus(t)
	s := newTestSub(t, b)
	mustHandle(t, s, `{"op":"subscribe","topics":["a","b","c"]}`)
	mustHandle(t, s, `{"op":"subscribe","topics":["a","b"],"throttle_ms":0}`) // resubscribe: not more
	if _, err := s.Handle([]byte(`{"op":"subscribe","topics":["d"]}`)); err == nil {
		t.Fatal("a fourth topic was accepted")
	}
	mustHandle(t, s, `{"op":"unsubscribe","topics":["c"]}`)
	mustHandle(t, s, `{"op":"subscribe","topics":["d"]}`)
}

func TestErrorBudget(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		step    time.Duration // clock advance per bad message
		n       int
		closed  bool
		atIndex int // first message after which it is closed
	}{
		{"burst of MaxProtocolErrors is forgiven", 0, MaxProtocolErrors, false, 0},
		{"one more closes", 0, MaxProtocolErrors + 1, true, MaxProtocolErrors},
		{"one per second forever", time.Second, 100, false, 0},
		{"two per second closes eventually", 500 * time.Millisecond, 100, true, 2*MaxProtocolErrors - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var now atomic.Int64
			now.Store(time.Unix(1000, 0).UnixNano())
			b := newTestBus(t, BusConfig{Now: func() time.Time { return time.Unix(0, now.Load()) }})
			s := newTestSub(t, b)
			closedAt := -1
			for i := range tt.n {
				_, _ = s.Handle([]byte(`nope`))
				if s.Err() != nil && closedAt < 0 {
					closedAt = i
				}
				now.Add(int64(tt.step))
			}
			if (closedAt >= 0) != tt.closed {
				t.Fatalf("closed after message %d, want closed %v", closedAt, tt.closed)
			}
			if tt.closed {
				if closedAt != tt.atIndex {
					t.Fatalf("closed after message %d, want %d", closedAt, tt.atIndex)
				}
				if s.Err() != protocol.DisconnectPolicy {
					t.Fatalf("Err() = %v, want protocol.DisconnectPolicy", s.Err())
				}
			}
		})
	}
}

func TestRefuse(t *testing.T) {
	t.Parallel()
	b := newTestBus(t, BusConfig{})
	s := newTestSub(t, b)
	e := s.Refuse(json.RawMessage(`9`), protocol.CodeFrameTooLarge, "frame of 70000 bytes: at most 65536")
	if e.Code != protocol.CodeFrameTooLarge || string(e.ID) != "9" {
		t.Fatalf("Refuse = %+v", e)
	}
	ws := decodeAll(t, drainAll(s))
	if len(ws) != 1 || ws[0].Code != protocol.CodeFrameTooLarge || string(ws[0].ID) != "9" || ws[0].Message != e.Message {
		t.Fatalf("queued %+v", ws)
	}
}

// fuzzSeeds are client messages for FuzzHandle.
var fuzzSeeds = []string{
	``, `{}`, `null`, `[]`, `{"op":"ping","id":1}`, `{"op":"ping","id":"abc"}`, `{"op":"ping","id":{}}`,
	`{"op":"subscribe","id":1,"topics":["a","b"],"throttle_ms":0}`,
	`{"op":"subscribe","topics":["a*","*"],"throttle_ms":250,"resume":{"a":{"epoch":"e1","seq":1}}}`,
	`{"op":"subscribe","topics":["a"],"resume":{"a":{"epoch":"e0","seq":99}}}`,
	`{"op":"subscribe","topics":["a"],"resume":{"a":{"epoch":"e1","seq":0}}}`,
	`{"op":"subscribe","topics":["nope","a b",""],"throttle_ms":60001}`,
	`{"op":"unsubscribe","topics":["a","a*","*"]}`,
	`{"op":"subscribe","topics":["\u0000"],"id":"\u2028"}`,
	"{\"op\":\"\xff\"}", `{"op":"x","id":1e999}`, `{"throttle_ms":-9223372036854775808,"op":"subscribe","topics":["a"]}`,
}

// FuzzHandle: no input panics, every queued message is valid JSON of a
// known type, and the subscriber's memberships stay consistent with the
// topics' groups.
func FuzzHandle(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	b := newTestBus(f, BusConfig{MaxTopicsPerSubscriber: 5})
	for _, name := range []string{"a", "a.1", "b"} {
		mustPublish(f, b, priceTick(name, baseTS, 1, 1))
	}
	known := map[string]bool{protocol.TypeAck: true, protocol.TypeSnapshot: true, protocol.TypeUpdate: true, protocol.TypeReset: true, protocol.TypePong: true, protocol.TypeError: true}
	f.Fuzz(func(t *testing.T, frame []byte) {
		s, err := b.NewSubscriber("fuzz")
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close(nil)
		for range 2 { // twice: resubscribe and budget paths
			res, err := s.Handle(frame)
			if err != nil {
				var pe *protocol.Error
				if !errors.As(err, &pe) || pe.Code == "" {
					t.Fatalf("Handle error %v is not a protocol.Error", err)
				}
			}
			for _, e := range res.Errors {
				if e.Code == "" {
					t.Fatalf("Result error without code: %+v", e)
				}
			}
		}
		mustPublish(t, b, priceTick("a", baseTS, 2, 1))
		for _, m := range drainAll(s) {
			if !json.Valid(m.JSON) {
				t.Fatalf("invalid JSON queued for %q: %q", frame, m.JSON)
			}
			if w := decodeMsg(t, m); !known[w.Type] {
				t.Fatalf("unknown message type in %s", m.JSON)
			}
		}
		s.subMu.Lock()
		members := make([]*membership, 0, len(s.members))
		for name, m := range s.members {
			if m.topic.name != name || m.sub != s {
				t.Fatalf("membership %s points at %s", name, m.topic.name)
			}
			members = append(members, m)
		}
		s.subMu.Unlock()
		for _, m := range members {
			tp := m.topic
			tp.mu.Lock()
			g := tp.groups[m.group.interval]
			ok := g == m.group && (m.join != nil || (m.index >= 0 && m.index < len(g.members) && g.members[m.index] == m))
			tp.mu.Unlock()
			if !ok {
				t.Fatalf("membership of %s not in its group", tp.name)
			}
		}
		s.Close(nil)
		checkNoGroups(t, b)
	})
}

func TestQuantize(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want time.Duration }{
		{0, 0}, {-time.Second, 0}, {time.Millisecond, 10 * time.Millisecond}, {10 * time.Millisecond, 10 * time.Millisecond},
		{11 * time.Millisecond, 20 * time.Millisecond}, {time.Minute, time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.in.String(), func(t *testing.T) {
			t.Parallel()
			if got := protocol.Quantize(tt.in); got != tt.want {
				t.Errorf("protocol.Quantize(%v) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestPatternSyntax(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in string
		ok bool
	}{
		{"a", true}, {"*", true}, {"a*", true}, {"a.b:c/d-e_f*", true}, {"", false}, {"**", false}, {"a*b", false},
		{"a b*", false}, {strings.Repeat("a", 128), true}, {strings.Repeat("a", 129), false},
		{strings.Repeat("a", 127) + "*", true}, {strings.Repeat("a", 128) + "*", false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%.12q", tt.in), func(t *testing.T) {
			t.Parallel()
			if got := protocol.ValidSub(tt.in); got != tt.ok {
				t.Errorf("protocol.ValidSub(%q) = %v, want %v", tt.in, got, tt.ok)
			}
		})
	}
}
