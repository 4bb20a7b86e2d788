package server

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"

	"github.com/tickstream/tickstream/stream/protocol"
)

// memShare is a CursorShare in memory.
type memShare map[string][]byte

func (m memShare) Put(stream string, data []byte) { m[stream] = data }
func (m memShare) Get(stream string) ([]byte, bool) {
	d, ok := m[stream]
	return d, ok
}

// A shared log rebuilds, on another node, exactly the positions after
// every event its put still covers (the newest maxSharedUndo changes),
// and refuses the older ones.
func TestSharedCursorLogRebuildsPositions(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	share := memShare{}
	writer := newCursorStore()
	writer.share = share
	l := writer.newLog("s1")
	want := map[uint64]map[string]protocol.Cursor{}
	cur := map[string]protocol.Cursor{}
	for range 2 * maxSharedUndo {
		topic := fmt.Sprintf("topic.%03d", rng.IntN(100))
		seq := cur[topic].Seq + 1
		n, _, _ := l.advance(topic, "e1", seq)
		cur[topic] = protocol.Cursor{Epoch: "e1", Seq: seq}
		want[n] = maps.Clone(cur)
	}
	l.mu.Lock()
	l.sharedAt = l.sharedAt.AddDate(-1, 0, 0) // due now
	l.mu.Unlock()
	l.advance("topic.000", "e1", cur["topic.000"].Seq+1) // a put while live
	cur["topic.000"] = protocol.Cursor{Epoch: "e1", Seq: cur["topic.000"].Seq + 1}
	want[l.event] = maps.Clone(cur)
	if _, ok := share["s1"]; !ok {
		t.Fatal("a live reference-form log was not put")
	}
	writer.ended(l)

	reader := newCursorStore() // another node
	reader.share = share
	resolved, tried := 0, 0
	for n, w := range want {
		if n%127 != 0 { // each resolve decodes the whole shared log
			continue
		}
		tried++
		got, err := reader.resolve("s1", n)
		if err != nil {
			continue
		}
		if !maps.Equal(got, w) {
			t.Fatalf("event %d resolves to other positions than those after it", n)
		}
		resolved++
	}
	// Of 2·maxSharedUndo+1 events, the newest maxSharedUndo resolve.
	if resolved < tried/3 || resolved > tried*2/3 {
		t.Fatalf("%d of %d events tried resolve from the shared log, want about half", resolved, tried)
	}
	if got, err := reader.resolve("s1", l.event); err != nil || !maps.Equal(got, cur) {
		t.Fatalf("the last event: %v, %v", got, err)
	}
	if _, err := reader.resolve("unknown", 1); err == nil {
		t.Fatal("an unknown stream resolved")
	}
}
