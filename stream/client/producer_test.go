package client_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream/client"
)

// cuttingProxy forwards TCP connections to target and cuts each one after
// it has carried limit bytes to the client: the cut falls in the middle
// of a burst of publishes, after the server has published a batch and
// before its ack has reached the client.
type cuttingProxy struct {
	ln     net.Listener
	target string
	limit  int64
	conns  atomic.Int64
	wg     sync.WaitGroup
}

func newCuttingProxy(t *testing.T, target string, limit int64) *cuttingProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cuttingProxy{ln: ln, target: target, limit: limit}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.conns.Add(1)
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.serve(c) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *cuttingProxy) serve(c net.Conn) {
	defer c.Close()
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer s.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.CopyN(c, s, p.limit); done <- struct{}{} }()
	go func() { _, _ = io.Copy(s, c); done <- struct{}{} }()
	<-done
	c.Close()
	s.Close()
	<-done
}

// A producer whose connection is cut again and again in the middle of a
// burst resends what was not acknowledged, with the same ids: every
// batch is acknowledged and every tick is published exactly once.
func TestProducerResendsExactlyOnce(t *testing.T) {
	e := startServer(t, nil)
	target := strings.TrimSuffix(strings.TrimPrefix(e.url, "ws://"), "/ws")
	proxy := newCuttingProxy(t, target, 2500)
	p := client.NewProducer("ws://"+proxy.ln.Addr().String()+"/ws", &client.ProducerOptions{RetryBase: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond})
	defer p.Close()
	const workers, batches = 4, 50
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var dups atomic.Int64
	errs := make(chan error, workers*batches)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range batches {
				a := tick.Tick{Topic: "GP", TS: int64(1 + w*batches + i)}
				a.Set("price", float64(i))
				b := a.Clone()
				b.Set("size", 1)
				ack, err := p.Publish(ctx, a, b)
				if err == nil && (ack.Accepted != 2 || len(ack.Refused) != 0) {
					err = fmt.Errorf("ack %+v: want 2 accepted", ack)
				}
				if err != nil {
					errs <- err
					return
				}
				dups.Add(int64(ack.Duplicates))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if proxy.conns.Load() < 3 {
		t.Fatalf("%d connections: the proxy did not cut the producer", proxy.conns.Load())
	}
	h, err := e.bus.History("GP", 0, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	if want := 2 * workers * batches; len(h.Ticks) != want {
		t.Fatalf("%d ticks published, want %d", len(h.Ticks), want)
	}
	// Some cut fell inside an ack: its batch was sent again and answered
	// from the idempotency window.
	if dups.Load() == 0 {
		t.Fatalf("no duplicate over %d connections: no resend was tested", proxy.conns.Load())
	}
	t.Logf("%d connections, %d duplicate ticks answered from the window", proxy.conns.Load(), dups.Load())
}
