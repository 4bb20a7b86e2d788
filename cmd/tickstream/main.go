package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	_ "github.com/tickstream/tickstream/feeds/all"
	"github.com/tickstream/tickstream/stream/app"
)

func main() {
	ctx, stop := notifyContext()
	err := run(ctx, os.Args[1:])
	stop()
	switch {
	case err == nil, errors.Is(err, app.ErrHelp):
	default:
		fmt.Fprintln(os.Stderr, "tickstream:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "record" {
		return runRecord(ctx, args[1:])
	}
	return app.Run(ctx, args)
}

// notifyContext returns a context that ends at the first SIGINT or SIGTERM:
// the command then shuts down gracefully, within shutdown_timeout_ms. A
// second signal exits at once, without waiting for that shutdown; its exit
// code is 128 plus the signal number, as if the signal had killed it. stop
// stops listening for signals.
func notifyContext() (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		if _, ok := <-sigs; !ok {
			return
		}
		cancel()
		sig, ok := <-sigs
		if !ok {
			return
		}
		fmt.Fprintf(os.Stderr, "tickstream: second %v: exiting without waiting for shutdown\n", sig)
		code := 1
		if n, ok := sig.(syscall.Signal); ok {
			code = 128 + int(n)
		}
		os.Exit(code)
	}()
	var once sync.Once
	return ctx, func() {
		once.Do(func() {
			signal.Stop(sigs)
			close(sigs)
			cancel()
		})
	}
}
