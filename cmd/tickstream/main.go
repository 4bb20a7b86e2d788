package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	_ "github.com/tickstream/tickstream/feeds/all"
	"github.com/tickstream/tickstream/stream/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
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
