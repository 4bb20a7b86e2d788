// Package cluster makes tickstream nodes one cluster over NATS JetStream:
// one sequence per topic for the whole cluster, the same (epoch, seq) on
// every node, a durable shared log, and a lease per feed so that each
// feed runs on one node at a time.
//
// # Sequencing
//
// Every accepted tick, on any node, is published to one JetStream stream
// (Config.Stream) on the subject Config.Subjects + "." + Subject(topic),
// with its topic seq in the Tickstream-Seq header and, as the condition
// of the write, Nats-Expected-Last-Subject-Sequence naming the stream
// sequence of the topic's last message as the publishing node knows it.
// JetStream stores the message only if nothing was written to the subject
// since (optimistic concurrency), so seq N+1 is written exactly once, right
// after seq N: a node that lost a race reads the subject's last message and
// retries. No node is a leader and nothing is sequenced twice; the cost is
// one round trip per tick, and concurrent writers of one topic retry.
//
// Every node runs an ordered JetStream consumer over the whole stream and
// folds each message into its bus (stream.Bus.Apply) with the seq from the
// header, in the stream's order, so every node holds the same topics with
// the same seqs, history and candles. Publish never folds locally: a
// node's own ticks come back through its consumer like everyone's, so a
// publish ack's seq shows in /api/history a moment after the ack.
//
// The epoch is the cluster's: it is kept in the KV bucket Config.Bucket,
// key "epoch", with the creation time of the stream it names; a node that
// finds the stream recreated (its log, hence its seqs, lost) starts a new
// epoch there, once, for every node.
//
// # Durability
//
// The stream is the durable log: it keeps the newest Config.HistoryDepth
// messages of each subject (MaxMsgsPerSubject; never less than one, since
// the last message carries the topic's seq). A node that starts replays
// the stream before it serves, so history survives a restart of every
// node; candles older than the retained ticks come from the node's own
// store (stream/store) when it has a data directory.
//
// # SSE reference cursors
//
// Node.Put and Node.Get implement server.CursorShare with the KV bucket
// Config.Bucket+"_cursors" (entries live CursorTTL), so that an SSE
// stream's @stream.event id resolves on any node: a node puts a
// reference-form stream's cursor log when the stream ends and, while it
// runs, with a write at most once a second; after a crash, the ids written
// since the last put resolve nowhere else (such a reconnect starts afresh
// with bad_resume).
//
// # Feed leases
//
// Node.Acquire implements feeds.Lease with a KV bucket whose entries live
// Config.LeaseTTL: the holder renews its entry every third of it, a node
// that dies stops renewing and its feeds move to a live node within about
// LeaseTTL (at once when it shuts down cleanly and deletes its entries).
package cluster

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream"
)

// Headers of a tick message.
const (
	HeaderSeq      = "Tickstream-Seq"      // the tick's seq in its topic
	HeaderAccepted = "Tickstream-Accepted" // accept time, Unix ns
)

