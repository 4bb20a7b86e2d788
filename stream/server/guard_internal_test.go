package server

import (
	"fmt"
	"testing"
)

// TestClientsMapBounded: the per-address map never holds more than its
// bound; addresses with open streams are kept.
func TestClientsMapBounded(t *testing.T) {
	cs := newClients(1, 5)
	cs.maxSize = 10
	if !cs.add("keep", 3, 100) {
		t.Fatal("add refused")
	}
	for i := range 1000 {
		cs.allow(fmt.Sprintf("10.0.%d.%d", i/256, i%256))
		if n := len(cs.m); n > cs.maxSize {
			t.Fatalf("%d addresses tracked, bound %d", n, cs.maxSize)
		}
	}
	if n, total := cs.count("keep"); n != 1 || total != 1 {
		t.Fatalf("the address with an open stream was forgotten: %d, %d", n, total)
	}
	cs.done("keep")
	if _, total := cs.count("keep"); total != 0 {
		t.Fatalf("total %d after done", total)
	}
}
