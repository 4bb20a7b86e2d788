package tick

import (
	"bytes"
	"encoding/json"
	"errors"
)

// parseTickOld is ParseTick as it was before the fastjson parser (issue
// #12), kept to check that the new one accepts and refuses the same
// ticks (FuzzParseTickSameAsOld) and to benchmark against it.
func parseTickOld(data []byte) (Tick, error) {
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&raw); err != nil {
		return Tick{}, tickErr(ErrBadJSON, "%v", err)
	}
	if raw == nil {
		return Tick{}, tickErr(ErrBadJSON, "want a JSON object")
	}
	if len(raw) > MaxFields+5 { // + topic, ts, seq, epoch, fields
		return Tick{}, tickErr(ErrTooManyField, "%d keys, at most %d fields", len(raw), MaxFields)
	}
	var t Tick
	if v, ok := raw["topic"]; ok {
		if err := json.Unmarshal(v, &t.Topic); err != nil {
			return Tick{}, tickErr(ErrBadTopic, "topic must be a string")
		}
	} else {
		return Tick{}, tickErr(ErrBadTopic, "missing \"topic\"")
	}
	if v, ok := raw["ts"]; ok && string(v) != "null" {
		n, err := parseNumberOld(v)
		ms, fits := n.Trunc()
		if err != nil || n.Sign() < 0 || !fits || ms > 1<<53 {
			return Tick{}, tickErr(ErrBadField, "ts must be Unix milliseconds, got %s", v)
		}
		t.TS = ms
	}
	for k, v := range raw {
		switch k {
		case "topic", "ts", "seq", "epoch":
			continue
		case "fields":
			var custom map[string]json.RawMessage
			if err := json.Unmarshal(v, &custom); err != nil {
				return Tick{}, tickErr(ErrBadField, "fields must be an object of numbers")
			}
			if len(custom)+len(raw) > MaxFields+5 {
				return Tick{}, tickErr(ErrTooManyField, "%d custom fields, at most %d fields", len(custom), MaxFields)
			}
			for name, fv := range custom {
				if isMarketField(name) {
					return Tick{}, tickErr(ErrBadField, "market field %q belongs at the top level, not in fields", name)
				}
				if err := t.addParsedOld(name, fv); err != nil {
					return Tick{}, err
				}
			}
		default:
			if err := t.addParsedOld(k, v); err != nil {
				return Tick{}, err
			}
		}
	}
	t.sortFields()
	if err := t.Validate(); err != nil {
		return Tick{}, err
	}
	return t, nil
}

func (t *Tick) addParsedOld(name string, v json.RawMessage) error {
	f, err := parseNumberOld(v)
	if err != nil {
		if errors.Is(err, ErrNonFinite) {
			return tickErr(ErrNonFinite, "field %q", name)
		}
		return tickErr(ErrBadField, "field %q: %v", name, err)
	}
	if _, dup := t.Get(name); dup {
		return tickErr(ErrBadField, "field %q given twice", name)
	}
	t.Fields = append(t.Fields, Field{Name: name, Value: f})
	return nil
}

func parseNumberOld(v json.RawMessage) (Num, error) {
	s := bytes.TrimSpace(v)
	if len(s) > 0 && s[0] == '"' {
		var str string
		if err := json.Unmarshal(s, &str); err != nil {
			return Num{}, errNotNumber
		}
		s = bytes.TrimSpace([]byte(str))
	} else if len(s) == 0 || (s[0] != '-' && (s[0] < '0' || s[0] > '9')) {
		return Num{}, errNotNumber
	}
	return parseNum(s)
}
