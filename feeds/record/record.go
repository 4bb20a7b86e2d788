package record

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"time"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream/client"
	"github.com/tickstream/tickstream/stream/protocol"
)

// Options configure Run. Every zero value means the documented default.
type Options struct {
	// URL is the server's WebSocket endpoint. Zero value means
	// ws://localhost:8080/ws. Missed ticks are fetched from the same
	// server's /api/history.
	URL string
	// Topics are the topics (or patterns ending in *) to record. Required.
	Topics []string
	// Out receives one tick per line. Required.
	Out io.Writer
	// Logger logs connections, step-downs, backfills, gaps and errors.
	// Zero value means slog.Default().
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the delay before a reconnect (full
	// jitter over a capped exponential). Zero values mean 250 ms and 10 s.
	MinBackoff, MaxBackoff time.Duration
	// HTTPClient makes the WebSocket handshake and the history requests.
	// Zero value means http.DefaultClient.
	HTTPClient *http.Client
}

// Errors returned by Run.
var (
	ErrNoTopics = errors.New("record: no topics")
	ErrNoOut    = errors.New("record: no output")
)

// LogMissing is the message of the warning logged for ticks lost for
// good (the server's history no longer had them); its "missing" attribute
// counts them, "missing_total" counts every one lost since Run began.
const LogMissing = "record: ticks missing"

// WriteError is a failure to write the output; Run stops on it, since
// retrying cannot help.
type WriteError struct{ Err error }

func (e *WriteError) Error() string { return "record: write: " + e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

// Run records until ctx ends, then returns nil. It returns an error only
// for bad options or when writing Out fails; connection failures are
// retried with backoff, resuming where the last connection stopped.
func Run(ctx context.Context, opts Options) error {
	if len(opts.Topics) == 0 {
		return ErrNoTopics
	}
	if opts.Out == nil {
		return ErrNoOut
	}
	if opts.URL == "" {
		opts.URL = "ws://localhost:8080/ws"
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 250 * time.Millisecond
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(10*time.Second, opts.MinBackoff)
	}
	r := &recorder{
		opts: opts, log: opts.Logger,
		out:     bufio.NewWriterSize(opts.Out, 64<<10),
		cursors: make(map[string]protocol.Cursor),
		resets:  make(map[string]string),
	}
	defer func() {
		r.log.Info("record: stopped", "written", r.written, "backfilled", r.backfilled, "missing_total", r.missing)
	}()
	failures := 0
	for {
		progress, err := r.session(ctx)
		if ctx.Err() != nil {
			if err := r.out.Flush(); err != nil {
				return &WriteError{err}
			}
			return nil
		}
		if we := (*WriteError)(nil); errors.As(err, &we) {
			return err
		}
		if progress {
			failures = 0
		}
		failures++
		ceil := opts.MaxBackoff
		if failures < 32 {
			ceil = min(ceil, opts.MinBackoff<<(failures-1))
		}
		wait := rand.N(ceil + 1)
		r.log.Warn("record: connection lost; reconnecting", "url", opts.URL, "err", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			_ = r.out.Flush()
			return nil
		case <-t.C:
		}
	}
}

type recorder struct {
	opts Options
	log  *slog.Logger
	out  *bufio.Writer
	// cursors is the (epoch, seq) of the last tick written per topic (or
	// of the snapshot recording started from): the resume position.
	cursors map[string]protocol.Cursor
	// resets holds the reason of a reset until its snapshot arrives.
	resets map[string]string
	line   []byte

	written, backfilled, missing uint64
}

// session is one connection: it subscribes (resuming every known topic)
// and writes ticks until the connection fails. It reports whether it got
// as far as a subscription.
func (r *recorder) session(ctx context.Context) (progress bool, err error) {
	c, err := client.Dial(ctx, r.opts.URL, &client.Options{HTTPClient: r.opts.HTTPClient})
	if err != nil {
		return false, err
	}
	defer c.Close()
	resume := make(map[string]protocol.Cursor, len(r.cursors))
	for t, cur := range r.cursors {
		resume[t] = cur
	}
	if _, err := c.Subscribe(ctx, r.opts.Topics, 0, resume); err != nil {
		return false, err
	}
	r.log.Info("record: subscribed", "url", r.opts.URL, "topics", r.opts.Topics, "resume", len(resume))
	for {
		if c.Buffered() == 0 {
			// About to wait: hand what was written to Out.
			if err := r.out.Flush(); err != nil {
				return true, &WriteError{err}
			}
		}
		m, err := c.Next(ctx)
		if errors.Is(err, client.ErrBadMessage) {
			r.log.Warn("record: bad message from server", "err", err)
			continue
		}
		if err != nil {
			return true, err
		}
		if err := r.handle(ctx, c, m); err != nil {
			return true, err
		}
	}
}

// handle processes one server message.
func (r *recorder) handle(ctx context.Context, c *client.Conn, m protocol.WireMessage) error {
	switch m.Type {
	case protocol.TypeSnapshot:
		return r.snapshot(ctx, c, m)
	case protocol.TypeUpdate:
		return r.update(ctx, c, m)
	case protocol.TypeReset:
		r.resets[m.Topic] = m.Reason
		r.log.Warn("record: the server cannot resume the topic; filling in from its history", "topic", m.Topic, "reason", m.Reason)
	case protocol.TypeStatus:
		if m.Lagging != nil && *m.Lagging {
			var ms int64
			if m.ThrottleMS != nil {
				ms = *m.ThrottleMS
			}
			r.log.Warn("record: the server stepped the recorder down (too slow); merged updates are filled in from history", "throttle_ms", ms)
		} else {
			r.log.Info("record: caught up")
		}
	case protocol.TypeError:
		r.log.Warn("record: server refused", "code", m.Code, "message", m.Message)
	}
	return nil
}

// snapshot starts a topic, or, after a reset, fills in from history what
// was missed up to the snapshot.
func (r *recorder) snapshot(ctx context.Context, c *client.Conn, m protocol.WireMessage) error {
	reason, wasReset := r.resets[m.Topic]
	delete(r.resets, m.Topic)
	cur, known := r.cursors[m.Topic]
	switch {
	case !known:
		// Not a tick: the latest value when recording starts. Updates
		// follow from its seq.
	case cur.Epoch == m.Epoch && m.Seq > cur.Seq:
		return r.fill(ctx, c, m.Topic, m.Epoch, cur.Seq, m.Seq, nil)
	case cur.Epoch != m.Epoch:
		// The server lost the old epoch's history: how much of it came
		// after our cursor is unknown. The new epoch's ticks are in
		// history (as far as it goes).
		r.log.Warn("record: the server lost the topic's history (new epoch); ticks after the cursor, if any, are gone",
			"topic", m.Topic, "epoch", cur.Epoch, "after_seq", cur.Seq, "new_epoch", m.Epoch, "reason", reason)
		return r.fill(ctx, c, m.Topic, m.Epoch, 0, m.Seq, nil)
	default:
		if wasReset {
			r.log.Warn("record: the server is behind the recording; going on from its snapshot", "topic", m.Topic, "reason", reason, "recorded_seq", cur.Seq, "snapshot_seq", m.Seq)
		}
	}
	r.cursors[m.Topic] = protocol.Cursor{Epoch: m.Epoch, Seq: m.Seq}
	return nil
}

// update writes the ticks of an update: the update itself when it is one
// tick right after the last one written, otherwise every tick it covers,
// from history (a merged update of a stepped-down recorder has agg.n > 1;
// a seq gap means something was not delivered).
func (r *recorder) update(ctx context.Context, c *client.Conn, m protocol.WireMessage) error {
	n := uint64(1)
	if m.Agg != nil && m.Agg.N > 1 {
		n = uint64(m.Agg.N)
	}
	after := m.Seq - min(n, m.Seq)
	if cur, ok := r.cursors[m.Topic]; ok && cur.Epoch == m.Epoch {
		after = cur.Seq
	} else if ok {
		r.log.Warn("record: epoch changed without a reset", "topic", m.Topic, "from", cur.Epoch, "to", m.Epoch)
	}
	switch {
	case m.Seq <= after:
		return nil // already written
	case m.Seq == after+1 && n == 1:
		if err := r.write(m.Topic, m.TS, m.Data); err != nil {
			return err
		}
		r.cursors[m.Topic] = protocol.Cursor{Epoch: m.Epoch, Seq: m.Seq}
		return nil
	}
	if n > 1 {
		r.log.Debug("record: merged update; filling in from history", "topic", m.Topic, "seq", m.Seq, "n", n)
	} else {
		r.log.Warn("record: seq gap; filling in from history", "topic", m.Topic, "after_seq", after, "seq", m.Seq)
	}
	return r.fill(ctx, c, m.Topic, m.Epoch, after, m.Seq, &m)
}

// fill writes the ticks after+1..upTo of topic from the server's history.
// Those history no longer has are counted and logged as missing, except
// that last (the update that carried upTo, when there is one) stands in
// for tick upTo if it is that one tick (agg.n 1): a merged update's data
// is no tick, so it is never written. A failed history request ends the
// session, so that the reconnect resumes from the last tick written.
func (r *recorder) fill(ctx context.Context, c *client.Conn, topic, epoch string, after, upTo uint64, last *protocol.WireMessage) error {
	next := after + 1 // the seq the recording needs next
	_, err := c.Backfill(ctx, topic, epoch, after, upTo, func(ht client.HistoryTick) error {
		if ht.Seq > next {
			r.lost(topic, epoch, next-1, ht.Seq-next, "older than the server's history")
		}
		if err := r.write(topic, ht.TS, ht.Data); err != nil {
			return err
		}
		r.backfilled++
		r.cursors[topic] = protocol.Cursor{Epoch: epoch, Seq: ht.Seq}
		next = ht.Seq + 1
		return nil
	})
	if we := (*WriteError)(nil); errors.As(err, &we) {
		return err
	}
	if err != nil && !errors.Is(err, client.ErrEpochChanged) {
		return err
	}
	if next > upTo {
		return nil
	}
	// History does not reach upTo: it moved past it, or into another
	// epoch.
	reason := "older than the server's history"
	if err != nil {
		reason = err.Error()
	}
	if last != nil && (last.Agg == nil || last.Agg.N <= 1) {
		// A one-tick update is that tick, exactly: write it.
		if upTo > next {
			r.lost(topic, epoch, next-1, upTo-next, reason)
		}
		if err := r.write(topic, last.TS, last.Data); err != nil {
			return err
		}
	} else {
		// A merged update's data is not any one tick: leave it out.
		r.lost(topic, epoch, next-1, upTo-next+1, reason)
	}
	r.cursors[topic] = protocol.Cursor{Epoch: epoch, Seq: upTo}
	return nil
}

func (r *recorder) lost(topic, epoch string, after, n uint64, reason string) {
	r.missing += n
	r.log.Warn(LogMissing, "topic", topic, "epoch", epoch, "after_seq", after, "missing", n, "missing_total", r.missing, "reason", reason)
}

// write writes one tick line: topic, ts and the fields of data in the
// tick format's order.
func (r *recorder) write(topic string, ts int64, data map[string]tick.Num) error {
	t := feeds.Tick{Topic: topic, TS: ts, Fields: make([]tick.Field, 0, len(data))}
	for _, name := range tick.MarketFields {
		if v, ok := data[name]; ok {
			t.Fields = append(t.Fields, tick.Field{Name: name, Value: v})
		}
	}
	custom := make([]string, 0, len(data))
	for name := range data {
		if !slices.Contains(tick.MarketFields, name) {
			custom = append(custom, name)
		}
	}
	sort.Strings(custom)
	for _, name := range custom {
		t.Fields = append(t.Fields, tick.Field{Name: name, Value: data[name]})
	}
	if err := t.Validate(); err != nil {
		r.log.Warn("record: bad tick from server", "topic", topic, "err", err)
		return nil
	}
	r.line = append(t.AppendJSON(r.line[:0]), '\n')
	if _, err := r.out.Write(r.line); err != nil {
		return &WriteError{err}
	}
	r.written++
	return nil
}
