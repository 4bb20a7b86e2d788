package stream

import (
	"time"
)

// OnEvict registers fn to be called with the name of every topic evicted
// from now on (outside the bus's locks). The server uses it to give back
// the topic quota of the address that created the topic.
func (b *Bus) OnEvict(fn func(name string)) {
	b.mu.Lock()
	b.onEvict = append(b.onEvict, fn)
	b.mu.Unlock()
}

// evictLoop evicts idle topics every quarter of TopicIdleEvict (at most
// every minute) until Close.
func (b *Bus) evictLoop(quit <-chan struct{}) {
	defer b.wg.Done()
	every := min(b.cfg.TopicIdleEvict/4, time.Minute)
	tk := time.NewTicker(max(every, time.Millisecond))
	defer tk.Stop()
	for {
		select {
		case <-quit:
			return
		case <-tk.C:
			b.EvictIdle()
		}
	}
}

// EvictIdle evicts every topic that has no subscriber and has had no tick
// for TopicIdleEvict, and returns how many it evicted. The bus calls it
// periodically; it is exported for tests and tools. A topic's idleness is
// read under its own lock; Bus.mu is held only to drop the ones found.
func (b *Bus) EvictIdle() int {
	if b.cfg.TopicIdleEvict <= 0 {
		return 0
	}
	cutoff := b.cfg.Now().Add(-b.cfg.TopicIdleEvict)
	var idle []*topic
	for _, t := range b.topicList() {
		t.mu.Lock()
		if t.idleLocked(cutoff) {
			idle = append(idle, t)
		}
		t.mu.Unlock()
	}
	if len(idle) == 0 {
		return 0
	}
	evicted := make([]string, 0, len(idle))
	b.mu.Lock()
	for _, t := range idle {
		t.mu.Lock()
		if b.topics[t.name] == t && t.idleLocked(cutoff) {
			t.evicted = true
			delete(b.topics, t.name)
			b.tombLocked(t.name, t.seq)
			if b.perFeed[t.feed]--; b.perFeed[t.feed] <= 0 {
				delete(b.perFeed, t.feed)
			}
			evicted = append(evicted, t.name)
		}
		t.mu.Unlock()
	}
	// A new slice: scanners hold copies of the old header.
	all := make([]*topic, 0, len(b.topics))
	for _, t := range b.all {
		if !t.evicted {
			all = append(all, t)
		}
	}
	b.all = all
	b.metrics.topics.Add(-int64(len(evicted)))
	hooks := b.onEvict
	b.mu.Unlock()
	for _, name := range evicted {
		b.metrics.evicted.Inc()
		for _, fn := range hooks {
			fn(name)
		}
	}
	return len(evicted)
}

// idleLocked says whether t has no subscriber (member or joiner) and no
// tick since cutoff. Called with t.mu held.
func (t *topic) idleLocked(cutoff time.Time) bool {
	if t.evicted || t.accepted.After(cutoff) {
		return false
	}
	for _, g := range t.groups {
		if len(g.members) > 0 || g.hasJoiners() {
			return false
		}
	}
	return true
}

// tombLocked remembers an evicted topic's last seq, keeping at most
// MaxTopics names. Called with b.mu held.
func (b *Bus) tombLocked(name string, seq uint64) {
	if _, ok := b.tombs[name]; !ok {
		b.tombOrder = append(b.tombOrder, name)
	}
	b.tombs[name] = seq
	for len(b.tombOrder) > b.cfg.MaxTopics {
		old := b.tombOrder[0]
		b.tombOrder = b.tombOrder[1:]
		delete(b.tombs, old)
	}
	if cap(b.tombOrder) > 4*len(b.tombOrder)+64 { // let the front go
		b.tombOrder = append([]string(nil), b.tombOrder...)
	}
}

// revive brings back an evicted topic that a subscribe is about to join,
// or returns the topic that has since taken its name. The topic keeps its
// state (it was idle, so nothing is lost) and does not count against
// MaxTopics: the subscriber's interest was admitted before the eviction.
func (b *Bus) revive(t *topic) *topic {
	b.mu.Lock()
	defer b.mu.Unlock()
	if cur := b.topics[t.name]; cur != nil {
		return cur
	}
	t.mu.Lock()
	if t.evicted {
		t.evicted = false
		delete(b.tombs, t.name)
		b.perFeed[t.feed]++
		b.addLocked(t)
	}
	t.mu.Unlock()
	return t
}
