package server

import (
	"errors"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/tickstream/tickstream/stream/protocol"
)

// cursorLog is one SSE stream's positions: every topic's (epoch, seq)
// after the last event written. While the inline cursor fits in
// protocol.MaxInlineCursor bytes the stream's ids carry it; past that the
// log switches to reference ids (@stream.event) and records, for the
// events that follow, how each one changed the positions, so that the
// positions after any recent event can be rebuilt by undoing the later
// changes. Bytes written but not yet read by the client are bounded by
// the socket buffers, so a bounded record is enough.
type cursorLog struct {
	stream string

	mu       sync.Mutex
	pos      []protocol.CursorPos // sorted by epoch, topic
	event    uint64               // events written so far
	last     int                  // index in pos of the last event's topic (a hint)
	ref      bool                 // ids are references from now on
	covered  uint64               // positions after event ≥ covered can be rebuilt
	undo     []cursorUndo         // ring, oldest at head once full
	undoHead int
	endedAt  time.Time
	share    CursorShare // nil: this node's own
	sharedAt time.Time   // of the last put
}

// cursorUndo is how one event changed one topic's position.
type cursorUndo struct {
	event uint64
	topic string
	prev  protocol.Cursor
	had   bool // the topic had a position before
}

// maxCursorUndo bounds a reference-form stream's record of changes (about
// 56 bytes each, grown as events are written: at most about 900 KiB for a
// stream of more than ~25 topics). It covers the events a socket's send
// buffer holds and those written before the server notices a dead client.
const maxCursorUndo = 16384

// advance records one written event carrying topic at (epoch, seq), or no
// position when topic or epoch is empty. It returns the event's number,
// whether the positions changed, and whether ids are now references.
func (l *cursorLog) advance(topic, epoch string, seq uint64) (n uint64, changed, ref bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, changed = l.advanceLocked(topic, epoch, seq)
	return n, changed, l.ref
}

// nextID advances the log as advance does and returns the event's id in
// id's storage: a reference once ids are references, else the inline
// cursor, encoded again only when a position changed since id was made
// (*stale). One lock per event: an SSE stream calls it for every event
// it writes.
func (l *cursorLog) nextID(id []byte, stale *bool, topic, epoch string, seq uint64) []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, changed := l.advanceLocked(topic, epoch, seq)
	*stale = *stale || changed
	switch {
	case l.ref:
		return protocol.AppendCursorRef(id[:0], l.stream, n)
	case *stale:
		*stale = false
		return protocol.AppendCursor(id[:0], l.pos)
	}
	return id
}

func (l *cursorLog) advanceLocked(topic, epoch string, seq uint64) (n uint64, changed bool) {
	l.event++
	if topic != "" && epoch != "" {
		changed = l.setLocked(topic, epoch, seq)
		if !l.ref && changed && inlineLen(l.pos) > protocol.MaxInlineCursor {
			l.ref, l.covered = true, l.event
		}
	}
	l.maybeShareLocked()
	return l.event, changed
}

func inlineLen(pos []protocol.CursorPos) int {
	n, epoch := 0, ""
	for _, p := range pos {
		if p.Epoch != epoch {
			n += len(p.Epoch) + 1
			epoch = p.Epoch
		}
		n += len(p.Topic) + 22
	}
	return n
}

// setLocked moves topic to (epoch, seq); a new epoch replaces the old
// position.
func (l *cursorLog) setLocked(topic, epoch string, seq uint64) bool {
	i := l.last
	// Most events are of the topic of the event before (one topic per
	// stream, or an update run): skip the search then.
	if i >= len(l.pos) || l.pos[i].Topic != topic || l.pos[i].Epoch != epoch {
		i = l.find(epoch, topic)
	}
	l.last = i
	if i < len(l.pos) && l.pos[i].Epoch == epoch && l.pos[i].Topic == topic {
		if l.pos[i].Seq == seq {
			return false
		}
		l.record(topic, protocol.Cursor{Epoch: epoch, Seq: l.pos[i].Seq}, true)
		l.pos[i].Seq = seq
		return true
	}
	prev, had := protocol.Cursor{}, false
	for j, p := range l.pos {
		if p.Topic == topic {
			prev, had = protocol.Cursor{Epoch: p.Epoch, Seq: p.Seq}, true
			l.pos = append(l.pos[:j], l.pos[j+1:]...)
			if j < i {
				i--
			}
			break
		}
	}
	l.record(topic, prev, had)
	l.pos = slices.Insert(l.pos, i, protocol.CursorPos{Epoch: epoch, Topic: topic, Seq: seq})
	l.last = i
	return true
}

