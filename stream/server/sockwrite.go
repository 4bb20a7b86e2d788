package server

import (
	"crypto/tls"
	"encoding/binary"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/tickstream/tickstream/stream"
)

// sockWriter is a connection's socket as its writers share it: the
// connection's writer goroutine, which may block up to the write deadline,
// and the flushers, which try to write without blocking at the end of
// their pass (stream.DirectTransport) and leave what the socket did not
// take to the writer goroutine. mu makes each frame or event whole on
// the wire: every write to the socket holds it.
type sockWriter struct {
	mu      sync.Mutex
	conn    net.Conn        // blocking writes go here
	raw     syscall.RawConn // the TCP socket, for tries; nil: no tries (TLS)
	timeout time.Duration
	// deadline is the write deadline in effect on the socket (see
	// writeDeadline); zero after someone else set it.
	deadline time.Time
	// carry is the rest of a tried write: the next blocking write writes
	// it first. A try never starts while there is one.
	carry  []byte
	closed bool  // the stream's last bytes went out: no more writes
	failed error // a blocking write failed: the stream is cut mid-frame
}

// newSockWriter returns the writer of conn. Tries are possible when conn
// is (a fasthttp hijack wrapper around) a plain TCP socket; through TLS
// every write is a blocking one.
func newSockWriter(conn net.Conn, timeout time.Duration) *sockWriter {
	w := &sockWriter{conn: conn, timeout: timeout}
	if tc := tcpOf(conn); tc != nil {
		w.raw, _ = tc.SyscallConn()
	}
	return w
}

// tcpOf is the TCP socket under conn's wrappers (fasthttp's hijacked
// connection, the silent-connection tracker), nil under TLS.
func tcpOf(conn net.Conn) *net.TCPConn {
	for range 8 { // bounded: a wrapper could return itself
		switch c := conn.(type) {
		case *net.TCPConn:
			return c
		case *tls.Conn:
			return nil
		case interface{ UnsafeConn() net.Conn }:
			conn = c.UnsafeConn()
		case interface{ NetConn() net.Conn }:
			conn = c.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// canTry reports whether tries are possible at all.
func (w *sockWriter) canTry() bool { return w.raw != nil }

// writeLocked writes the carry, then b, blocking up to the write
// deadline. A failed write leaves a frame cut short on the wire, so every
// later write fails with the same error.
func (w *sockWriter) writeLocked(b []byte) error {
	if w.failed != nil {
		return w.failed
	}
	if w.closed {
		return net.ErrClosed
	}
	if len(w.carry) == 0 && len(b) == 0 {
		return nil
	}
	prev := w.deadline
	if d := writeDeadline(&w.deadline, w.timeout); !d.Equal(prev) {
		_ = w.conn.SetWriteDeadline(d)
	}
	if len(w.carry) > 0 {
		if _, err := w.conn.Write(w.carry); err != nil {
			w.failed = err
			return err
		}
		w.carry = nil
	}
	if len(b) > 0 {
		if _, err := w.conn.Write(b); err != nil {
			w.failed = err
			return err
		}
	}
	return nil
}

// tryable reports, mu held, whether a try may start now.
func (w *sockWriter) tryable() bool {
	return w.raw != nil && !w.closed && w.failed == nil && len(w.carry) == 0
}

// tryLocked writes b without blocking and keeps what the socket did not
// take as the carry. It reports whether there is a carry. (An expired
// write deadline, kept from the last blocking write, makes the whole of b
// the carry: the blocking write re-arms it.)
func (w *sockWriter) tryLocked(b []byte) (incomplete bool) {
	n := 0
	_ = w.raw.Write(func(fd uintptr) bool {
		for range 64 { // bounded: a socket takes a frame in one call or stops taking
			if n >= len(b) {
				break
			}
			m, err := syscall.Write(int(fd), b[n:])
			if err == syscall.EINTR {
				continue
			}
			if err != nil || m <= 0 {
				break
			}
			n += m
		}
		return true // never wait: the writer goroutine does
	})
	if n < len(b) {
		w.carry = append([]byte(nil), b[n:]...)
		return true
	}
	return false
}

// frameBuilder appends a batch in a transport's wire form (a WebSocket
// frame, SSE events).
type frameBuilder interface {
	appendFrame(dst []byte, msgs []stream.Message) []byte
}

// writeBatch builds msgs with f in a lent buffer and writes them after the
// carry, blocking up to the deadline; no messages writes the carry only.
func (w *sockWriter) writeBatch(f frameBuilder, msgs []stream.Message) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(msgs) == 0 {
		return w.writeLocked(nil)
	}
	p := getFrameBuf()
	b := f.appendFrame((*p)[:0], msgs)
	err := w.writeLocked(b)
	putFrameBuf(p, b)
	return err
}

// tryBatch is stream.DirectTransport's TryWrite for a transport whose
// batches f builds: it builds and tries them only when the socket is free
// and has no carry.
func (w *sockWriter) tryBatch(f frameBuilder, msgs []stream.Message) (started, incomplete bool) {
	if !w.mu.TryLock() {
		return false, false
	}
	defer w.mu.Unlock()
	if !w.tryable() {
		return false, false
	}
	p := getFrameBuf()
	b := f.appendFrame((*p)[:0], msgs)
	incomplete = w.tryLocked(b)
	putFrameBuf(p, b)
	return true, incomplete
}

// busTransport is t as the bus sees it: a DirectTransport on a plain TCP
// socket, only a Transport otherwise (through TLS every write blocks, so
// flushers must not try).
func busTransport(t stream.DirectTransport, w *sockWriter) stream.Transport {
	if w.canTry() {
		return t
	}
	return struct{ stream.Transport }{t}
}

// frameBufs lends the buffers frames and events are built in, only while
// they are written (an idle connection holds none).
var frameBufs = sync.Pool{New: func() any { b := make([]byte, 0, frameBufBytes); return &b }}

// frameBufBytes is the size of a lent buffer; a bigger batch builds in a
// buffer of its own, which is dropped after the write.
const frameBufBytes = 64 << 10

func getFrameBuf() *[]byte { return frameBufs.Get().(*[]byte) }

func putFrameBuf(p *[]byte, b []byte) {
	if cap(b) <= frameBufBytes {
		*p = b[:0]
		frameBufs.Put(p)
	}
}

// appendWSFrame appends msgs as one unmasked text frame (a server's),
// messages separated by '\n'.
func appendWSFrame(dst []byte, msgs []stream.Message) []byte {
	n := len(msgs) - 1
	for i := range msgs {
		n += len(msgs[i].JSON)
	}
	dst = slices.Grow(dst, n+10) // one allocation at most, however long
	dst = append(dst, 0x81)      // FIN, text
	switch {
	case n < 126:
		dst = append(dst, byte(n))
	case n <= 0xFFFF:
		dst = append(dst, 126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	for i := range msgs {
		if i > 0 {
			dst = append(dst, '\n')
		}
		dst = append(dst, msgs[i].JSON...)
	}
	return dst
}
