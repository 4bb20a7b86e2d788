// Package server is tickstream's HTTP front: a Fiber app that serves the
// dashboard, WebSocket (/ws) and SSE (/sse) streams, long polls (/poll),
// the HTTP API and
// metrics over a stream.Bus, plus Run, which wires settings, feeds, bus and
// server into the tickstream command.
//
// Transports are thin adapters over stream.Subscriber: each connection has
// one reader (the handler's goroutine; it parses client messages and drains
// control frames) and one writer (Subscriber.Deliver, which writes several
// messages per frame). On a plain TCP socket the flushers also write to it
// themselves, without blocking, while the writer sleeps
// (stream.DirectTransport); a sockWriter's lock keeps every frame whole. A WebSocket that publishes also has a publisher
// goroutine (from its first publish op) that runs its publishes in order
// and queues their acks. All end before the handler returns, because the
// WebSocket connection object is pooled and reused after that. Publishes,
// HTTP and WebSocket alike, go through one implementation (publishTicks)
// with the idempotency window (idemStore), and one authorization hook
// (authorizePublish).
//
// Concurrency contract: a Server is safe for concurrent use. Shutdown stops
// accepting streams, closes every WebSocket with 1001 and a jittered
// retry hint, ends every SSE stream with a retry: hint, waits a grace
// period for their handlers, cuts off the sockets of those still stuck,
// then shuts the HTTP server down, closing the listener even if its
// context ends first. The Bus is not closed: it belongs to the caller.
package server
