package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// shared is what every client of one run adds to.
type shared struct {
	covered   atomic.Uint64 // distinct ticks covered by updates, all clients
	delivered atomic.Uint64 // update messages, all clients
	hists     []*Histogram  // latency shards
}

// client is one simulated browser: one WebSocket or SSE stream subscribed
// to a few topics. Its counters and trackers are owned by its goroutine
// and read only after it has ended.
type client struct {
	id       int
	topics   []string
	trk      []Tracker
	snapped  []bool
	hist     *Histogram
	sh       *shared
	throttle int

	ready     chan struct{}
	readyOnce sync.Once
	readyOK   bool
	acked     bool
	pending   int // snapshots still expected before ready

	connected bool
	err       error // why it failed or ended early (nil on a clean stop)
	firstErr  string

	frames      uint64
	updates     uint64
	snapshots   uint64
	lagging     uint64
	errMsgs     uint64
	badLines    uint64
	ctrMismatch uint64
}

func newClient(id int, topics []string, throttle int, sh *shared) *client {
	return &client{
		id: id, topics: topics, trk: make([]Tracker, len(topics)), snapped: make([]bool, len(topics)),
		hist: sh.hists[id%len(sh.hists)], sh: sh, throttle: throttle,
		ready: make(chan struct{}), pending: len(topics),
	}
}

// markReady ends the subscribe phase once: readyOK says whether the client
// is connected and has its ack and every snapshot. readyOK is written only
// here, before ready is closed, so it may be read after <-ready.
func (c *client) markReady() {
	c.readyOnce.Do(func() {
		c.readyOK = c.err == nil && c.connected && (c.acked || len(c.topics) == 0) && c.pending <= 0
		close(c.ready)
	})
}

func (c *client) topicIndex(t []byte) int {
	for i, s := range c.topics {
		if s == string(t) {
			return i
		}
	}
	return -1
}

// handle accounts one message received at nowUS.
func (c *client) handle(line []byte, nowUS int64) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return
	}
	m, ok := parseMsg(line)
	if !ok {
		c.badLines++
		return
	}
	switch string(m.typ) {
	case "welcome":
		if len(c.topics) == 0 {
			c.markReady()
		}
	case "ack":
		c.acked = true
		if c.pending <= 0 {
			c.markReady()
		}
	case "snapshot":
		c.snapshots++
		if i := c.topicIndex(m.topic); i >= 0 {
			if !c.snapped[i] {
				c.snapped[i] = true
				c.pending--
			}
			c.trk[i].Snapshot(m.seq)
		}
		if c.acked && c.pending <= 0 {
			c.markReady()
		}
	case "update":
		c.updates++
		c.sh.delivered.Add(1)
		i := c.topicIndex(m.topic)
		if i < 0 {
			c.badLines++
			return
		}
		t := &c.trk[i]
		before := t.Covered
		t.Update(m.seq, m.n)
		if d := t.Covered - before; d > 0 {
			c.sh.covered.Add(d)
		}
		if m.hasSent {
			c.hist.Record(nowUS - m.sentUS)
		}
		if m.hasCtr && c.snapped[i] && m.ctr != int64(m.seq-t.Base()) {
			c.ctrMismatch++
		}
	case "status":
		if m.lagging {
			c.lagging++
		}
	case "error":
		c.errMsgs++
		if c.firstErr == "" {
			c.firstErr = string(line)
		}
		if !c.acked {
			c.err = fmt.Errorf("subscribe refused: %s", line)
			c.markReady()
		}
	}
}

func (c *client) subscribeMsg() []byte {
	b, _ := json.Marshal(map[string]any{"op": "subscribe", "id": 1, "topics": c.topics, "throttle_ms": c.throttle})
	return b
}

