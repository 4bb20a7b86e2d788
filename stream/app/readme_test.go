package app_test

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/tickstream/tickstream/stream/app"
)

// The README's settings table is the user's reference: every setting must
// be in it, with its flag and environment variable.
func TestREADMEListsEverySetting(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	st := reflect.TypeFor[app.Settings]()
	for i := range st.NumField() {
		key := st.Field(i).Tag.Get("yaml")
		def := st.Field(i).Tag.Get("default")
		if st.Field(i).Tag.Get("flag") == "-" {
			continue
		}
		row := "| `" + key + "` | `--" + strings.ReplaceAll(key, "_", "-") + "` | `TICKSTREAM_" + strings.ToUpper(key) + "` | `" + def + "` |"
		if !strings.Contains(string(readme), row) {
			t.Errorf("README settings table lacks the row starting %s", row)
		}
	}
}