// Config configures a Node. Every zero value means the documented default.
type Config struct {
	// URL is the NATS server URL (several, comma-separated). Required.
	URL string
	// Stream is the JetStream stream of ticks. Zero value means
	// "TICKSTREAM". A missing stream is created (file storage, Replicas
	// replicas); an existing one is used as it is.
	Stream string
	// Subjects is the stream's subject prefix. Zero value means
	// "tickstream.ticks".
	Subjects string
	// Bucket is the KV bucket of the cluster's epoch; Bucket+"_leases"
	// holds the feed leases. Zero value means "tickstream".
	Bucket string
	// HistoryDepth is the messages a new stream keeps per topic. Zero
	// value means 1000.
	HistoryDepth int
	// Replicas of a new stream and buckets. Zero value means 1.
	Replicas int
	// LeaseTTL is how long a feed lease lives without renewal. Zero value
	// means 5 s.
	LeaseTTL time.Duration
	// Name names this node in leases and NATS. Zero value means the host
	// name and a random suffix.
	Name string
	// Logger logs cluster events. Zero value means slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Stream == "" {
		c.Stream = "TICKSTREAM"
	}
	if c.Subjects == "" {
		c.Subjects = "tickstream.ticks"
	}
	if c.Bucket == "" {
		c.Bucket = "tickstream"
	}
	if c.HistoryDepth <= 0 {
		c.HistoryDepth = 1000
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 5 * time.Second
	}
	if c.Name == "" {
		h, _ := os.Hostname()
		c.Name = h + "-" + stream.NewID(4)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Subject maps a topic to its subject token. Topics are 1-128 chars of
// [A-Za-z0-9._:/-]; all are valid in a NATS subject except '.', the token
// separator, which becomes '~' (not a topic char, so the map is one to
// one and a topic is always one token: no wildcard, no empty token).
func Subject(topic string) string { return strings.ReplaceAll(topic, ".", "~") }

// Node is one tickstream node's membership in the cluster. It implements
// stream.Forwarder, feeds.Lease and server.CursorShare.
type Node struct {
	cfg    Config
	log    *slog.Logger
	nc     *nats.Conn
	js     jetstream.JetStream
	str    jetstream.Stream
	leases jetstream.KeyValue
	epoch  string

	mu     sync.Mutex
	topics map[string]*pubState

	cursors     jetstream.KeyValue
	cursorMu    sync.Mutex
	cursorQ     map[string][]byte // puts not yet written, latest per stream
	cursorKick  chan struct{}
	cursorStop  chan struct{}
	cursorDone  chan struct{}
	cursorsLost atomic.Uint64 // puts dropped: the queue was full

	bus     *stream.Bus
	cc      jetstream.ConsumeContext
	applied progress
	closed  atomic.Bool
	ctx     context.Context // ends at Close: stops lease renewals
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// pubState is what a node knows of a topic's last message: the stream
// sequence to expect when writing the next one, and its seq.
type pubState struct {
	mu        sync.Mutex // held by Forward across its round trip
	streamSeq uint64
	seq       uint64
	known     bool

	// obs is the last message the consumer folded (obsMu; never held
	// with mu waited on by the consumer).
	obsMu                sync.Mutex
	obsStreamSeq, obsSeq uint64
}

// Open connects to NATS, makes sure the stream and the buckets exist, and
// reads (or starts) the cluster's epoch.
func Open(ctx context.Context, cfg Config) (*Node, error) {
	cfg.setDefaults()
	if cfg.URL == "" {
		return nil, errors.New("cluster: no NATS URL")
	}
	nc, err := nats.Connect(cfg.URL, nats.Name("tickstream "+cfg.Name), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(false))
	if err != nil {
		return nil, fmt.Errorf("cluster: connecting to %s: %w", cfg.URL, err)
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("node", cfg.Name), nc: nc, topics: make(map[string]*pubState)}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	if err := n.open(ctx); err != nil {
		n.cancel()
		nc.Close()
		return nil, err
	}
	return n, nil
}

func (n *Node) open(ctx context.Context) error {
	js, err := jetstream.New(n.nc)
	if err != nil {
		return err
	}
	n.js = js
	str, err := js.Stream(ctx, n.cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		str, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name:              n.cfg.Stream,
			Description:       "tickstream ticks, sequenced per topic (Tickstream-Seq)",
			Subjects:          []string{n.cfg.Subjects + ".>"},
			Storage:           jetstream.FileStorage,
			Replicas:          n.cfg.Replicas,
			Retention:         jetstream.LimitsPolicy,
			Discard:           jetstream.DiscardOld,
			MaxMsgsPerSubject: int64(n.cfg.HistoryDepth),
			AllowDirect:       true,
		})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			str, err = js.Stream(ctx, n.cfg.Stream) // another node made it
		}
	}
	if err != nil {
		return fmt.Errorf("cluster: stream %s: %w", n.cfg.Stream, err)
	}
	n.str = str
	meta, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: n.cfg.Bucket, Description: "tickstream cluster state", Replicas: n.cfg.Replicas, Storage: jetstream.FileStorage})
	if err != nil {
		return fmt.Errorf("cluster: bucket %s: %w", n.cfg.Bucket, err)
	}
	n.leases, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: n.cfg.Bucket + "_leases", Description: "tickstream feed leases", Replicas: n.cfg.Replicas, TTL: n.cfg.LeaseTTL, Storage: jetstream.FileStorage})
	if err != nil {
		return fmt.Errorf("cluster: bucket %s_leases: %w", n.cfg.Bucket, err)
	}
	n.cursors, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: n.cfg.Bucket + "_cursors", Description: "tickstream SSE reference cursor logs", Replicas: n.cfg.Replicas, TTL: CursorTTL, Storage: jetstream.FileStorage})
	if err != nil {
		return fmt.Errorf("cluster: bucket %s_cursors: %w", n.cfg.Bucket, err)
	}
	info, err := str.Info(ctx)
	if err != nil {
		return fmt.Errorf("cluster: stream %s: %w", n.cfg.Stream, err)
	}
	n.epoch, err = clusterEpoch(ctx, meta, info.Created.UnixNano(), n.log)
	if err != nil {
		return err
	}
	n.cursorQ = make(map[string][]byte)
	n.cursorKick, n.cursorStop, n.cursorDone = make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
	go n.writeCursors()
	return nil
}