// retry calls dial until it succeeds, ctx ends or attempts run out, with
// capped exponential backoff and jitter (the server's accept bucket may
// answer 503 during a connection storm).
func retry[T any](ctx context.Context, attempts int, dial func(context.Context) (T, error)) (T, error) {
	var zero T
	var err error
	for a := 0; a < attempts; a++ {
		var v T
		if v, err = dial(ctx); err == nil {
			return v, nil
		}
		d := min(50*time.Millisecond<<a, time.Second)
		d = d/2 + rand.N(d/2+1)
		select {
		case <-ctx.Done():
			return zero, fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(d):
		}
	}
	return zero, err
}

// runWS connects (acquiring sem while dialing), subscribes and reads until
// ctx ends.
func (c *client) runWS(ctx, dialCtx context.Context, sem chan struct{}, base *url.URL, hc *http.Client) {
	defer c.markReady()
	u := *base
	u.Scheme = map[string]string{"http": "ws", "https": "wss"}[base.Scheme]
	u.Path = "/ws"
	select {
	case sem <- struct{}{}:
	case <-dialCtx.Done():
		c.err = fmt.Errorf("connect: %w", dialCtx.Err())
		return
	}
	conn, err := retry(dialCtx, 30, func(ctx context.Context) (*websocket.Conn, error) {
		conn, _, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{HTTPClient: hc})
		return conn, err
	})
	<-sem
	if err != nil {
		c.err = fmt.Errorf("connect: %w", err)
		return
	}
	c.connected = true
	defer conn.CloseNow()
	conn.SetReadLimit(64 << 20)
	if len(c.topics) > 0 {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := conn.Write(wctx, websocket.MessageText, c.subscribeMsg())
		cancel()
		if err != nil {
			c.err = fmt.Errorf("subscribe: %w", err)
			return
		}
	}
	var buf bytes.Buffer
	for ctx.Err() == nil {
		_, r, err := conn.Reader(ctx)
		if err == nil {
			buf.Reset()
			_, err = buf.ReadFrom(r)
		}
		if err != nil {
			if ctx.Err() == nil {
				c.err = fmt.Errorf("read: %w", err)
			}
			return
		}
		c.frames++
		now := time.Now().UnixMicro()
		b := buf.Bytes()
		for len(b) > 0 { // bounded by the frame's length
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				c.handle(b, now)
				break
			}
			c.handle(b[:i], now)
			b = b[i+1:]
		}
	}
}

// runSSE opens /sse for the client's topics and reads events until ctx ends.
func (c *client) runSSE(ctx, dialCtx context.Context, sem chan struct{}, base *url.URL, hc *http.Client) {
	defer c.markReady()
	u := *base
	u.Path = "/sse"
	q := url.Values{}
	if len(c.topics) > 0 {
		q.Set("topics", strings.Join(c.topics, ","))
	}
	q.Set("throttle_ms", strconv.Itoa(c.throttle))
	u.RawQuery = q.Encode()
	select {
	case sem <- struct{}{}:
	case <-dialCtx.Done():
		c.err = fmt.Errorf("connect: %w", dialCtx.Err())
		return
	}
	// The stream lives as long as ctx; the transport bounds the wait for
	// response headers (ResponseHeaderTimeout).
	resp, err := retry(dialCtx, 30, func(context.Context) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return nil, err
		}
		r, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		if r.StatusCode != http.StatusOK {
			io.Copy(io.Discard, io.LimitReader(r.Body, 4096))
			r.Body.Close()
			return nil, fmt.Errorf("status %s", r.Status)
		}
		return r, nil
	})
	<-sem
	if err != nil {
		c.err = fmt.Errorf("connect: %w", err)
		return
	}
	c.connected = true
	defer resp.Body.Close()
	stop := context.AfterFunc(ctx, func() { resp.Body.Close() })
	defer stop()
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	var long []byte
	dataPrefix := []byte("data:")
	for ctx.Err() == nil {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) && len(long) < 64<<20 {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if err != nil {
			if ctx.Err() == nil {
				c.err = fmt.Errorf("read: %w", err)
			}
			return
		}
		if bytes.HasPrefix(line, dataPrefix) {
			c.frames++
			c.handle(line[len(dataPrefix):], time.Now().UnixMicro())
		}
	}
}
