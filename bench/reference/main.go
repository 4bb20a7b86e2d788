// Command reference is a bare broadcaster that speaks enough of
// tickstream's protocol for tickbench: welcome, subscribe/ack/snapshot,
// one update per tick with a per-topic seq, POST /api/publish (JSON array
// or NDJSON), over WebSocket (/ws) and SSE (/sse). Throttle 0 only: no
// coalescing, no history, no candles, no auth. It is the baseline that
// tickstream's fan-out is measured against: one writer goroutine per
// connection, each update encoded once and the same bytes queued to every
// subscriber, everything pending written as one frame.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8090", "listen address")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	h := newHub()
	srv := &http.Server{Addr: *addr, Handler: h.routes(), ReadHeaderTimeout: 10 * time.Second}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("reference broadcaster listening on %s (epoch %s)", ln.Addr(), h.epoch)
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		h.closeAll()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

// item is one queued message: its type (for SSE's event line) and its
// encoded JSON, shared by every subscriber.
type item struct {
	typ string
	b   []byte
}

// maxPending bounds a connection's queue; past it the client is dropped.
const maxPending = 64 << 20

type conn struct {
	mu      sync.Mutex
	pending []item
	bytes   int
	closed  bool
	wake    chan struct{}
	done    chan struct{}
	topics  map[*topic]struct{} // guarded by mu
}

func newConn() *conn {
	return &conn{wake: make(chan struct{}, 1), done: make(chan struct{}), topics: map[*topic]struct{}{}}
}

func (c *conn) enqueue(typ string, b []byte) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.pending = append(c.pending, item{typ, b})
	c.bytes += len(b)
	over := c.bytes > maxPending
	c.mu.Unlock()
	if over {
		c.close()
		return
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// take swaps out everything pending (spare is reused as the next queue).
func (c *conn) take(spare []item) ([]item, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.pending
	c.pending, c.bytes = spare[:0], 0
	return out, !c.closed
}

func (c *conn) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	topics := c.topics
	c.topics = nil
	c.mu.Unlock()
	for t := range topics {
		t.mu.Lock()
		delete(t.subs, c)
		t.mu.Unlock()
	}
	close(c.done)
}

type topic struct {
	name string
	mu   sync.Mutex
	seq  uint64
	ts   int64
	data map[string]json.RawMessage // latest value of every field
	subs map[*conn]struct{}
}

type hub struct {
	epoch  string
	mu     sync.RWMutex
	topics map[string]*topic
	conns  sync.Map // *conn → struct{}
}

func newHub() *hub {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return &hub{epoch: hex.EncodeToString(b[:]), topics: map[string]*topic{}}
}

func (h *hub) topic(name string) *topic {
	h.mu.RLock()
	t := h.topics[name]
	h.mu.RUnlock()
	if t != nil {
		return t
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if t = h.topics[name]; t == nil {
		t = &topic{name: name, data: map[string]json.RawMessage{}, subs: map[*conn]struct{}{}}
		h.topics[name] = t
	}
	return t
}

func (h *hub) closeAll() {
	h.conns.Range(func(k, _ any) bool { k.(*conn).close(); return true })
}

func (h *hub) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("POST /api/publish", h.handlePublish)
	mux.HandleFunc("GET /ws", h.handleWS)
	mux.HandleFunc("GET /sse", h.handleSSE)
	return mux
}

// ---- publishing ----

var marketFields = []string{"price", "size", "bid", "ask", "bid_size", "ask_size", "volume"}

type tick struct {
	topic  string
	ts     int64
	fields []field // market fields first, then custom ones by name
}

type field struct {
	name string
	raw  json.RawMessage // the number exactly as it came in
}

func validTopic(s string) bool {
	if len(s) < 1 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._:/-", c) >= 0) {
			return false
		}
	}
	return true
}

// number accepts a JSON number or a decimal string and returns its text.
func number(raw json.RawMessage) (json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) > 1 && raw[0] == '"' {
		raw = raw[1 : len(raw)-1]
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || f != f || f > 1e308 || f < -1e308 {
		return nil, fmt.Errorf("%s is not a finite number", raw)
	}
	return raw, nil
}