// CursorTTL is how long a shared SSE cursor log lives after its last put
// (a node keeps its own ended streams' logs as long).
const CursorTTL = 2 * time.Minute

// maxCursorQueue bounds the streams whose cursor puts wait for the writer.
const maxCursorQueue = 1024

func cursorKey(stream string) string {
	return "sse." + base64.RawURLEncoding.EncodeToString([]byte(stream))
}

// Put implements server.CursorShare: it queues the log for the writer
// goroutine (a newer put of the same stream replaces a queued one) and
// never waits.
func (n *Node) Put(stream string, data []byte) {
	n.cursorMu.Lock()
	if _, queued := n.cursorQ[stream]; !queued && len(n.cursorQ) >= maxCursorQueue {
		n.cursorMu.Unlock()
		n.cursorsLost.Add(1)
		return
	}
	n.cursorQ[stream] = data
	n.cursorMu.Unlock()
	select {
	case n.cursorKick <- struct{}{}:
	default:
	}
}

// Get implements server.CursorShare.
func (n *Node) Get(stream string) ([]byte, bool) {
	ctx, cancel := context.WithTimeout(n.ctx, 2*time.Second)
	defer cancel()
	e, err := n.cursors.Get(ctx, cursorKey(stream))
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			n.log.Warn("cluster: reading a shared SSE cursor", "stream", stream, "err", err)
		}
		return nil, false
	}
	return e.Value(), true
}

// writeCursors writes queued cursor puts until Close, then what is left.
func (n *Node) writeCursors() {
	defer close(n.cursorDone)
	for {
		stop := false
		select {
		case <-n.cursorKick:
		case <-n.cursorStop:
			stop = true
		}
		n.cursorMu.Lock()
		q := n.cursorQ
		n.cursorQ = make(map[string][]byte)
		n.cursorMu.Unlock()
		for stream, data := range q {
			if !n.nc.IsConnected() {
				n.cursorsLost.Add(1)
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if _, err := n.cursors.Put(ctx, cursorKey(stream), data); err != nil {
				n.log.Warn("cluster: sharing an SSE cursor", "stream", stream, "err", err)
			}
			cancel()
		}
		if stop {
			return
		}
	}
}

// epochRecord is the value of the "epoch" key.
type epochRecord struct {
	Epoch string `json:"epoch"`
	// Stream is the creation time (Unix ns) of the stream whose seqs the
	// epoch names.
	Stream int64 `json:"stream"`
}

// clusterEpoch returns the epoch of the stream created at created,
// starting one (compare-and-set, so every node agrees) when the bucket
// has none or names an older stream.
func clusterEpoch(ctx context.Context, kv jetstream.KeyValue, created int64, log *slog.Logger) (string, error) {
	for range 10 {
		e, err := kv.Get(ctx, "epoch")
		var rec epochRecord
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			rec = epochRecord{Epoch: stream.NewID(8), Stream: created}
			v, _ := json.Marshal(rec)
			if _, err := kv.Create(ctx, "epoch", v); err != nil {
				continue // another node made one: read it
			}
			return rec.Epoch, nil
		case err != nil:
			return "", fmt.Errorf("cluster: reading the epoch: %w", err)
		}
		if err := json.Unmarshal(e.Value(), &rec); err == nil && rec.Stream == created && rec.Epoch != "" {
			return rec.Epoch, nil
		}
		old := rec.Epoch
		rec = epochRecord{Epoch: stream.NewID(8), Stream: created}
		v, _ := json.Marshal(rec)
		if _, err := kv.Update(ctx, "epoch", v, e.Revision()); err != nil {
			continue
		}
		log.Warn("cluster: the tick stream was recreated: a new epoch starts", "old_epoch", old, "epoch", rec.Epoch)
		return rec.Epoch, nil
	}
	return "", errors.New("cluster: could not agree on an epoch")
}

// Epoch is the cluster's epoch (stream.BusConfig.Epoch).
func (n *Node) Epoch() string { return n.epoch }

// Name is this node's name.
func (n *Node) Name() string { return n.cfg.Name }

// Conn is the node's NATS connection.
func (n *Node) Conn() *nats.Conn { return n.nc }

func (n *Node) subject(topic string) string { return n.cfg.Subjects + "." + Subject(topic) }

func (n *Node) state(topic string) *pubState {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := n.topics[topic]
	if st == nil {
		st = &pubState{}
		n.topics[topic] = st
	}
	return st
}

