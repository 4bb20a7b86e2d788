package stream

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/tickstream/tickstream/stream/protocol"
)

func TestMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	b := newTestBus(t, BusConfig{Metrics: NewMetrics(reg)})
	sink := b.Sink("sim")
	for range 2 {
		if err := sink.Publish(priceTick("m", baseTS, 1, 1)); err != nil {
			t.Fatal(err)
		}
	}
	_ = sink.Publish(priceTick("bad topic", baseTS, 1, 1))
	s, err := b.NewSubscriber("sse")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(nil)
	throttle := int64(0)
	res, err := s.Subscribe(SubscribeRequest{Topics: []string{"m"}, ThrottleMS: &throttle, Resume: map[string]protocol.Cursor{"m": {Epoch: "e1", Seq: 1}}})
	if err != nil || len(res.Topics) != 1 {
		t.Fatalf("Subscribe = %+v, %v", res, err)
	}
	pending := s.PendingBytes() // ack + the replayed tick 2
	if pending == 0 || s.Session() == "" {
		t.Fatalf("pending %d, session %q", pending, s.Session())
	}
	want := fmt.Sprintf(`
# HELP tickstream_connections Open client connections, by transport.
# TYPE tickstream_connections gauge
tickstream_connections{transport="sse"} 1
# HELP tickstream_lagging_clients Clients currently stepped down for being slow.
# TYPE tickstream_lagging_clients gauge
tickstream_lagging_clients 0
# HELP tickstream_pending_bytes What all client queues hold, batches being written included: encoded bytes plus a fixed overhead per message.
# TYPE tickstream_pending_bytes gauge
tickstream_pending_bytes %d
# HELP tickstream_ticks_refused_total Ticks refused as invalid, by feed.
# TYPE tickstream_ticks_refused_total counter
tickstream_ticks_refused_total{feed="sim"} 1
# HELP tickstream_ticks_total Ticks accepted, by feed.
# TYPE tickstream_ticks_total counter
tickstream_ticks_total{feed="sim"} 2
# HELP tickstream_topics Topics known to the bus.
# TYPE tickstream_topics gauge
tickstream_topics 1
`, pending)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"tickstream_connections", "tickstream_lagging_clients", "tickstream_pending_bytes",
		"tickstream_ticks_refused_total", "tickstream_ticks_total", "tickstream_topics"); err != nil {
		t.Fatal(err)
	}
	b.Metrics().SlowClose()
	if got := testutil.ToFloat64(b.metrics.slowCloses); got != 1 {
		t.Fatalf("slow closes %v", got)
	}
	if got := protocol.DisconnectSlow.Error(); !strings.Contains(got, "1013") || !strings.Contains(got, "too slow") {
		t.Fatalf("protocol.DisconnectSlow.Error() = %q", got)
	}
}
