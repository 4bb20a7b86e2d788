package tick

import (
	"bytes"
	"errors"
	"strconv"
	"testing"
)

// A line with thousands of keys is refused as too many fields, before the
// per-field work (which is quadratic in the number of fields).
func TestParseTickRefusesManyKeys(t *testing.T) {
	for _, tc := range []struct{ name, prefix, suffix string }{
		{"top level", `{"topic":"a"`, `}`},
		{"in fields", `{"topic":"a","fields":{"x":1`, `}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			b.WriteString(tc.prefix)
			for i := range 20000 {
				b.WriteString(`,"k` + strconv.Itoa(i) + `":1`)
			}
			b.WriteString(tc.suffix)
			if _, err := ParseTick(b.Bytes()); !errors.Is(err, ErrTooManyField) {
				t.Fatalf("err = %v, want ErrTooManyField", err)
			}
		})
	}
}
