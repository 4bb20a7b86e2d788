package server

import (
	"fmt"
	"testing"
	"time"
)

// The window's memory is bounded by producers (least recently active
// forgotten first) and by ids in all (the least recently active
// producer's oldest ids go first).
func TestIdemStoreBounds(t *testing.T) {
	st := newIdemStore(10, 2, 15, time.Minute)
	put := func(p, k string) { st.put(p, &idemEntry{key: k, topic: "T"}) }
	put("a", "1")
	put("b", "1")
	st.get("a", "1") // a is now more recently active than b
	put("c", "1")    // a third producer: b goes
	if st.get("b", "1") != nil || st.get("a", "1") == nil || st.get("c", "1") == nil {
		t.Fatal("want b forgotten, a and c kept")
	}
	for i := range 10 {
		put("c", fmt.Sprint("x", i)) // c holds 10 (its limit); a holds 1
	}
	if st.count != 11 || st.get("c", "1") != nil {
		t.Fatalf("count %d; c's oldest should be gone past its 10", st.count)
	}
	for i := range 5 {
		put("a", fmt.Sprint("y", i)) // 16 in all: the total cap evicts
	}
	if st.count > 15 {
		t.Fatalf("%d ids held, want at most 15", st.count)
	}
	if len(st.byID) != 2 {
		t.Fatalf("%d producers", len(st.byID))
	}
}