func parseTick(raw []byte) (tick, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return tick{}, err
	}
	var t tick
	if err := json.Unmarshal(m["topic"], &t.topic); err != nil || !validTopic(t.topic) {
		return tick{}, errors.New("bad or missing topic")
	}
	t.ts = time.Now().UnixMilli()
	if v, ok := m["ts"]; ok {
		n, err := number(v)
		if err != nil {
			return tick{}, fmt.Errorf("ts: %w", err)
		}
		f, _ := strconv.ParseFloat(string(n), 64)
		t.ts = int64(f)
	}
	for _, name := range marketFields {
		if v, ok := m[name]; ok {
			n, err := number(v)
			if err != nil {
				return tick{}, fmt.Errorf("%s: %w", name, err)
			}
			t.fields = append(t.fields, field{name, n})
		}
	}
	if v, ok := m["fields"]; ok {
		var custom map[string]json.RawMessage
		if err := json.Unmarshal(v, &custom); err != nil {
			return tick{}, fmt.Errorf("fields: %w", err)
		}
		names := make([]string, 0, len(custom))
		for k := range custom {
			names = append(names, k)
		}
		slices.Sort(names)
		for _, k := range names {
			n, err := number(custom[k])
			if err != nil {
				return tick{}, fmt.Errorf("fields.%s: %w", k, err)
			}
			t.fields = append(t.fields, field{k, n})
		}
	}
	if len(t.fields) == 0 {
		return tick{}, errors.New("no fields")
	}
	return t, nil
}

func (h *hub) publish(t tick) {
	tp := h.topic(t.topic)
	tp.mu.Lock()
	defer tp.mu.Unlock()
	tp.seq++
	tp.ts = t.ts
	var price, size json.RawMessage
	for _, f := range t.fields {
		tp.data[f.name] = f.raw
		switch f.name {
		case "price":
			price = f.raw
		case "size":
			size = f.raw
		}
	}
	b := make([]byte, 0, 256)
	b = h.appendHead(b, "update", tp)
	b = appendData(b, t.fields)
	b = append(b, `,"agg":{"n":1`...)
	if price != nil {
		for _, k := range []string{"o", "h", "l", "c"} {
			b = append(b, `,"`+k+`":`...)
			b = append(b, price...)
		}
	}
	b = append(b, `,"v":`...)
	if size != nil {
		b = append(b, size...)
	} else {
		b = append(b, '0')
	}
	b = append(b, "}}"...)
	for c := range tp.subs {
		c.enqueue("update", b) // the same bytes for every subscriber
	}
}

func (h *hub) appendHead(b []byte, typ string, tp *topic) []byte {
	b = append(b, `{"type":"`+typ+`","topic":`...)
	b = strconv.AppendQuote(b, tp.name)
	b = append(b, `,"epoch":"`+h.epoch+`","seq":`...)
	b = strconv.AppendUint(b, tp.seq, 10)
	b = append(b, `,"ts":`...)
	return strconv.AppendInt(b, tp.ts, 10)
}

func appendData(b []byte, fields []field) []byte {
	b = append(b, `,"data":{`...)
	for i, f := range fields {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendQuote(b, f.name)
		b = append(b, ':')
		b = append(b, f.raw...)
	}
	return append(b, '}')
}

// snapshot encodes the topic's latest values; tp.mu is held.
func (h *hub) snapshot(tp *topic) []byte {
	names := make([]string, 0, len(tp.data))
	for k := range tp.data {
		names = append(names, k)
	}
	slices.Sort(names)
	fields := make([]field, len(names))
	for i, k := range names {
		fields[i] = field{k, tp.data[k]}
	}
	b := h.appendHead(nil, "snapshot", tp)
	b = appendData(b, fields)
	return append(b, '}')
}

type refusal struct {
	Line  int    `json:"line"`
	Error string `json:"error"`
}