// Start folds the stream into bus, from its oldest message, and returns
// once the messages that were in the stream when it was called are
// folded (or ctx ends): a node serves only once it has the cluster's
// history. bus must have been made with Forward: n and Epoch: n.Epoch().
func (n *Node) Start(ctx context.Context, bus *stream.Bus) error {
	n.bus = bus
	info, err := n.str.Info(ctx)
	if err != nil {
		return fmt.Errorf("cluster: stream %s: %w", n.cfg.Stream, err)
	}
	cons, err := n.str.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return fmt.Errorf("cluster: consumer: %w", err)
	}
	cc, err := cons.Consume(n.fold)
	if err != nil {
		return fmt.Errorf("cluster: consumer: %w", err)
	}
	n.cc = cc
	if last := info.State.LastSeq; info.State.Msgs > 0 {
		if err := n.applied.wait(ctx, last); err != nil {
			return fmt.Errorf("cluster: replaying the stream (%d messages): %w", info.State.Msgs, err)
		}
		n.log.Info("cluster: stream replayed", "messages", info.State.Msgs, "epoch", n.epoch)
	}
	return nil
}

// fold applies one message of the stream (the consumer's goroutine).
func (n *Node) fold(msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		n.log.Warn("cluster: message without metadata", "err", err)
		return
	}
	defer n.applied.advance(meta.Sequence.Stream)
	h := msg.Headers()
	seq, err := strconv.ParseUint(h.Get(HeaderSeq), 10, 64)
	if err != nil || seq == 0 {
		n.log.Warn("cluster: message without a seq ignored", "subject", msg.Subject(), "stream_seq", meta.Sequence.Stream)
		return
	}
	acc := meta.Timestamp
	if ns, err := strconv.ParseInt(h.Get(HeaderAccepted), 10, 64); err == nil {
		acc = time.Unix(0, ns)
	}
	tk, err := tick.ParseTick(msg.Data())
	if err != nil {
		n.log.Warn("cluster: bad tick ignored", "subject", msg.Subject(), "stream_seq", meta.Sequence.Stream, "err", err)
		return
	}
	st := n.state(tk.Topic)
	st.obsMu.Lock()
	if meta.Sequence.Stream > st.obsStreamSeq {
		st.obsStreamSeq, st.obsSeq = meta.Sequence.Stream, seq
	}
	st.obsMu.Unlock()
	if _, err := n.bus.Apply(tk, seq, acc); err != nil && !errors.Is(err, stream.ErrClosed) {
		n.log.Warn("cluster: tick refused by the bus", "topic", tk.Topic, "seq", seq, "err", err)
	}
}

// maxAttempts bounds Forward's retries after lost races.
const maxAttempts = 64

// Forward implements stream.Forwarder: it writes tk to the stream as its
// topic's next seq and returns the seq once JetStream has stored it. The
// tick reaches this node's bus, like every node's, through the consumer
// a moment later (waiting for that here tripled the p99 latency under
// load: see the README's Scale-out figures).
func (n *Node) Forward(tk *tick.Tick, accepted time.Time) (uint64, error) {
	if n.closed.Load() {
		return 0, stream.ErrClosed
	}
	if !n.nc.IsConnected() {
		// Fail now rather than buffer blind: a feed restarts with backoff,
		// an HTTP publish is refused with the reason.
		return 0, fmt.Errorf("cluster: not connected to NATS (%s)", n.nc.Status())
	}
	ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
	defer cancel()
	subj := n.subject(tk.Topic)
	body := tk.AppendJSON(nil)
	st := n.state(tk.Topic)
	st.mu.Lock()
	var seq uint64
	var err error
	for range maxAttempts {
		st.obsMu.Lock()
		if st.obsStreamSeq > st.streamSeq {
			st.streamSeq, st.seq, st.known = st.obsStreamSeq, st.obsSeq, true
		}
		st.obsMu.Unlock()
		if !st.known {
			if err = n.loadLast(ctx, subj, st); err != nil {
				break
			}
		}
		msg := &nats.Msg{Subject: subj, Data: body, Header: nats.Header{}}
		msg.Header.Set(HeaderSeq, strconv.FormatUint(st.seq+1, 10))
		msg.Header.Set(HeaderAccepted, strconv.FormatInt(accepted.UnixNano(), 10))
		var ack *jetstream.PubAck
		ack, err = n.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(st.streamSeq))
		if err == nil {
			st.streamSeq, st.seq = ack.Sequence, st.seq+1
			seq = st.seq
			break
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			st.known = false // another node wrote this topic: read its last message
			continue
		}
		st.known = false
		break
	}
	st.mu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("cluster: publishing to %s: %w", subj, err)
	}
	if seq == 0 {
		return 0, fmt.Errorf("cluster: publishing to %s: lost %d races in a row", subj, maxAttempts)
	}
	return seq, nil
}

