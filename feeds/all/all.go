// Package all imports every built-in feed adapter so that each registers
// itself with feeds.DefaultRegistry: sim, replay, websocket and nats.
//
// Concurrency: importing it only runs the adapters' init functions, which
// do no I/O and start no goroutines.
package all

import (
	_ "github.com/tickstream/tickstream/feeds/nats"
	_ "github.com/tickstream/tickstream/feeds/replay"
	_ "github.com/tickstream/tickstream/feeds/sim"
	_ "github.com/tickstream/tickstream/feeds/websocket"
)
