package server

import (
	"container/list"
	"hash/maphash"
	"sync"
	"time"

	"github.com/tickstream/tickstream/stream/protocol"
)

// The idempotency window: the server remembers, per producer, the
// message ids ("mid" of a tick or of a publish batch, Idempotency-Key of
// an HTTP publish) it has published, and answers a repeat with the
// original result instead of publishing it again. An id is remembered
// until the first of:
//
//   - its producer has published IdempotencyIDs newer ids,
//   - IdempotencyTTL has passed,
//   - its producer is the least recently active one when a new producer
//     comes past IdempotencyProducers, or when all producers together hold
//     more than IdempotencyTotalIDs ids (the least recently active
//     producer's oldest ids go first).
//
// A repeat of a forgotten id is published again. Refused ticks are not
// remembered: their retry is judged afresh.
type idemStore struct {
	ids, producers, total int
	ttl                   time.Duration
	now                   func() time.Time

	pub  [64]sync.Mutex // a producer's publishes run one at a time: check, publish, remember
	seed maphash.Seed

	mu    sync.Mutex
	byID  map[string]*idemProducer
	lru   list.List // of *idemProducer, most recently active first
	count int       // ids held, all producers
}

// idemEntry is one remembered id: a tick's topic and seq, or a whole
// batch's result.
type idemEntry struct {
	key   string
	at    time.Time
	topic string
	seq   uint64
	batch *protocol.PublishResult
}

type idemProducer struct {
	name string
	ids  map[string]*idemEntry
	fifo []*idemEntry // oldest first from head; entries no longer in ids are skipped
	head int
	elem *list.Element
}

func newIdemStore(ids, producers, total int, ttl time.Duration) *idemStore {
	return &idemStore{ids: ids, producers: producers, total: total, ttl: ttl, now: time.Now,
		seed: maphash.MakeSeed(), byID: make(map[string]*idemProducer)}
}

// lock serializes the publishes of one producer, so that two copies of
// the same id in flight at once are published once. It returns the unlock.
func (st *idemStore) lock(producer string) func() {
	m := &st.pub[maphash.String(st.seed, producer)%uint64(len(st.pub))]
	m.Lock()
	return m.Unlock
}

// get returns the remembered entry of key, nil if there is none.
func (st *idemStore) get(producer, key string) *idemEntry {
	st.mu.Lock()
	defer st.mu.Unlock()
	p := st.byID[producer]
	if p == nil {
		return nil
	}
	st.expireLocked(p, st.now())
	st.lru.MoveToFront(p.elem)
	return p.ids[key]
}

// put remembers e under producer, forgetting what the window lets go.
func (st *idemStore) put(producer string, e *idemEntry) {
	now := st.now()
	e.at = now
	st.mu.Lock()
	defer st.mu.Unlock()
	// An idle producer at the back is cleaned up as others come and go.
	if back := st.lru.Back(); back != nil {
		st.expireLocked(back.Value.(*idemProducer), now)
	}
	p := st.byID[producer]
	if p == nil {
		for len(st.byID) >= st.producers && st.lru.Len() > 0 {
			st.dropLocked(st.lru.Back().Value.(*idemProducer))
		}
		p = &idemProducer{name: producer, ids: make(map[string]*idemEntry)}
		p.elem = st.lru.PushFront(p)
		st.byID[producer] = p
	}
	st.lru.MoveToFront(p.elem)
	st.expireLocked(p, now)
	if _, had := p.ids[e.key]; !had {
		st.count++
	}
	p.ids[e.key] = e
	p.fifo = append(p.fifo, e)
	for len(p.ids) > st.ids {
		st.popLocked(p)
	}
	for st.count > st.total {
		st.popLocked(st.lru.Back().Value.(*idemProducer))
	}
}

// expireLocked forgets p's ids older than the TTL.
func (st *idemStore) expireLocked(p *idemProducer, now time.Time) {
	for p.head < len(p.fifo) && now.Sub(p.fifo[p.head].at) > st.ttl {
		st.popLocked(p)
	}
}

// popLocked forgets p's oldest id, and p itself once it holds none.
func (st *idemStore) popLocked(p *idemProducer) {
	for p.head < len(p.fifo) {
		e := p.fifo[p.head]
		p.fifo[p.head] = nil
		p.head++
		if p.ids[e.key] == e {
			delete(p.ids, e.key)
			st.count--
			break
		}
	}
	if p.head > len(p.fifo)/2 {
		p.fifo = append(p.fifo[:0], p.fifo[p.head:]...)
		p.head = 0
	}
	if len(p.ids) == 0 {
		st.dropLocked(p)
	}
}

func (st *idemStore) dropLocked(p *idemProducer) {
	if st.byID[p.name] != p {
		return
	}
	st.count -= len(p.ids)
	delete(st.byID, p.name)
	st.lru.Remove(p.elem)
}