func (h *hub) handlePublish(w http.ResponseWriter, r *http.Request) {
	body, err := readAll(r, 8<<20)
	if err != nil {
		http.Error(w, `{"error":"body too large"}`, http.StatusRequestEntityTooLarge)
		return
	}
	body = bytes.TrimSpace(body)
	res := struct {
		Accepted int       `json:"accepted"`
		Refused  []refusal `json:"refused"`
	}{Refused: []refusal{}}
	one := func(line int, raw []byte) {
		t, err := parseTick(raw)
		if err != nil {
			res.Refused = append(res.Refused, refusal{line, err.Error()})
			return
		}
		h.publish(t)
		res.Accepted++
	}
	if len(body) > 0 && body[0] == '[' {
		var items []json.RawMessage
		if err := json.Unmarshal(body, &items); err != nil {
			http.Error(w, `{"error":"bad_json"}`, http.StatusBadRequest)
			return
		}
		for i, raw := range items {
			one(i+1, raw)
		}
	} else {
		for i, line := range bytes.Split(body, []byte("\n")) {
			if line = bytes.TrimSpace(line); len(line) > 0 {
				one(i+1, line)
			}
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if res.Accepted == 0 {
		w.WriteHeader(http.StatusBadRequest)
	}
	_ = json.NewEncoder(w).Encode(res)
}

func readAll(r *http.Request, limit int64) ([]byte, error) {
	var buf bytes.Buffer
	n, err := buf.ReadFrom(http.MaxBytesReader(nil, r.Body, limit))
	if err != nil {
		return nil, err
	}
	return buf.Bytes()[:n], nil
}

// ---- subscribing ----

type clientMsg struct {
	Op         string   `json:"op"`
	ID         *int64   `json:"id"`
	Topics     []string `json:"topics"`
	ThrottleMS *int     `json:"throttle_ms"`
}

func (h *hub) welcome() []byte {
	var s [8]byte
	_, _ = rand.Read(s[:])
	return fmt.Appendf(nil, `{"type":"welcome","session":"%x","heartbeat_ms":15000,"server_time":%d}`, s, time.Now().UnixMilli())
}

func errMsg(id *int64, code, msg string) []byte {
	b := []byte(`{"type":"error"`)
	if id != nil {
		b = fmt.Appendf(b, `,"id":%d`, *id)
	}
	b = append(b, `,"code":"`+code+`","message":`...)
	b = strconv.AppendQuote(b, msg)
	return append(b, '}')
}

// subscribe queues the ack, then under each topic's lock its snapshot and
// the membership, so no update can come between snapshot and stream.
func (h *hub) subscribe(c *conn, m clientMsg) {
	if m.ThrottleMS != nil && *m.ThrottleMS != 0 {
		c.enqueue("error", errMsg(m.ID, "bad_throttle", "the reference broadcaster supports throttle_ms 0 only"))
		return
	}
	for _, t := range m.Topics {
		if !validTopic(t) {
			c.enqueue("error", errMsg(m.ID, "bad_topic", "bad topic "+strconv.Quote(t)))
			return
		}
	}
	ack := []byte(`{"type":"ack"`)
	if m.ID != nil {
		ack = fmt.Appendf(ack, `,"id":%d`, *m.ID)
	}
	names, _ := json.Marshal(m.Topics)
	ack = append(append(append(ack, `,"topics":`...), names...), '}')
	c.enqueue("ack", ack)
	for _, name := range m.Topics {
		tp := h.topic(name)
		c.mu.Lock()
		closed := c.closed
		if !closed {
			c.topics[tp] = struct{}{}
		}
		c.mu.Unlock()
		if closed {
			return
		}
		tp.mu.Lock()
		if tp.seq > 0 {
			c.enqueue("snapshot", h.snapshot(tp))
		}
		tp.subs[c] = struct{}{}
		tp.mu.Unlock()
	}
}

func (h *hub) unsubscribe(c *conn, m clientMsg) {
	for _, name := range m.Topics {
		tp := h.topic(name)
		tp.mu.Lock()
		delete(tp.subs, c)
		tp.mu.Unlock()
		c.mu.Lock()
		delete(c.topics, tp)
		c.mu.Unlock()
	}
	ack := []byte(`{"type":"ack"`)
	if m.ID != nil {
		ack = fmt.Appendf(ack, `,"id":%d`, *m.ID)
	}
	c.enqueue("ack", append(ack, '}'))
}

func (h *hub) handleClientMsg(c *conn, raw []byte) {
	var m clientMsg
	if err := json.Unmarshal(raw, &m); err != nil {
		c.enqueue("error", errMsg(nil, "bad_json", err.Error()))
		return
	}
	switch m.Op {
	case "subscribe":
		h.subscribe(c, m)
	case "unsubscribe":
		h.unsubscribe(c, m)
	case "ping":
		id := int64(0)
		if m.ID != nil {
			id = *m.ID
		}
		c.enqueue("pong", fmt.Appendf(nil, `{"type":"pong","id":%d}`, id))
	default:
		c.enqueue("error", errMsg(m.ID, "unknown_op", "unknown op "+strconv.Quote(m.Op)))
	}
}

// ---- WebSocket ----

var upgrader = websocket.Upgrader{
	ReadBufferSize: 4096, WriteBufferSize: 4096,
	CheckOrigin: func(*http.Request) bool { return true },
}

func (h *hub) handleWS(w http.ResponseWriter, r *http.Request) {
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	c := newConn()
	h.conns.Store(c, struct{}{})
	defer h.conns.Delete(c)
	c.enqueue("welcome", h.welcome())
	go func() { // reader
		defer c.close()
		ws.SetReadLimit(1 << 20)
		for {
			_, raw, err := ws.ReadMessage()
			if err != nil {
				return
			}
			h.handleClientMsg(c, raw)
		}
	}()
	// The writer: this goroutine. Everything pending goes out as one
	// frame, messages separated by \n.
	defer ws.Close()
	defer c.close()
	var batch, spare []item
	var frame []byte
	for {
		select {
		case <-c.wake:
		case <-c.done:
			_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "bye"), time.Now().Add(time.Second))
			return
		}
		var open bool
		batch, open = c.take(spare)
		if !open {
			return
		}
		if len(batch) == 0 {
			spare = batch
			continue
		}
		frame = frame[:0]
		for i, it := range batch {
			if i > 0 {
				frame = append(frame, '\n')
			}
			frame = append(frame, it.b...)
		}
		clear(batch)
		spare = batch
		_ = ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := ws.WriteMessage(websocket.TextMessage, frame); err != nil {
			return
		}
		if cap(frame) > 4<<20 {
			frame = nil // do not keep a burst's buffer for ever
		}
	}
}

