package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream/protocol"
)

// PublishAck is the server's answer to a publish.
type PublishAck struct {
	// Accepted counts the ticks on the bus, Duplicates those of them that
	// an earlier copy (same mid, same producer) had already published.
	Accepted, Duplicates int
	Refused              []protocol.Refusal
	// Seqs is the last seq each topic of the batch got.
	Seqs map[string]uint64
}

// Publish sends one publish op and waits for its ack. producer names the
// idempotency namespace ("" for the anonymous one), mid is the batch's
// message id ("" for none): a batch sent again with the same producer and
// mid within the server's window is not published again, and its ack is
// the original one. A refused publish op (bad producer, no publish right)
// returns its *protocol.Error; ticks refused one by one are in the ack.
// Messages that arrive meanwhile stay queued for Next.
func (c *Conn) Publish(ctx context.Context, producer, mid string, ticks []tick.Tick) (PublishAck, error) {
	req := request{Op: protocol.OpPublish, Producer: producer, Ticks: ticks}
	if mid != "" {
		req.Mid, _ = json.Marshal(mid)
	}
	m, err := c.roundTrip(ctx, req, protocol.TypeAck)
	if err != nil {
		return PublishAck{}, err
	}
	a := PublishAck{Duplicates: m.Duplicates, Refused: m.Refused, Seqs: m.Seqs}
	if m.Accepted != nil {
		a.Accepted = *m.Accepted
	}
	return a, nil
}

// ProducerOptions configure a Producer. The zero value is ready to use.
type ProducerOptions struct {
	Options
	// ID is the producer id the server keeps its message ids under; the
	// same id across restarts lets a resend after a restart be
	// recognized. Zero value means a random one per Producer.
	ID string
	// MaxQueue is how many batches may wait (unacknowledged) at once.
	// Past it Publish fails at once with ErrQueueFull: the newest batch
	// is refused, the queued ones are kept. Zero value means 1,000.
	MaxQueue int
	// RetryBase is the first wait before redialling; it doubles up to
	// RetryMax. Zero values mean 100 ms and 5 s.
	RetryBase, RetryMax time.Duration
}

// ErrQueueFull: a Producer already holds ProducerOptions.MaxQueue batches
// that the server has not acknowledged.
var ErrQueueFull = errors.New("client: producer queue full")

// ErrProducerClosed: the Producer was closed before the batch was
// acknowledged.
var ErrProducerClosed = errors.New("client: producer closed")

// Producer publishes over a WebSocket that it keeps connected: Publish
// queues the batch with a fresh message id and waits for its ack. While
// the connection is down batches wait in the queue; on reconnect they are
// sent again, in order, with the same ids, so the server publishes each
// once (within its idempotency window, by default 10 minutes). Batches are
// sent one at a time.
type Producer struct {
	url  string
	opts ProducerOptions

	mu      sync.Mutex
	queue   []*pendingBatch
	wake    chan struct{} // cap 1
	n       uint64
	closed  bool
	stop    context.CancelFunc
	stopped chan struct{}
}

type pendingBatch struct {
	mid   string
	ticks []tick.Tick
	done  chan struct{}
	ack   PublishAck
	err   error
}

// NewProducer starts a producer for the WebSocket endpoint url
// (ws://host:8080/ws). It connects in the background. opts may be nil.
func NewProducer(url string, opts *ProducerOptions) *Producer {
	var o ProducerOptions
	if opts != nil {
		o = *opts
	}
	if o.ID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		o.ID = "go-" + hex.EncodeToString(b[:])
	}
	if o.MaxQueue <= 0 {
		o.MaxQueue = 1000
	}
	if o.RetryBase <= 0 {
		o.RetryBase = 100 * time.Millisecond
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 5 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Producer{url: url, opts: o, wake: make(chan struct{}, 1), stop: cancel, stopped: make(chan struct{})}
	go p.run(ctx)
	return p
}

// ID is the producer id.
func (p *Producer) ID() string { return p.opts.ID }

// Queued is how many batches wait for their ack.
func (p *Producer) Queued() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue)
}

// Publish queues ticks as one batch and waits for its ack, however many
// reconnects that takes. If ctx ends first the batch stays queued (it may
// yet be published) and ctx's error is returned.
func (p *Producer) Publish(ctx context.Context, ticks ...tick.Tick) (PublishAck, error) {
	p.mu.Lock()
	switch {
	case p.closed:
		p.mu.Unlock()
		return PublishAck{}, ErrProducerClosed
	case len(p.queue) >= p.opts.MaxQueue:
		p.mu.Unlock()
		return PublishAck{}, ErrQueueFull
	}
	p.n++
	b := &pendingBatch{mid: p.opts.ID + "." + strconv.FormatUint(p.n, 10), ticks: ticks, done: make(chan struct{})}
	p.queue = append(p.queue, b)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	select {
	case <-b.done:
		return b.ack, b.err
	case <-ctx.Done():
		return PublishAck{}, ctx.Err()
	}
}

// Close stops the producer; batches still queued fail with
// ErrProducerClosed.
func (p *Producer) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.stop()
	<-p.stopped
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.queue {
		b.err = ErrProducerClosed
		close(b.done)
	}
	p.queue = nil
	return nil
}

func (p *Producer) head() *pendingBatch {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.queue) == 0 {
		return nil
	}
	return p.queue[0]
}

func (p *Producer) finish(b *pendingBatch, ack PublishAck, err error) {
	p.mu.Lock()
	p.queue = p.queue[1:]
	p.mu.Unlock()
	b.ack, b.err = ack, err
	close(b.done)
}

func (p *Producer) run(ctx context.Context) {
	defer close(p.stopped)
	wait := p.opts.RetryBase
	for ctx.Err() == nil {
		conn, err := Dial(ctx, p.url, &p.opts.Options)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			wait = min(2*wait, p.opts.RetryMax)
			continue
		}
		wait = p.opts.RetryBase
		p.serve(ctx, conn)
		conn.Close()
	}
}

// serve sends the queued batches on conn, in order, until it fails.
func (p *Producer) serve(ctx context.Context, conn *Conn) {
	for {
		b := p.head()
		if b == nil {
			select {
			case <-ctx.Done():
				return
			case <-p.wake:
				continue
			}
		}
		ack, err := conn.Publish(ctx, p.opts.ID, b.mid, b.ticks)
		var perr *protocol.Error
		if err != nil && !errors.As(err, &perr) {
			return // the connection failed: resend on the next one
		}
		if perr != nil {
			err = fmt.Errorf("client: publish refused: %w", perr)
		}
		p.finish(b, ack, err)
	}
}
