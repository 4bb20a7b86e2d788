package sim

import (
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tickstream/tickstream/feeds"
)

func TestHistoryOptionYAML(t *testing.T) {
	var node yaml.Node
	if err := yaml.Unmarshal([]byte(`{history: 90m, history_interval: 5s, symbols: [X]}`), &node); err != nil {
		t.Fatal(err)
	}
	src, err := New(feeds.Config{Name: "s", Type: "sim", Options: *node.Content[0]})
	if err != nil {
		t.Fatal(err)
	}
	s := src.(*Source)
	if s.opts.History != 90*time.Minute || s.opts.HistoryInterval != 5*time.Second {
		t.Fatalf("options %+v", s.opts)
	}
}
