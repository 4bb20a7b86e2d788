package protocol

import (
	"errors"
	"strconv"
	"strings"

	"github.com/tickstream/tickstream/feeds/tick"
)

// An SSE event id is an opaque cursor of every topic's (epoch, seq) that
// the stream has delivered. It takes one of two forms:
//
//	inline:    <epoch>~<topic>=<seq>,<topic>=<seq>!<epoch>~<topic>=<seq>
//	reference: @<stream>.<event>
//
// The inline form carries the positions themselves, so it resolves on any
// node and across restarts; a stream uses it while it fits in
// MaxInlineCursor bytes. Past that (hundreds of topics) the stream
// switches, for the rest of its life, to the reference form: the event
// number of the stream, which the server resolves from the stream's
// cursor log (see the server package). Either way the id stays under
// 1 KiB. Topic names cannot contain ~ = , ! or @, so the inline form
// needs no escaping; stream ids never contain '.', so the reference form
// splits at the last one.

// MaxInlineCursor is the longest inline cursor a stream sends.
const MaxInlineCursor = 512

// CursorPos is one topic's position in an inline cursor.
type CursorPos struct {
	Epoch, Topic string
	Seq          uint64
}

// AppendCursor appends the inline cursor of pos, which must be sorted by
// epoch, then topic.
func AppendCursor(b []byte, pos []CursorPos) []byte {
	for i, p := range pos {
		switch {
		case i == 0:
			b = append(b, p.Epoch...)
			b = append(b, '~')
		case p.Epoch != pos[i-1].Epoch:
			b = append(b, '!')
			b = append(b, p.Epoch...)
			b = append(b, '~')
		default:
			b = append(b, ',')
		}
		b = append(b, p.Topic...)
		b = append(b, '=')
		b = strconv.AppendUint(b, p.Seq, 10)
	}
	return b
}

// AppendCursorRef appends the reference cursor of event n of stream.
func AppendCursorRef(b []byte, stream string, n uint64) []byte {
	b = append(b, '@')
	b = append(b, stream...)
	b = append(b, '.')
	return strconv.AppendUint(b, n, 10)
}

// ParsedCursor is a parsed SSE event id: inline positions, or a reference
// to event Event of stream Stream.
type ParsedCursor struct {
	Positions map[string]Cursor
	Stream    string
	Event     uint64
}

// IsRef reports whether the cursor is a reference that the server must
// resolve.
func (c ParsedCursor) IsRef() bool { return c.Stream != "" }

// ErrBadCursor is returned for an event id that is not a cursor.
var ErrBadCursor = errors.New("protocol: bad cursor")

// ParseCursor reads an SSE event id. An empty id is an empty cursor.
func ParseCursor(id string) (ParsedCursor, error) {
	out := ParsedCursor{Positions: make(map[string]Cursor)}
	if id == "" {
		return out, nil
	}
	if ref, ok := strings.CutPrefix(id, "@"); ok {
		i := strings.LastIndexByte(ref, '.')
		if i <= 0 || len(ref) > 128 {
			return out, ErrBadCursor
		}
		n, err := strconv.ParseUint(ref[i+1:], 10, 64)
		if err != nil || strings.ContainsAny(ref[:i], ".~=,!@") {
			return out, ErrBadCursor
		}
		out.Stream, out.Event = ref[:i], n
		return out, nil
	}
	for _, group := range strings.Split(id, "!") {
		epoch, list, ok := strings.Cut(group, "~")
		if !ok || !ValidEpoch(epoch) {
			return out, ErrBadCursor
		}
		for _, item := range strings.Split(list, ",") {
			topic, seqText, ok := strings.Cut(item, "=")
			seq, err := strconv.ParseUint(seqText, 10, 64)
			if _, dup := out.Positions[topic]; dup || !ok || err != nil || !tick.ValidTopic(topic) {
				return out, ErrBadCursor
			}
			out.Positions[topic] = Cursor{Epoch: epoch, Seq: seq}
		}
	}
	return out, nil
}

// ValidEpoch reports whether e can be an epoch: 1-64 characters of
// [A-Za-z0-9_-], so that it needs no escaping in JSON or a cursor.
func ValidEpoch(e string) bool {
	if len(e) == 0 || len(e) > 64 {
		return false
	}
	for i := 0; i < len(e); i++ {
		c := e[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
