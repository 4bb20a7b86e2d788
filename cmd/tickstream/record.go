package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/tickstream/tickstream/feeds/record"
)

// runRecord runs `tickstream record`: subscribe to a running server and write
// every tick in the replay format.
func runRecord(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tickstream record", flag.ContinueOnError)
	topics := fs.String("topics", "", "comma-separated topics or patterns to record (required), e.g. BTC-USD,ETH-USD or crypto.*")
	out := fs.String("out", "", "NDJSON file to write (required; - for standard output)")
	url := fs.String("url", "ws://localhost:8080/ws", "the server's WebSocket endpoint")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *topics == "" || *out == "" {
		fs.Usage()
		return errors.New("record: --topics and --out are required")
	}
	w := os.Stdout
	if *out != "-" {
		f, err := os.Create(*out)
		if err != nil {
			return fmt.Errorf("record: --out: %w", err)
		}
		defer f.Close()
		w = f
	}
	var list []string
	for _, t := range strings.Split(*topics, ",") {
		if t = strings.TrimSpace(t); t != "" {
			list = append(list, t)
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	return record.Run(ctx, record.Options{URL: *url, Topics: list, Out: w, Logger: log})
}
