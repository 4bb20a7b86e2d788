package record

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/coder/websocket"

	"github.com/tickstream/tickstream/feeds"
)

// Options configure Run. Every zero value means the documented default.
type Options struct {
	// URL is the server's WebSocket endpoint. Zero value means
	// ws://localhost:8080/ws.
	URL string
	// Topics are the topics (or patterns ending in *) to record. Required.
	Topics []string
	// Out receives one tick per line. Required.
	Out io.Writer
	// Logger logs connections, resets and errors. Zero value means
	// slog.Default().
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the delay before a reconnect (full
	// jitter over a capped exponential). Zero values mean 250 ms and 10 s.
	MinBackoff, MaxBackoff time.Duration
}

// Errors returned by Run.
var (
	ErrNoTopics = errors.New("record: no topics")
	ErrNoOut    = errors.New("record: no output")
)

// WriteError is a failure to write the output; Run stops on it, since
// retrying cannot help.
type WriteError struct{ Err error }

func (e *WriteError) Error() string { return "record: write: " + e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

// cursor is a topic's resume position, as the server sends it.
type cursor struct {
	Epoch string `json:"epoch"`
	Seq   uint64 `json:"seq"`
}

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
	r := &recorder{opts: opts, log: opts.Logger, out: bufio.NewWriterSize(opts.Out, 64<<10), cursors: make(map[string]cursor)}
	defer r.out.Flush()
	failures := 0
	for {
		got, err := r.session(ctx)
		if ctx.Err() != nil {
			if err := r.out.Flush(); err != nil {
				return &WriteError{err}
			}
			return nil
		}
		if we := (*WriteError)(nil); errors.As(err, &we) {
			return err
		}
		if got > 0 {
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
			return nil
		case <-t.C:
		}
	}
}

type recorder struct {
	opts    Options
	log     *slog.Logger
	out     *bufio.Writer
	cursors map[string]cursor
	line    []byte
	tickBuf []byte
}

// message is any server message Run looks at.
type message struct {
	Type        string          `json:"type"`
	Topic       string          `json:"topic"`
	Epoch       string          `json:"epoch"`
	Seq         uint64          `json:"seq"`
	TS          int64           `json:"ts"`
	Data        json.RawMessage `json:"data"`
	Reason      string          `json:"reason"`
	Code        string          `json:"code"`
	Message     string          `json:"message"`
	HeartbeatMS int64           `json:"heartbeat_ms"`
}

// session is one connection: it subscribes (resuming every known topic)
// and writes updates until the connection fails. It returns the number of
// ticks written.
func (r *recorder) session(ctx context.Context) (written int, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c, _, err := websocket.Dial(ctx, r.opts.URL, nil)
	if err != nil {
		return 0, err
	}
	defer c.CloseNow()
	c.SetReadLimit(16 << 20)

	sub := map[string]any{"op": "subscribe", "id": 1, "topics": r.opts.Topics, "throttle_ms": 0}
	if len(r.cursors) > 0 {
		sub["resume"] = r.cursors
	}
	b, _ := json.Marshal(sub)
	if err := c.Write(ctx, websocket.MessageText, b); err != nil {
		return 0, fmt.Errorf("subscribe: %w", err)
	}
	r.log.Info("record: subscribed", "url", r.opts.URL, "topics", r.opts.Topics, "resume", len(r.cursors))

	pinging := make(chan struct{})
	defer func() { cancel(); <-pinging }()
	heartbeat := make(chan time.Duration, 1)
	go func() {
		// Pings find a dead server that would otherwise leave Read
		// waiting forever on a quiet topic.
		defer close(pinging)
		var every time.Duration
		select {
		case every = <-heartbeat:
		case <-ctx.Done():
			return
		}
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				pctx, pcancel := context.WithTimeout(ctx, 2*every)
				err := c.Ping(pctx)
				pcancel()
				if err != nil {
					c.CloseNow()
					return
				}
			}
		}
	}()

	for {
		_, frame, err := c.Read(ctx)
		if err != nil {
			return written, err
		}
		for len(frame) > 0 {
			var msg []byte
			msg, frame, _ = bytes.Cut(frame, []byte{'\n'})
			if len(bytes.TrimSpace(msg)) == 0 {
				continue
			}
			n, err := r.handle(msg, heartbeat)
			written += n
			if err != nil {
				return written, err
			}
		}
		if err := r.out.Flush(); err != nil {
			return written, &WriteError{err}
		}
	}
}

// handle processes one server message; it returns 1 if it wrote a tick.
func (r *recorder) handle(raw []byte, heartbeat chan<- time.Duration) (int, error) {
	var m message
	if err := json.Unmarshal(raw, &m); err != nil {
		r.log.Warn("record: bad message from server", "err", err)
		return 0, nil
	}
	switch m.Type {
	case "welcome":
		if m.HeartbeatMS > 0 {
			select {
			case heartbeat <- time.Duration(m.HeartbeatMS) * time.Millisecond:
			default:
			}
		}
	case "snapshot":
		// Not a tick: the latest value when recording starts. Updates
		// follow from its seq.
		r.cursors[m.Topic] = cursor{m.Epoch, m.Seq}
	case "reset":
		r.log.Warn("record: server lost history; ticks may be missing", "topic", m.Topic, "reason", m.Reason)
	case "error":
		r.log.Warn("record: server refused", "code", m.Code, "message", m.Message)
	case "update":
		if c, ok := r.cursors[m.Topic]; ok && c.Epoch == m.Epoch && m.Seq != c.Seq+1 {
			if m.Seq <= c.Seq {
				return 0, nil // already written
			}
			r.log.Warn("record: gap", "topic", m.Topic, "after_seq", c.Seq, "seq", m.Seq)
		}
		t, err := r.tick(m)
		if err != nil {
			r.log.Warn("record: bad update", "topic", m.Topic, "err", err)
			return 0, nil
		}
		r.line = append(t.AppendJSON(r.line[:0]), '\n')
		if _, err := r.out.Write(r.line); err != nil {
			return 0, &WriteError{err}
		}
		r.cursors[m.Topic] = cursor{m.Epoch, m.Seq}
		return 1, nil
	}
	return 0, nil
}

// tick turns an update into a tick: its data fields (market and custom)
// stand at the top level, which feeds.ParseTick accepts and orders.
func (r *recorder) tick(m message) (feeds.Tick, error) {
	data := bytes.TrimSpace(m.Data)
	if len(data) < 2 || data[0] != '{' {
		return feeds.Tick{}, errors.New("update without data")
	}
	b := append(r.tickBuf[:0], `{"topic":`...)
	b = strconv.AppendQuote(b, m.Topic)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, m.TS, 10)
	if rest := bytes.TrimSpace(data[1:]); len(rest) > 0 && rest[0] != '}' {
		b = append(b, ',')
		b = append(b, rest...)
	} else {
		b = append(b, '}')
	}
	r.tickBuf = b
	return feeds.ParseTick(b)
}
