// Command tickbench is a load generator for tickstream (and the reference
// broadcaster in bench/reference): N WebSocket or SSE clients, ticks
// published through POST /api/publish, and a report of delivery rate,
// end-to-end latency, loss/duplication/reordering, and the server's RSS
// and CPU. It only ever targets loopback. See bench/README.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/tickstream/tickstream/cmd/tickbench/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := bench.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