// ---- SSE ----

func (h *hub) handleSSE(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var topics []string
	if s := q.Get("topics"); s != "" {
		topics = strings.Split(s, ",")
	}
	throttle := 0
	if s := q.Get("throttle_ms"); s != "" {
		var err error
		if throttle, err = strconv.Atoi(s); err != nil || throttle != 0 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write(errMsg(nil, "bad_throttle", "the reference broadcaster supports throttle_ms 0 only"))
			return
		}
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	c := newConn()
	h.conns.Store(c, struct{}{})
	defer h.conns.Delete(c)
	defer c.close()
	c.enqueue("welcome", h.welcome())
	if len(topics) > 0 {
		h.subscribe(c, clientMsg{Op: "subscribe", Topics: topics, ThrottleMS: &throttle})
	}
	bw := bufio.NewWriterSize(w, 32<<10)
	if _, err := bw.WriteString("retry: 1000\n\n"); err != nil {
		return
	}
	var batch, spare []item
	for {
		var open bool
		batch, open = c.take(spare)
		if !open {
			return
		}
		for _, it := range batch {
			bw.WriteString("event: ")
			bw.WriteString(it.typ)
			bw.WriteString("\ndata: ")
			bw.Write(it.b)
			bw.WriteString("\n\n")
		}
		clear(batch)
		spare = batch
		_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if bw.Flush() != nil || rc.Flush() != nil {
			return
		}
		select {
		case <-c.wake:
		case <-c.done:
			return
		case <-r.Context().Done():
			return
		}
	}
}
