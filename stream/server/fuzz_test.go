package server_test

import (
	"bytes"
	"testing"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream/server"
)

// FuzzParsePublish runs the publish parser (what POST /api/publish uses)
// over arbitrary bodies, JSON arrays and NDJSON: no panic, lines numbered
// from 1 and increasing, and every tick it accepts is valid.
func FuzzParsePublish(f *testing.F) {
	f.Add([]byte(`[{"topic":"BTC-USD","ts":1700000000000,"price":"61837.63","size":2}]`))
	f.Add([]byte("{\"topic\":\"A\",\"price\":1}\n\n{\"topic\":\"B\",\"price\":2,\"fields\":{\"oi\":7}}\n"))
	f.Add([]byte(`[1,"x",null,{"topic":"x y"},{"topic":"Q","price":"NaN"}]`))
	f.Add([]byte("[\n"))
	f.Add([]byte("{\"topic\":\"A\"\n}"))
	f.Add([]byte(" \r\n\t"))
	f.Fuzz(func(t *testing.T, body []byte) {
		last := 0
		err := server.ParsePublish(body, 4096, func(line int, raw []byte, err error) {
			if line < 1 || line <= last {
				t.Fatalf("line %d after %d", line, last)
			}
			last = line
			if err != nil {
				return
			}
			tk, err := feeds.ParseTick(raw)
			if err == nil {
				if verr := tk.Validate(); verr != nil {
					t.Fatalf("accepted an invalid tick %+v: %v", tk, verr)
				}
			}
		})
		if err != nil && !bytes.HasPrefix(bytes.TrimSpace(body), []byte("[")) {
			t.Fatalf("a body not starting with [ failed as a whole: %v", err)
		}
	})
}
