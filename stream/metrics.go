package stream

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the bus's Prometheus metrics. Build them with NewMetrics and
// pass them in BusConfig; the HTTP server adds its own.
type Metrics struct {
	ticksIn        *prometheus.CounterVec
	ticksRefused   *prometheus.CounterVec
	ticksCoalesced prometheus.Counter
	sentMsgs       *prometheus.CounterVec
	sentBytes      *prometheus.CounterVec
	stepDowns      prometheus.Counter
	slowCloses     prometheus.Counter
	latency        prometheus.Histogram
	limited        *prometheus.CounterVec
	evicted        prometheus.Counter
	directWrites   *prometheus.CounterVec
	// direct writes by result: whole, partial (the writer goroutine
	// finishes it), deferred (the socket was busy: the writer writes it)
	directWhole, directPartial, directDeferred prometheus.Counter

	lagging atomicGauge
	// per-transport subscriber counts, read by GaugeFuncs
	conns   *prometheus.GaugeVec
	topics  atomic.Int64
	pending atomic.Pointer[func() float64] // set by the bus that uses these metrics
}

type atomicGauge struct{ v atomic.Int64 }

func (g *atomicGauge) Add(d int64) { g.v.Add(d) }

// NewMetrics creates the bus metrics and registers them with reg (nil
// means: do not register, as in tests that do not look at metrics).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ticksIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tickstream_ticks_total", Help: "Ticks accepted, by feed.",
		}, []string{"feed"}),
		ticksRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tickstream_ticks_refused_total", Help: "Ticks refused as invalid, by feed.",
		}, []string{"feed"}),
		ticksCoalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tickstream_ticks_coalesced_total", Help: "Ticks folded into another tick's update instead of getting their own (throttling and slow-client merging).",
		}),
		sentMsgs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tickstream_messages_sent_total", Help: "Messages written to clients, by transport.",
		}, []string{"transport"}),
		sentBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tickstream_sent_bytes_total", Help: "Message bytes written to clients, by transport.",
		}, []string{"transport"}),
		stepDowns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tickstream_lagging_stepdowns_total", Help: "Times a slow client was stepped down to a wider throttle.",
		}),
		slowCloses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tickstream_slow_closes_total", Help: "Clients closed for being too slow (stuck past the write deadline or over the hard queue bound).",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tickstream_delivery_latency_seconds",
			Help:    "Time from accepting a tick to writing the update that carries it, per message.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tickstream_limited_total", Help: "Requests, connections, messages or ticks refused by a limit, by limit.",
		}, []string{"limit"}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tickstream_topics_evicted_total", Help: "Topics evicted after topic_idle_evict_ms with no tick and no subscriber.",
		}),
		directWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tickstream_direct_writes_total", Help: "Batches a flusher wrote to a socket itself, without blocking, by result: whole, partial (the connection's writer finished it) or deferred (the socket was busy: the writer wrote it).",
		}, []string{"result"}),
		conns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tickstream_connections", Help: "Open client connections, by transport.",
		}, []string{"transport"}),
	}
	m.directWhole = m.directWrites.WithLabelValues("whole")
	m.directPartial = m.directWrites.WithLabelValues("partial")
	m.directDeferred = m.directWrites.WithLabelValues("deferred")
	if reg != nil {
		reg.MustRegister(m.ticksIn, m.ticksRefused, m.ticksCoalesced, m.sentMsgs, m.sentBytes,
			m.stepDowns, m.slowCloses, m.latency, m.conns, m.limited, m.evicted, m.directWrites,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "tickstream_lagging_clients", Help: "Clients currently stepped down for being slow.",
			}, func() float64 { return float64(m.lagging.v.Load()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "tickstream_topics", Help: "Topics known to the bus.",
			}, func() float64 { return float64(m.topics.Load()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "tickstream_pending_bytes", Help: "What all client queues hold, batches being written included: encoded bytes plus a fixed overhead per message.",
			}, func() float64 {
				if f := m.pending.Load(); f != nil {
					return (*f)()
				}
				return 0
			}),
		)
	}
	return m
}

// Limited counts one refusal by the named limit (tickstream_limited_total).
func (m *Metrics) Limited(limit string) { m.limited.WithLabelValues(limit).Inc() }

// SlowClose counts a client closed for being stuck past the write deadline.
func (m *Metrics) SlowClose() { m.slowCloses.Inc() }

// LaggingClients is the number of clients stepped down right now.
func (m *Metrics) LaggingClients() int64 { return m.lagging.v.Load() }
