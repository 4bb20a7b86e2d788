package bench

import (
	"bytes"
	"strconv"
)

// wireMsg is the part of a server message the generator needs. Byte slices
// alias the input line.
type wireMsg struct {
	typ     []byte
	topic   []byte
	seq     uint64
	n       uint64 // agg.n; 0 when absent
	sentUS  int64
	hasSent bool
	ctr     int64
	hasCtr  bool
	lagging bool
}

var (
	keyType    = []byte(`"type":"`)
	keyTopic   = []byte(`"topic":"`)
	keySeq     = []byte(`"seq":`)
	keyData    = []byte(`"data":{`)
	keyAgg     = []byte(`"agg":{`)
	keyN       = []byte(`"n":`)
	keySentUS  = []byte(`"sent_us":`)
	keyCtr     = []byte(`"ctr":`)
	keyLagging = []byte(`"lagging":true`)
)

// parseMsg extracts the fields tickbench uses from one JSON message as the
// servers encode it (compact, no escapes in topics or field names). It is a
// scanner, not a JSON parser: fast enough to keep up with hundreds of
// thousands of messages a second on one core. ok is false when the line
// has no type.
func parseMsg(line []byte) (m wireMsg, ok bool) {
	m.typ, ok = stringAfter(line, keyType)
	if !ok {
		return m, false
	}
	switch string(m.typ) {
	case "update", "snapshot":
	case "status":
		m.lagging = bytes.Contains(line, keyLagging)
		return m, true
	default:
		return m, true
	}
	m.topic, _ = stringAfter(line, keyTopic)
	if v, ok := numberAfter(line, keySeq); ok {
		m.seq = uint64(v)
	}
	rest := line
	if i := bytes.Index(line, keyData); i >= 0 {
		data := line[i+len(keyData):]
		if j := bytes.Index(data, keyAgg); j >= 0 {
			rest = data[j+len(keyAgg):]
			data = data[:j]
		} else {
			rest = nil
		}
		if v, ok := numberAfter(data, keySentUS); ok {
			m.sentUS, m.hasSent = v, true
		}
		if v, ok := numberAfter(data, keyCtr); ok {
			m.ctr, m.hasCtr = v, true
		}
	} else if j := bytes.Index(line, keyAgg); j >= 0 {
		rest = line[j+len(keyAgg):]
	} else {
		rest = nil
	}
	if rest != nil {
		if v, ok := numberAfter(rest, keyN); ok {
			m.n = uint64(v)
		}
	}
	return m, true
}

func stringAfter(b, key []byte) ([]byte, bool) {
	i := bytes.Index(b, key)
	if i < 0 {
		return nil, false
	}
	b = b[i+len(key):]
	j := bytes.IndexByte(b, '"')
	if j < 0 {
		return nil, false
	}
	return b[:j], true
}

// numberAfter reads the JSON number after key as an int64 (a fraction or
// exponent goes through ParseFloat and is truncated).
func numberAfter(b, key []byte) (int64, bool) {
	i := bytes.Index(b, key)
	if i < 0 {
		return 0, false
	}
	b = b[i+len(key):]
	end := 0
	for end < len(b) && end < 32 {
		c := b[end]
		if (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E' {
			end++
			continue
		}
		break
	}
	if end == 0 {
		return 0, false
	}
	if v, err := strconv.ParseInt(string(b[:end]), 10, 64); err == nil {
		return v, true
	}
	f, err := strconv.ParseFloat(string(b[:end]), 64)
	if err != nil {
		return 0, false
	}
	return int64(f), true
}
