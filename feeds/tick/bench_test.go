package tick

import "testing"

// benchTick is a tick as cmd/tickbench publishes it (scenario F).
var benchTick = []byte(`{"topic":"bench.T0","price":"61837.63","size":0.5,"fields":{"sent_us":1700000000000000,"ctr":123}}`)

// BenchmarkParseTick compares ParseTick with the encoding/json parser it
// replaced (parseTickOld). Run with -benchmem: the new one allocates only
// the fields slice.
func BenchmarkParseTick(b *testing.B) {
	for _, bc := range []struct {
		name  string
		parse func([]byte) (Tick, error)
	}{
		{"new", ParseTick},
		{"old", parseTickOld},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(benchTick)))
			for b.Loop() {
				if _, err := bc.parse(benchTick); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
