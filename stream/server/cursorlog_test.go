package server

import (
	"cmp"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tickstream/tickstream/stream/protocol"
)

// at(n) rebuilds exactly the positions after event n, for every n the
// record still covers, through topic moves, new topics and new epochs.
func TestCursorLogRebuildsPositions(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	l := &cursorLog{stream: "s"}
	want := map[uint64]map[string]protocol.Cursor{}
	cur := map[string]protocol.Cursor{}
	epochs := []string{"e1", "e2"}
	last := ""
	for range 3 * maxCursorUndo {
		topic := fmt.Sprintf("topic.%03d", rng.IntN(300))
		if last != "" && rng.IntN(2) == 0 {
			topic = last // runs of one topic: the log's hint
		}
		last = topic
		epoch := epochs[0]
		if rng.IntN(50) == 0 {
			epoch = epochs[1]
		}
		seq := cur[topic].Seq + 1
		if rng.IntN(10) == 0 {
			topic = "" // an ack or status: no position
		}
		n, _, _ := l.advance(topic, epoch, seq)
		if !slices.IsSortedFunc(l.pos, func(a, b protocol.CursorPos) int {
			return cmp.Or(strings.Compare(a.Epoch, b.Epoch), strings.Compare(a.Topic, b.Topic))
		}) {
			t.Fatalf("event %d: positions out of order: %v", n, l.pos)
		}
		if topic != "" {
			cur[topic] = protocol.Cursor{Epoch: epoch, Seq: seq}
		}
		want[n] = maps.Clone(cur)
	}
	if !l.ref {
		t.Fatal("300 topics did not switch the log to references")
	}
	checked := 0
	for n, w := range want {
		// at walks the record back from the newest change: every 8th
		// event and those at both ends keep the test quick under -race.
		if n%8 != 0 && n > l.covered+2 && n+2 < l.event {
			continue
		}
		got, err := l.at(n)
		if n < l.covered {
			if err == nil {
				t.Fatalf("at(%d) below the covered %d resolved", n, l.covered)
			}
			continue
		}
		if err != nil {
			t.Fatalf("at(%d) (covered from %d, now %d): %v", n, l.covered, l.event, err)
		}
		if !maps.Equal(got, w) {
			t.Fatalf("at(%d): positions differ from those after that event", n)
		}
		checked++
	}
	if checked < maxCursorUndo/16 {
		t.Fatalf("only %d events resolvable", checked)
	}
	if _, err := l.at(l.event + 1); err == nil {
		t.Fatal("an event from the future resolved")
	}
}

// Ended streams stay resolvable for the TTL and within the count bound.
func TestCursorStoreBounds(t *testing.T) {
	now := time.Unix(1000, 0)
	cs := newCursorStore()
	cs.now = func() time.Time { return now }
	cs.keep = 3
	var logs []*cursorLog
	for i := range 5 {
		l := cs.newLog(fmt.Sprintf("s%d", i))
		l.ref = true
		logs = append(logs, l)
		cs.ended(l)
	}
	for i, l := range logs {
		_, err := cs.resolve(l.stream, 0)
		if gone := i < 2; gone != (err != nil) {
			t.Errorf("stream %d: resolve err %v, want gone=%v", i, err, gone)
		}
	}
	short := cs.newLog("short") // inline ids: nothing to keep
	cs.ended(short)
	if _, err := cs.resolve("short", 0); err == nil {
		t.Error("an inline-cursor stream was kept after it ended")
	}
	now = now.Add(cursorTTL + time.Second)
	cs.ended(cs.newLog("late"))
	if len(cs.logs) != 0 {
		t.Errorf("%d logs kept past the TTL", len(cs.logs))
	}
}
