package stream

import (
	"fmt"
	"time"

	"github.com/tickstream/tickstream/feeds/tick"
)

// Forwarder takes the ticks a bus accepts when the bus is one node of a
// cluster (BusConfig.Forward; stream/cluster implements it over NATS
// JetStream). Publish validates a tick and hands it to Forward instead of
// folding it: the cluster sequences it once for every node, and each
// node's bus receives it, with its cluster seq, through Bus.Apply.
type Forwarder interface {
	// Forward sequences tk (validated, ts set) accepted at accepted, and
	// returns its seq once it is durable in the cluster. It may block for
	// a network round trip; the bus calls it holding no lock.
	Forward(tk *tick.Tick, accepted time.Time) (uint64, error)
}

// Apply folds a tick that the cluster sequenced as seq of its topic, with
// the time the accepting node accepted it. The cluster calls it for every
// tick in the cluster's order, on every node; Publish never folds in
// cluster mode. A seq at or below the topic's is ignored (already folded)
// and Apply returns false; a seq past the topic's next one (ticks this bus
// never received, e.g. pruned from the cluster's log while the node was
// down) empties the topic's history ring first, so a cursor before the
// gap resets instead of resuming across it. Like Publish, it never waits
// for a subscriber.
func (b *Bus) Apply(tk tick.Tick, seq uint64, accepted time.Time) (bool, error) {
	if seq == 0 {
		return false, fmt.Errorf("stream: Apply of %q with seq 0", tk.Topic)
	}
	if err := tk.Validate(); err != nil {
		return false, err
	}
	var t *topic
	for {
		var err error
		if t, err = b.topicFor("", tk.Topic); err != nil {
			return false, err
		}
		t.mu.Lock()
		if !t.evicted {
			break
		}
		t.mu.Unlock() // evicted between the lookup and the lock: look again
	}
	if seq <= t.seq {
		t.mu.Unlock()
		return false, nil
	}
	_, ticket := t.publishLocked(&tk, accepted, seq)
	t.mu.Unlock()
	if st := b.cfg.Store; st != nil {
		st.Settle(ticket)
	}
	return true, nil
}

// TopicSeq is topic's seq (0 when it has no tick).
func (b *Bus) TopicSeq(name string) uint64 {
	t := b.lookup(name)
	if t == nil {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.seq
}

// forward hands a validated tick to the cluster (BusConfig.Forward).
func (b *Bus) forward(tk *tick.Tick, now time.Time, in, refused interface{ Inc() }) (uint64, error) {
	if b.lookup(tk.Topic) == nil {
		b.mu.RLock()
		n, closed := len(b.topics), b.closed
		b.mu.RUnlock()
		if closed {
			refused.Inc()
			return 0, ErrClosed
		}
		if n >= b.cfg.MaxTopics {
			refused.Inc()
			return 0, &tick.Error{Err: ErrTooManyTopic, Detail: fmt.Sprintf("%d topics already, at most %d", n, b.cfg.MaxTopics)}
		}
	}
	seq, err := b.cfg.Forward.Forward(tk, now)
	if err != nil {
		refused.Inc()
		return 0, err
	}
	in.Inc()
	return seq, nil
}