func (l *cursorLog) find(epoch, topic string) int {
	return sort.Search(len(l.pos), func(i int) bool {
		p := l.pos[i]
		return p.Epoch > epoch || (p.Epoch == epoch && p.Topic >= topic)
	})
}

func (l *cursorLog) record(topic string, prev protocol.Cursor, had bool) {
	if !l.ref {
		return
	}
	u := cursorUndo{event: l.event, topic: topic, prev: prev, had: had}
	if len(l.undo) < maxCursorUndo {
		l.undo = append(l.undo, u)
		return
	}
	l.covered = max(l.covered, l.undo[l.undoHead].event)
	l.undo[l.undoHead] = u
	l.undoHead = (l.undoHead + 1) % len(l.undo)
}

// appendInline appends the inline cursor of the current positions.
func (l *cursorLog) appendInline(b []byte) []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return protocol.AppendCursor(b, l.pos)
}

var errCursorGone = errors.New("server: cursor no longer resolvable")

// at returns the positions after event n.
func (l *cursorLog) at(n uint64) (map[string]protocol.Cursor, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.ref || n < l.covered || n > l.event {
		return nil, errCursorGone
	}
	out := make(map[string]protocol.Cursor, len(l.pos))
	for _, p := range l.pos {
		out[p.Topic] = protocol.Cursor{Epoch: p.Epoch, Seq: p.Seq}
	}
	// Undo the changes of events after n, newest first.
	for k := len(l.undo) - 1; k >= 0; k-- {
		u := l.undo[(l.undoHead+k)%len(l.undo)]
		if u.event <= n {
			break
		}
		if u.had {
			out[u.topic] = u.prev
		} else {
			delete(out, u.topic)
		}
	}
	return out, nil
}

// cursorStore finds the cursor logs of reference-form streams, live or
// recently ended, so that a reconnect resolves its Last-Event-ID. With a
// CursorShare, the logs are also put there and a stream this node does
// not know is looked up there (a cluster).
type cursorStore struct {
	share     CursorShare
	mu        sync.Mutex
	logs      map[string]*cursorLog
	endedLogs []*cursorLog // oldest first
	ttl       time.Duration
	keep      int
	now       func() time.Time
}

// Ended reference-form streams stay resolvable this long, and at most
// this many are kept.
const (
	cursorTTL      = 2 * time.Minute
	maxEndedCursor = 256
)

func newCursorStore() *cursorStore {
	return &cursorStore{logs: make(map[string]*cursorLog), ttl: cursorTTL, keep: maxEndedCursor, now: time.Now}
}

func (cs *cursorStore) newLog(stream string) *cursorLog {
	l := &cursorLog{stream: stream, share: cs.share}
	cs.mu.Lock()
	cs.logs[stream] = l
	cs.mu.Unlock()
	return l
}

// ended keeps l resolvable for a while if it uses references, and forgets
// it otherwise; expired logs are dropped.
func (cs *cursorStore) ended(l *cursorLog) {
	l.mu.Lock()
	ref := l.ref
	if ref && cs.share != nil {
		cs.share.Put(l.stream, l.sharedLocked())
	}
	l.mu.Unlock()
	now := cs.now()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if !ref {
		delete(cs.logs, l.stream)
	} else {
		l.endedAt = now
		cs.endedLogs = append(cs.endedLogs, l)
	}
	drop := 0
	for drop < len(cs.endedLogs) && (len(cs.endedLogs)-drop > cs.keep || now.Sub(cs.endedLogs[drop].endedAt) > cs.ttl) {
		delete(cs.logs, cs.endedLogs[drop].stream)
		drop++
	}
	cs.endedLogs = append(cs.endedLogs[:0], cs.endedLogs[drop:]...)
}

func (cs *cursorStore) resolve(stream string, n uint64) (map[string]protocol.Cursor, error) {
	cs.mu.Lock()
	l := cs.logs[stream]
	cs.mu.Unlock()
	if l == nil && cs.share != nil {
		if data, ok := cs.share.Get(stream); ok {
			l, _ = sharedCursorLog(stream, data)
		}
	}
	if l == nil {
		return nil, errCursorGone
	}
	return l.at(n)
}
