package server_test

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/protocol"
	"github.com/tickstream/tickstream/stream/server"
)

// metricWhere sums the samples of name whose label has value.
func (e *env) metricWhere(name, label, value string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatalf("Gather: %v", err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if hasLabel(m, label, value) {
				total += metricValue(mf.GetType(), m)
			}
		}
	}
	return total
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// TestWSDirectWritesCutShortStayWhole: flushers write updates to the
// sockets themselves without blocking; when a slow client's socket takes
// only part of a batch, the connection's writer finishes it before
// anything else. Over a real socket with a small send buffer and a client
// that reads slowly, then fast: every frame arrives whole (the client
// parses every message), every tick is covered once, in seq order, and
// both whole and partial direct writes happened.
func TestWSDirectWritesCutShortStayWhole(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(bc *stream.BusConfig, sc *server.Config) {
		bc.MaxPendingBytes = 1 << 20 // room for the backlog: no step-down needed
		bc.Heartbeat = time.Minute
		sc.WriteTimeout = 30 * time.Second
		sc.SendBufferBytes = 4096
	})
	topics := []string{"P0", "P1", "P2", "P3"}
	for _, tp := range topics {
		e.publish(tp, 1, f("price", 1))
	}
	var slow atomic.Bool
	c := e.dialSlowWS(t, &slow)
	c.expect(protocol.TypeWelcome)
	tr := newSeqTracker()
	subscribeAll(t, c, topics, tr)

	// Some quick ticks first, read at full speed: whole direct writes.
	last := map[string]uint64{}
	publish := func(n int) {
		for i := range n {
			tp := topics[i%len(topics)]
			seq, err := e.bus.Publish("test", bigTick(tp, i))
			if err != nil {
				t.Fatal(err)
			}
			last[tp] = seq
			if i%8 == 7 {
				time.Sleep(time.Millisecond) // separate passes
			}
		}
	}
	read := func() {
		deadline := time.Now().Add(60 * time.Second)
		for {
			behind := false
			for tp, seq := range last {
				behind = behind || tr.last[tp] < seq
			}
			if !behind {
				return
			}
			m := c.next(time.Until(deadline))
			switch m.Type {
			case protocol.TypeUpdate:
				tr.update(t, m)
			case protocol.TypeStatus:
			default:
				t.Fatalf("unexpected %s", m)
			}
		}
	}
	publish(200)
	read()
	// Then the client reads slowly while bursts come: the socket fills,
	// tries are cut short, the writer finishes them. Bounded rounds until
	// a partial write happened (a loaded machine may read fast enough).
	slow.Store(true)
	for round := 0; round < 10 && e.metricWhere("tickstream_direct_writes_total", "result", "partial") == 0; round++ {
		publish(400)
	}
	slow.Store(false)
	read()
	whole := e.metricWhere("tickstream_direct_writes_total", "result", "whole")
	partial := e.metricWhere("tickstream_direct_writes_total", "result", "partial")
	t.Logf("direct writes: whole %v, partial %v, deferred %v", whole, partial,
		e.metricWhere("tickstream_direct_writes_total", "result", "deferred"))
	if whole == 0 || partial == 0 {
		t.Fatalf("direct writes whole %v, partial %v: want both", whole, partial)
	}
	var counts []string
	for _, tp := range topics {
		counts = append(counts, fmt.Sprintf("%s=%d", tp, tr.n[tp]))
	}
	t.Logf("ticks covered: %s", strings.Join(counts, " "))
}