// loadLast reads the subject's last message into st.
func (n *Node) loadLast(ctx context.Context, subj string, st *pubState) error {
	m, err := n.str.GetLastMsgForSubject(ctx, subj)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		st.streamSeq, st.seq = 0, 0
	case err != nil:
		return err
	default:
		seq, err := strconv.ParseUint(m.Header.Get(HeaderSeq), 10, 64)
		if err != nil {
			return fmt.Errorf("last message %d has no %s header", m.Sequence, HeaderSeq)
		}
		st.streamSeq, st.seq = m.Sequence, seq
	}
	st.known = true
	return nil
}

// Close stops folding the stream, ends lease renewals (leases not released
// expire) and closes the NATS connection. Call it after the supervisor
// and the bus are closed.
func (n *Node) Close() {
	if !n.closed.CompareAndSwap(false, true) {
		return
	}
	if n.cc != nil {
		n.cc.Stop()
		<-n.cc.Closed()
	}
	close(n.cursorStop) // the ended streams' logs are written first
	<-n.cursorDone
	n.cancel()
	n.wg.Wait()
	n.nc.Close()
}

// progress is the stream sequence folded so far, with waiters.
type progress struct {
	mu  sync.Mutex
	seq uint64
	ch  chan struct{} // closed at the next advance; made by a waiter
}

func (p *progress) advance(seq uint64) {
	p.mu.Lock()
	if seq > p.seq {
		p.seq = seq
	}
	if p.ch != nil {
		close(p.ch)
		p.ch = nil
	}
	p.mu.Unlock()
}

func (p *progress) wait(ctx context.Context, seq uint64) error {
	for {
		p.mu.Lock()
		if p.seq >= seq {
			p.mu.Unlock()
			return nil
		}
		if p.ch == nil {
			p.ch = make(chan struct{})
		}
		ch := p.ch
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// leaseKey is the feed's key in the leases bucket (base64url: any feed
// name makes a valid key).
func leaseKey(feed string) string {
	return "feed." + base64.RawURLEncoding.EncodeToString([]byte(feed))
}

// Acquire implements feeds.Lease. It polls for a free lease every quarter
// of LeaseTTL (at most 1 s); once it holds it, it renews it every third
// of LeaseTTL. held ends when a renewal finds the lease taken, or when
// renewals have failed for LeaseTTL (the entry may have expired), or when
// ctx ends or the node closes.
func (n *Node) Acquire(ctx context.Context, feed string) (context.Context, func(), error) {
	key := leaseKey(feed)
	poll := min(n.cfg.LeaseTTL/4, time.Second)
	for {
		rev, err := n.leases.Create(ctx, key, []byte(n.cfg.Name))
		if err == nil {
			return n.hold(ctx, feed, key, rev)
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && ctx.Err() == nil {
			n.log.Warn("cluster: feed lease", "feed", feed, "err", err)
		}
		t := time.NewTimer(poll)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, nil, ctx.Err()
		case <-n.ctx.Done():
			t.Stop()
			return nil, nil, stream.ErrClosed
		}
	}
}

func (n *Node) hold(ctx context.Context, feed, key string, rev uint64) (context.Context, func(), error) {
	held, lose := context.WithCancel(ctx)
	stop := make(chan struct{})
	var revMu sync.Mutex
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer lose()
		every := n.cfg.LeaseTTL / 3
		t := time.NewTicker(every)
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case <-stop:
				return
			case <-held.Done():
				return
			case <-n.ctx.Done():
				return
			case <-t.C:
			}
			rctx, cancel := context.WithTimeout(held, every)
			revMu.Lock()
			r, err := n.leases.Update(rctx, key, []byte(n.cfg.Name), rev)
			cancel()
			if err == nil {
				rev, last = r, time.Now()
			}
			revMu.Unlock()
			switch {
			case err == nil:
			case errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound):
				n.log.Warn("cluster: feed lease taken by another node", "feed", feed)
				return
			case time.Since(last) >= n.cfg.LeaseTTL:
				n.log.Warn("cluster: feed lease not renewed in time", "feed", feed, "err", err)
				return
			}
		}
	}()
	var once sync.Once
	release := func() {
		once.Do(func() {
			close(stop)
			lose()
			revMu.Lock()
			r := rev
			revMu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if n.nc.IsConnected() {
				_ = n.leases.Delete(ctx, key, jetstream.LastRevision(r))
			}
		})
	}
	return held, release, nil
}
