package server

import (
	"encoding/json"
	"time"

	"github.com/tickstream/tickstream/stream/protocol"
)

// CursorShare shares the cursor logs of reference-form SSE streams
// (@stream.event ids) between the nodes of a cluster, so that such an id
// resolves on any node (Config.CursorShare; stream/cluster keeps them in a
// NATS KV bucket). A node puts a stream's log when the stream ends and,
// while it runs, with a write at most every cursorSharePeriod; a node that
// does not know a stream gets it. What a node wrote after its last put (a
// crash) does not resolve elsewhere: that reconnect starts afresh
// (bad_resume), as an expired reference does.
type CursorShare interface {
	// Put stores a stream's log. It must not wait for the network: the
	// SSE writer calls it.
	Put(stream string, data []byte)
	// Get returns a stream's log as last put, if any.
	Get(stream string) ([]byte, bool)
}

// cursorSharePeriod is how often a live reference-form stream's log is
// put; maxSharedUndo bounds the changes a put carries (the newest), so a
// put stays well under NATS's 1 MiB message limit.
const (
	cursorSharePeriod = time.Second
	maxSharedUndo     = 4096
)

// sharedLog is a cursorLog as put: positions after event Event, and the
// changes of the events after Covered.
type sharedLog struct {
	Pos     []sharedPos  `json:"p"`
	Event   uint64       `json:"e"`
	Covered uint64       `json:"c"`
	Undo    []sharedUndo `json:"u,omitempty"`
}

type sharedPos struct {
	Epoch string `json:"e"`
	Topic string `json:"t"`
	Seq   uint64 `json:"s"`
}

type sharedUndo struct {
	Event     uint64 `json:"n"`
	Topic     string `json:"t"`
	PrevEpoch string `json:"e,omitempty"`
	PrevSeq   uint64 `json:"s,omitempty"`
	Had       bool   `json:"h,omitempty"`
}

// sharedLocked encodes l for a put. Called with l.mu held.
func (l *cursorLog) sharedLocked() []byte {
	sl := sharedLog{Event: l.event, Covered: l.covered, Pos: make([]sharedPos, len(l.pos))}
	for i, p := range l.pos {
		sl.Pos[i] = sharedPos{p.Epoch, p.Topic, p.Seq}
	}
	n := len(l.undo)
	keep := min(n, maxSharedUndo)
	for k := n - keep; k < n; k++ {
		u := l.undo[(l.undoHead+k)%n]
		sl.Undo = append(sl.Undo, sharedUndo{u.event, u.topic, u.prev.Epoch, u.prev.Seq, u.had})
	}
	if keep < n { // the older changes stay behind: so do their events
		sl.Covered = max(sl.Covered, l.undo[(l.undoHead+n-keep-1)%n].event)
	}
	b, _ := json.Marshal(sl)
	return b
}

// maybeShareLocked puts l if it is due. Called with l.mu held.
func (l *cursorLog) maybeShareLocked() {
	if l.share == nil || !l.ref {
		return
	}
	if now := time.Now(); now.Sub(l.sharedAt) >= cursorSharePeriod {
		l.sharedAt = now
		l.share.Put(l.stream, l.sharedLocked())
	}
}

// sharedCursorLog rebuilds an ended reference-form log from a put.
func sharedCursorLog(stream string, data []byte) (*cursorLog, bool) {
	var sl sharedLog
	if err := json.Unmarshal(data, &sl); err != nil {
		return nil, false
	}
	l := &cursorLog{stream: stream, event: sl.Event, covered: sl.Covered, ref: true}
	for _, p := range sl.Pos {
		l.pos = append(l.pos, protocol.CursorPos{Epoch: p.Epoch, Topic: p.Topic, Seq: p.Seq})
	}
	for _, u := range sl.Undo {
		l.undo = append(l.undo, cursorUndo{event: u.Event, topic: u.Topic, prev: protocol.Cursor{Epoch: u.PrevEpoch, Seq: u.PrevSeq}, had: u.Had})
	}
	return l, true
}
